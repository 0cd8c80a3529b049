//! `ferry-executor`: the long-lived worker that runs jobs (see `executor/README.md`).
pub mod cli;
pub mod fetch;
pub mod models;
pub mod testing;
pub mod worker;

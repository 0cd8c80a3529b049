//! `ferry-executor`: the long-lived worker that runs jobs (see `executor/README.md`).
//!
//! - [`worker`]: the work loop over the ports (slots, supervision, outcomes, heartbeat).
//! - [`registry`]: the models of the executor's pool, loaded once (from S3 via [`fetch`]).
//! - [`models`]: the model families on candle, behind [`models::LoadedModel`].
//! - [`handler`]: a user's program as a job: the protocol (a process per job, or workers).
//! - [`handlers`]: the catalog's handlers as runners beside the models.
//! - [`cli`]: the program's flags and `main`, shared with `ferry executor`.
//! - [`tiny`]: the tiny random Llama written in code (the demo model, the tests' fixture).
//! - [`testing`]: helpers for tests.
pub mod cli;
pub mod fetch;
pub mod handler;
pub mod handlers;
pub mod models;
pub mod registry;
pub mod testing;
pub mod tiny;
pub mod worker;

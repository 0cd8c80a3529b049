//! Support for Ferry's cross-crate tests (`tests/tests/*.rs`): the backends the port
//! conformance suite runs against, and the moto emulator that hosts the AWS ones.

pub mod backends;
pub mod ecs;
pub mod event_files;
pub mod faults;
pub mod fixtures;
pub mod infra;
pub mod moto;
pub mod recorder;

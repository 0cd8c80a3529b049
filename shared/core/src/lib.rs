//! `ferry-core`: the part of Ferry that knows nothing of AWS or of any runtime.
//!
//! - [`job`]: the job, its ids and statuses.
//! - [`state`]: the lifecycle state machine (every change is a compare-and-set).
//! - [`ports`]: the traits adapters implement (job store, work queue, API keys, clock).
//! - [`catalog`]: the models the executors serve ([`gguf`]: the header of a GGUF model file).
//! - [`service`]: submit, get, list, cancel and transitions over the ports.
//! - [`publish`], [`stream`], [`ws`]: progress events, stored and pushed to WebSocket
//!   subscribers (the `ws` Lambda's handler).
//! - [`api`]: the HTTP API as one plain async function over the service, called by the
//!   Lambda (`functions/api`) and by `ferry dev` alike.

pub mod auth;
pub mod catalog;
pub mod chat;
pub mod config;
pub mod deliver;
pub mod dispatch;
pub mod error;
pub mod fleet;
pub mod gguf;
pub mod images;
pub mod input;
pub mod job;
pub mod objects;
pub mod openai;
pub mod pool;
pub mod ports;
pub mod progress;
pub mod publish;
pub mod queue_state;
pub mod ratelimit;
pub mod root;
pub mod schema;
pub mod service;
pub mod state;
pub mod stream;
pub mod submit;
pub mod telemetry;
pub mod view;
pub mod watchdog;
pub mod webhook;
pub mod webhook_secrets;
pub mod ws;

pub use job::{Job, JobError, JobId, JobStatus, Millis, Task, TenantId};

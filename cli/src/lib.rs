//! The `ferry` command as a library, so tests start the very same local stack in-process:
//!
//! - [`server`]: serves [`ferry_http::Api`] over HTTP/1.1 (axum), with graceful shutdown.
//! - [`stack`]: builds the local stack (embedded or AWS adapters, keys, models).
//! - [`client`]: a small client of the HTTP API for `ferry submit/get/list/cancel`.
//! - [`gateway`]: the local WebSocket API and Management API (API Gateway stand-in).
//! - [`follow`]: follows a job over the WebSocket API (`ferry watch`, `submit --follow`).
//! - [`launcher`]: `ferry dev`'s executor processes (the dispatcher's launcher).
//! - [`cost`]: `ferry cost`, what scale to zero costs against an always-on executor.
//! - [`demo`]: the demo job `ferry dev --demo` runs against itself.

pub mod client;
pub mod cost;
pub mod demo;
pub mod follow;
pub mod gateway;
pub mod launcher;
pub mod server;
pub mod stack;

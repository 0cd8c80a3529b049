//! `ferry-local`: in-process adapters for Ferry's ports, the backend of `ferry dev` and of
//! fast tests.
//!
//! Each adapter mirrors the semantics of its AWS counterpart in `ferry-aws` (DynamoDB
//! conditional writes, SQS visibility timeouts and redrive) rather than offering some
//! simpler behaviour, so code that works against these works in the cloud. The
//! conformance suite in `tests/` runs the same cases against both.
//!
//! - [`MemoryJobStore`]: jobs with idempotency bindings and compare-and-set updates, and
//!   (as `EventStore`) their progress events.
//! - [`MemoryConnectionStore`]: WebSocket connections and their job subscriptions.
//! - [`MemoryApiKeyStore`]: hashed API keys.
//! - [`MemoryPoolStore`], [`MemoryLauncher`]: the fleet's records, and a launcher for tests.
//! - [`MemoryQueue`]: an at-least-once queue with long polling and an optional dead-letter queue.
//! - [`DirObjects`]: large inputs and outputs as files, with signed URLs to them.
//! - [`gateway`]: the `Notifier` of `ferry dev`'s local WebSocket gateway (its connections).
//! - [`ports`]: all of the above as one `Ports` (the composition root's embedded set).
//! - [`remote`]: all of the above reached from another process (`ferry dev`'s executors).

mod connections;
mod deliveries;
mod fleet;
pub mod gateway;
mod jobs;
mod keys;
mod objects;
mod queue;
pub mod remote;
mod root;

pub use connections::MemoryConnectionStore;
pub use deliveries::MemoryDeliveries;
pub use fleet::{MemoryLauncher, MemoryPoolStore};
pub use jobs::MemoryJobStore;
pub use keys::{MemoryApiKeyStore, MemoryWebhookSecrets};
pub use objects::{DirObjects, URL_PATH as OBJECT_URL_PATH};
pub use queue::MemoryQueue;
pub use root::ports;

/// Locks a std mutex, ignoring poisoning: every critical section in this crate validates
/// before it mutates, so a panic inside one cannot leave half-written state behind.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! Adapters that fail on purpose, wrapped around real ones: for the paths where a write
//! went through and the next one did not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::ports::{Delivery, QueueDepth, QueueError, WorkMessage, WorkQueue};

/// A queue whose sends fail while [`SendsFail::fail`] is on; every other call reaches the
/// queue it wraps.
pub struct SendsFail {
    inner: Arc<dyn WorkQueue>,
    failing: AtomicBool,
}

impl SendsFail {
    pub fn new(inner: Arc<dyn WorkQueue>) -> Arc<SendsFail> {
        Arc::new(SendsFail { inner, failing: AtomicBool::new(false) })
    }

    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
}

#[async_trait]
impl WorkQueue for SendsFail {
    async fn send(&self, message: &WorkMessage) -> Result<(), QueueError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(QueueError::Unavailable("injected: the queue refuses sends".into()));
        }
        self.inner.send(message).await
    }
    async fn receive(&self, max: u32, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive(max, wait, visibility).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.inner.delete(receipt).await
    }
    async fn set_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.inner.set_visibility(receipt, visibility).await
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.inner.depth().await
    }
}

//! Adapters that fail on purpose, wrapped around real ones: for the paths where a write
//! went through and the next one did not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::job::{Job, JobId, JobStatus, Millis};
use ferry_core::ports::{
    Created, Delivery, Expected, IdempotencyRecord, JobPage, JobStore, ListQuery, MessageQueue, QueueDepth, QueueError,
    StoreError, WorkMessage, WorkQueue,
};
use ferry_core::progress::ProgressEvent;

/// A queue whose sends fail while [`QueueFails::fail_sends`] is on, and whose receives fail
/// while [`QueueFails::fail_receives`] is; every other call reaches the queue it wraps.
pub struct QueueFails {
    inner: Arc<dyn WorkQueue>,
    failing: AtomicBool,
    receives_failing: AtomicBool,
}

impl QueueFails {
    pub fn new(inner: Arc<dyn WorkQueue>) -> Arc<QueueFails> {
        Arc::new(QueueFails { inner, failing: AtomicBool::new(false), receives_failing: AtomicBool::new(false) })
    }

    pub fn fail_sends(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    pub fn fail_receives(&self, on: bool) {
        self.receives_failing.store(on, Ordering::SeqCst);
    }
}

#[async_trait]
impl MessageQueue<WorkMessage> for QueueFails {
    async fn send(&self, message: &WorkMessage) -> Result<(), QueueError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(QueueError::Unavailable("injected: the queue refuses sends".into()));
        }
        self.inner.send(message).await
    }
    async fn receive(&self, max: u32, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        if self.receives_failing.load(Ordering::SeqCst) {
            return Err(QueueError::Unavailable("injected: the queue cannot be reached".into()));
        }
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

/// A job store whose writes of a job's end (an update to a terminal status) fail as told:
/// the next `throttle(n)` of them are throttled, and while `refuse_outputs` is on, those
/// carrying an output are refused for good (as DynamoDB refuses an item over 400 KB).
/// Every other call reaches the store it wraps.
pub struct FinishFails {
    inner: Arc<dyn JobStore>,
    throttles_left: AtomicU32,
    refuse_outputs: AtomicBool,
    /// Terminal writes that failed here, of either kind.
    pub failed: AtomicU32,
}

impl FinishFails {
    pub fn new(inner: Arc<dyn JobStore>) -> Arc<FinishFails> {
        Arc::new(FinishFails {
            inner,
            throttles_left: AtomicU32::new(0),
            refuse_outputs: AtomicBool::new(false),
            failed: AtomicU32::new(0),
        })
    }

    pub fn throttle(&self, n: u32) {
        self.throttles_left.store(n, Ordering::SeqCst);
    }

    pub fn refuse_outputs(&self, on: bool) {
        self.refuse_outputs.store(on, Ordering::SeqCst);
    }

    /// The failure to inject for a write of `job`, if any.
    fn inject(&self, job: &Job) -> Result<(), StoreError> {
        if !job.status.is_terminal() {
            return Ok(());
        }
        let throttled =
            self.throttles_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if throttled {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Throttled("injected: the store throttles the write".into()));
        }
        let has_output = job.output.as_ref().is_some_and(|o| !o.is_null());
        if has_output && self.refuse_outputs.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Refused(
                "injected: item size to update has exceeded the maximum allowed size".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl JobStore for FinishFails {
    async fn create(&self, job: &Job, idem: Option<&IdempotencyRecord>) -> Result<Created, StoreError> {
        self.inner.create(job, idem).await
    }
    async fn rebind(&self, job: &Job, idem: &IdempotencyRecord, stale: &JobId) -> Result<Created, StoreError> {
        self.inner.rebind(job, idem, stale).await
    }
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<JobPage, StoreError> {
        self.inner.list(query).await
    }
    async fn update(&self, job: &Job, expected: Expected) -> Result<(), StoreError> {
        self.inject(job)?;
        self.inner.update(job, expected).await
    }
    async fn update_with_events(
        &self,
        job: &Job,
        expected: Expected,
        expected_last_seq: u64,
        events: &[ProgressEvent],
        retain_until: Millis,
    ) -> Result<(), StoreError> {
        self.inject(job)?;
        self.inner.update_with_events(job, expected, expected_last_seq, events, retain_until).await
    }
    async fn active(&self, status: JobStatus, limit: u32, after: Option<JobId>) -> Result<JobPage, StoreError> {
        self.inner.active(status, limit, after).await
    }
}

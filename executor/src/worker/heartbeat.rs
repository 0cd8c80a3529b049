//! The executor's heartbeat: what it is doing (idle, loading a model, busy), written to the
//! pool store when it starts, on every change and every [`HEARTBEAT_MS`], and deleted when
//! it exits. The dispatcher counts idle executors by it; job views explain a job whose
//! model is loading with it.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferry_core::fleet::{ExecutorActivity, ExecutorRecord, HEARTBEAT_MS, PoolStore};
use ferry_core::job::Millis;

use super::{Shutdown, Worker};

/// The executor's activity for its heartbeat, with a signal to write it at once on change.
pub(super) struct Activity {
    state: Mutex<(ExecutorActivity, Millis, Option<String>)>,
    changed: tokio::sync::Notify,
}

impl Activity {
    pub(super) fn new(now: Millis) -> Self {
        Activity { state: Mutex::new((ExecutorActivity::Idle, now, None)), changed: tokio::sync::Notify::new() }
    }

    pub(super) fn set(&self, activity: ExecutorActivity, now: Millis, model: Option<String>) {
        let mut s = self.state.lock().unwrap();
        if s.0 != activity || s.2 != model {
            *s = (activity, now, model);
            self.changed.notify_one();
        }
    }
}

impl Worker {
    /// Writes the heartbeat now and every [`HEARTBEAT_MS`] or on a change of activity,
    /// until `stop` is set; then deletes it.
    pub(super) async fn heartbeat(self: std::sync::Arc<Self>, store: std::sync::Arc<dyn PoolStore>, stop: Shutdown) {
        let started_at = self.service.clock.now();
        loop {
            let (activity, since, model) = self.activity.state.lock().unwrap().clone();
            let record = ExecutorRecord {
                id: self.config.executor_id.clone(),
                pool: self.config.pool.clone(),
                activity,
                since,
                model,
                running_jobs: self.running.load(Ordering::SeqCst) as u32,
                started_at,
                seen_at: self.service.clock.now(),
            };
            if let Err(e) = store.put_executor(&record).await {
                tracing::warn!(error = %e, "could not write the heartbeat");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)) => {}
                _ = self.activity.changed.notified() => {}
                _ = stop.wait() => break,
            }
        }
        if let Err(e) = store.delete_executor(&self.config.executor_id).await {
            tracing::warn!(error = %e, "could not delete the heartbeat");
        }
    }
}

//! The dispatcher Lambda's handler: one plain async function over the dispatcher and the
//! watchdog (ports inside), called by `main` with the AWS adapters and by tests with any.
//!
//! Two triggers, told apart by the event's shape (the stream's record layout is
//! `ferry_aws::stream`'s to read):
//! - the jobs table's DynamoDB stream: records of jobs that are (still) `queued` name the
//!   pools to reconcile at once, so a new job gets an executor within seconds; the writes of
//!   jobs with a webhook queue the deliveries their events call for (`ferry_core::deliver`);
//! - the EventBridge schedule (every minute, `{"source": "aws.events", ...}`): every pool is
//!   reconciled and the watchdog runs.
//!
//! Both are level-triggered: the dispatcher reads the whole situation each time, so a
//! duplicated, lost or reordered stream record is harmless (the next minute catches up).
//! Webhook deliveries are not: when they cannot be queued the whole batch fails, so Lambda
//! retries it (a delivery already recorded and tried is not queued twice).

mod build;

use std::collections::BTreeSet;

use ferry_core::deliver::Webhooks;
use ferry_core::dispatch::{Dispatcher, PoolView};
use ferry_core::ports::JobChange;
use ferry_core::progress::ProgressEvent;
use ferry_core::watchdog::{Watchdog, WatchdogReport};
use serde::Serialize;
use serde_json::Value;

pub use build::{BuildError, build};

/// What started an invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Stream records: the pools of the queued jobs they show, and the progress events
    /// executors marked for the stream fan-out (they could not push them themselves).
    Stream { pools: BTreeSet<String>, events: Vec<ProgressEvent>, changes: Vec<JobChange>, records: usize },
    /// The schedule (or any other event): everything, and the watchdog.
    Schedule,
}

/// Reads the trigger from the raw event. `pool_of` maps a model id to its pool (the catalog).
pub fn trigger(event: &Value, pool_of: impl Fn(&str) -> String) -> Trigger {
    match ferry_aws::stream::read_stream_event(event) {
        Some(batch) => Trigger::Stream {
            pools: batch.queued_models.iter().map(|m| pool_of(m)).collect(),
            events: batch.events,
            changes: batch.job_changes,
            records: batch.records,
        },
        None => Trigger::Schedule,
    }
}

/// What the Lambda runs: built once by [`build`].
pub struct Handlers {
    pub dispatcher: Dispatcher,
    pub watchdog: Watchdog,
    /// Queues webhook deliveries from the stream's job writes.
    pub webhooks: Webhooks,
}

/// Why a stream batch failed as a whole (Lambda retries it).
#[derive(Debug, thiserror::Error)]
#[error("webhook deliveries could not be queued: {0}")]
pub struct BatchFailed(String);

/// The answer: what was reconciled, and the stream's (always empty) batch failures.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub pools: Vec<PoolView>,
    pub errors: Vec<String>,
    pub watchdog: Option<WatchdogReport>,
    /// Deliveries of streamed progress events (connections reached).
    pub pushed: u32,
    /// Webhook deliveries queued.
    pub webhooks: u32,
    #[serde(rename = "batchItemFailures")]
    pub batch_item_failures: Vec<Value>,
}

/// Handles one event. Fails only when a stream batch's webhook deliveries could not be
/// queued (then Lambda retries the batch).
pub async fn handle(handlers: &Handlers, event: Value) -> Result<Outcome, BatchFailed> {
    let Handlers { dispatcher, watchdog, webhooks } = handlers;
    let service = &watchdog.service;
    let trigger = trigger(&event, |model| service.pool_of(model).to_string());
    let mut out =
        Outcome { pools: vec![], errors: vec![], watchdog: None, pushed: 0, webhooks: 0, batch_item_failures: vec![] };
    let pools: Vec<String> = match &trigger {
        Trigger::Stream { pools, events, changes, records } => {
            tracing::info!(records, pools = ?pools, events = events.len(), changes = changes.len(), "stream trigger");
            if !changes.is_empty() {
                match webhooks.enqueue(changes).await {
                    Ok(n) => out.webhooks = n as u32,
                    Err(e) => {
                        tracing::error!(error = %e, "webhook deliveries could not be queued; the batch is retried");
                        return Err(BatchFailed(e.to_string()));
                    }
                }
            }
            if !events.is_empty() {
                let fan_out = service.progress.fan_out_events(events).await;
                out.pushed = fan_out.delivered as u32;
                if fan_out.failed > 0 {
                    out.errors.push(format!("{} streamed event deliveries failed", fan_out.failed));
                }
            }
            pools.iter().filter(|p| dispatcher.pools.get(p).is_some()).cloned().collect()
        }
        Trigger::Schedule => {
            tracing::info!("scheduled reconcile");
            dispatcher.pools.names()
        }
    };
    for pool in pools {
        match dispatcher.reconcile(&pool).await {
            Ok(view) => out.pools.push(view),
            Err(e) => {
                tracing::error!(pool, error = %e, "reconcile failed");
                out.errors.push(format!("{pool}: {e}"));
            }
        }
    }
    if trigger == Trigger::Schedule {
        match watchdog.run().await {
            Ok(report) => out.watchdog = Some(report),
            Err(e) => {
                tracing::error!(error = %e, "watchdog failed");
                out.errors.push(format!("watchdog: {e}"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_records_name_the_pools_of_their_queued_jobs() {
        let event = serde_json::json!({"Records": [
            {"eventSource": "aws:dynamodb", "eventName": "INSERT", "dynamodb": {"NewImage": {
                "pk": {"S": "job#01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B"}, "status": {"S": "queued"}, "model": {"S": "llama"}}}}
        ]});
        let t = trigger(&event, |m| if m == "llama" { "gpu".into() } else { "cpu".into() });
        assert_eq!(
            t,
            Trigger::Stream { pools: ["gpu".to_string()].into(), events: vec![], changes: vec![], records: 1 }
        );
        let schedule = serde_json::json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        assert_eq!(trigger(&schedule, |_| "cpu".into()), Trigger::Schedule);
    }

    #[test]
    fn the_sample_events_in_events_dispatcher_are_told_apart() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../events/dispatcher");
        let read = |name: &str| -> Value {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let catalog = ferry_core::catalog::Catalog::demo();
        let pool_of =
            |model: &str| catalog.get(model).unwrap_or_else(|| panic!("{model} is a demo model")).pool.clone();

        let stream = trigger(&read("stream-new-job.json"), pool_of);
        assert_eq!(
            stream,
            Trigger::Stream { pools: ["cpu".to_string()].into(), events: vec![], changes: vec![], records: 1 }
        );
        assert_eq!(trigger(&read("schedule.json"), pool_of), Trigger::Schedule);
        // A job with a webhook ending: no pool to reconcile, one change that is `completed`.
        let Trigger::Stream { pools, changes, .. } = trigger(&read("stream-job-completed-webhook.json"), pool_of)
        else {
            panic!("a stream batch")
        };
        assert!(pools.is_empty());
        assert_eq!(changes.len(), 1);
        let c = &changes[0];
        assert_eq!((c.old_status, c.status), (Some(ferry_core::JobStatus::Running), ferry_core::JobStatus::Succeeded));
        assert_eq!(c.webhook.as_ref().map(|h| h.url.as_str()), Some("https://hooks.example.com/ferry"));
        let ids: Vec<String> = c.events(0).into_iter().map(|(_, id)| id).collect();
        assert_eq!(ids, ["msg_01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B_completed"]);
    }
}

//! `publish_progress`: the one way progress reaches clients. It stores the event for replay
//! with the next gap-free `seq` (a conditional write on the job's `last_seq`), then pushes
//! it to every connection subscribed to the job. A connection that is gone (410) loses its
//! record; one that is rate limited is retried with backoff. The executor calls this; so do
//! `ferry dev`'s dev-only progress driver and the tests.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::job::{JobId, JobStatus, TenantId};
use crate::ports::{Clock, ConnectionStore, EventStore, JobStore, Notifier, NotifyError, StoreError};
use crate::progress::{EventBody, MAX_EVENT_BYTES, ProgressEvent};

/// How many times an append retries after losing the race for a `seq`.
const APPEND_TRIES: u32 = 16;
/// How many deliveries run at once during a fan-out.
const FAN_OUT_CONCURRENCY: usize = 64;

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no such job")]
    NotFound,
    #[error("the event is {bytes} bytes; the limit is {MAX_EVENT_BYTES}")]
    TooLarge { bytes: usize },
    #[error("too many concurrent writers for this job's events")]
    Contended,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a fan-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanOut {
    pub delivered: usize,
    /// Connections found closed (410) and removed.
    pub gone: usize,
    pub failed: usize,
}

/// A message from the server to a WebSocket client.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ServerMessage {
    /// A progress event.
    Event { event: ProgressEvent },
}

/// The progress path over its ports.
#[derive(Clone)]
pub struct ProgressHub {
    pub jobs: Arc<dyn JobStore>,
    pub events: Arc<dyn EventStore>,
    pub connections: Arc<dyn ConnectionStore>,
    pub notifier: Arc<dyn Notifier>,
    pub clock: Arc<dyn Clock>,
}

impl ProgressHub {
    /// Stores `body` as the job's next event, then delivers it to the job's subscribers.
    pub async fn publish_progress(
        &self,
        job_id: &JobId,
        body: EventBody,
    ) -> Result<(ProgressEvent, FanOut), PublishError> {
        let event = self.store(job_id, body).await?;
        let fan_out = self.fan_out(&event).await;
        Ok((event, fan_out))
    }

    /// Appends the event with the next `seq`, retrying when another writer took it first.
    pub async fn store(&self, job_id: &JobId, body: EventBody) -> Result<ProgressEvent, PublishError> {
        let mut job = self.jobs.get(job_id).await?.ok_or(PublishError::NotFound)?;
        for _ in 0..APPEND_TRIES {
            let event =
                ProgressEvent { job_id: *job_id, seq: job.last_seq + 1, time: self.clock.now(), body: body.clone() };
            let bytes = frame(&event).len();
            if bytes > MAX_EVENT_BYTES {
                return Err(PublishError::TooLarge { bytes });
            }
            match self.events.append(&event, job.last_seq, job.retain_until).await {
                Ok(()) => return Ok(event),
                Err(StoreError::ConditionFailed { current: Some(current) }) => job = *current,
                Err(StoreError::ConditionFailed { current: None }) => return Err(PublishError::NotFound),
                Err(e) => return Err(e.into()),
            }
        }
        Err(PublishError::Contended)
    }

    /// Sends an event to every subscriber of its job, a bounded number at a time.
    pub async fn fan_out(&self, event: &ProgressEvent) -> FanOut {
        let subscribers = match self.connections.subscribers(&event.job_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(job_id = %event.job_id, error = %e, "cannot read subscribers");
                return FanOut { failed: 1, ..FanOut::default() };
            }
        };
        let data: Arc<[u8]> = frame(event).into();
        let limit = Arc::new(tokio::sync::Semaphore::new(FAN_OUT_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for id in subscribers {
            let (hub, data, limit, job_id) = (self.clone(), data.clone(), limit.clone(), event.job_id);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let result = hub.deliver(&id, &data).await;
                if result == Err(NotifyError::Gone) {
                    // `deliver` deleted the connection; also drop this job's subscription in
                    // case the connection record was already gone (a subscribe that raced
                    // $disconnect), so later publishes stop trying it.
                    let _ = hub.connections.unsubscribe(&id, &job_id).await;
                }
                result
            });
        }
        let mut out = FanOut::default();
        while let Some(result) = tasks.join_next().await {
            match result {
                Ok(Ok(())) => out.delivered += 1,
                Ok(Err(NotifyError::Gone)) => out.gone += 1,
                _ => out.failed += 1,
            }
        }
        out
    }

    /// Posts to one connection: 410 deletes its record, LimitExceeded is retried.
    pub async fn deliver(&self, connection_id: &str, data: &[u8]) -> Result<(), NotifyError> {
        let mut backoff = Duration::from_millis(50);
        for attempt in 1..=4 {
            match self.notifier.post(connection_id, data).await {
                Err(NotifyError::LimitExceeded) if attempt < 4 => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(NotifyError::Gone) => {
                    tracing::info!(connection_id, "connection gone; removing it");
                    if let Err(e) = self.connections.delete(connection_id).await {
                        tracing::warn!(connection_id, error = %e, "could not remove a gone connection");
                    }
                    return Err(NotifyError::Gone);
                }
                other => return other,
            }
        }
        Err(NotifyError::LimitExceeded)
    }

    /// A tenant's job's events after `after`; see [`read_events`].
    pub async fn events_after(
        &self,
        tenant: &TenantId,
        job_id: &JobId,
        after: u64,
        limit: u32,
        wait: Duration,
    ) -> Result<(Vec<ProgressEvent>, JobStatus, u64), PublishError> {
        read_events(&*self.jobs, &*self.events, &*self.clock, tenant, job_id, after, limit, wait).await
    }
}

/// A tenant's job's events after `after`, waiting up to `wait` for the first one while the
/// job is not finished. Returns the events and the job's status and `last_seq`. Another
/// tenant's job, a missing one and one past retention are all `NotFound`.
#[allow(clippy::too_many_arguments)]
pub async fn read_events(
    jobs: &dyn JobStore,
    events: &dyn EventStore,
    clock: &dyn Clock,
    tenant: &TenantId,
    job_id: &JobId,
    after: u64,
    limit: u32,
    wait: Duration,
) -> Result<(Vec<ProgressEvent>, JobStatus, u64), PublishError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut interval = Duration::from_millis(50);
    loop {
        let job = match jobs.get(job_id).await? {
            Some(j) if &j.tenant == tenant && j.retain_until > clock.now() => j,
            _ => return Err(PublishError::NotFound),
        };
        let now = tokio::time::Instant::now();
        if job.last_seq > after || job.status.is_terminal() || now >= deadline {
            let found =
                if job.last_seq > after { events.read(job_id, after, job.last_seq, limit).await? } else { vec![] };
            return Ok((found, job.status, job.last_seq));
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 3 / 2).min(Duration::from_millis(250));
    }
}

/// The bytes sent to a WebSocket client for an event.
pub fn frame(event: &ProgressEvent) -> Vec<u8> {
    serde_json::to_vec(&ServerMessage::Event { event: event.clone() }).unwrap_or_default()
}

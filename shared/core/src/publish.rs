//! `publish_progress`: the one way progress reaches clients. It stores the event for replay
//! with the next gap-free `seq` (a conditional write on the job's `last_seq`), then pushes
//! it to every connection subscribed to the job. A connection that is gone (410) loses its
//! record; one that is rate limited is retried with backoff. The executor calls this; so do
//! `ferry dev`'s dev-only progress driver and the tests.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::job::{JobId, JobStatus, TenantId};
use crate::ports::{Clock, ConnectionStore, EventStore, JobStore, MAX_APPEND, Notifier, NotifyError, StoreError};
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
    /// Consecutive progress events of one job, coalesced into one frame, in seq order.
    Events { events: Vec<ProgressEvent> },
}

impl ServerMessage {
    /// The events this message carries, in order.
    pub fn into_events(self) -> Vec<ProgressEvent> {
        match self {
            ServerMessage::Event { event } => vec![event],
            ServerMessage::Events { events } => events,
        }
    }
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
        let (mut events, fan_out) = self.publish_batch(job_id, vec![body]).await?;
        Ok((events.remove(0), fan_out))
    }

    /// Stores `bodies` as the job's next events (in as few atomic appends as the store
    /// allows), then delivers them coalesced: consecutive events share one frame
    /// (`{"action":"events","events":[...]}`) up to [`MAX_EVENT_BYTES`]; a lone event is
    /// sent as `{"action":"event","event":{...}}`. This is how a burst of tokens costs a
    /// few Management API calls instead of one per token.
    pub async fn publish_batch(
        &self,
        job_id: &JobId,
        bodies: Vec<EventBody>,
    ) -> Result<(Vec<ProgressEvent>, FanOut), PublishError> {
        let events = self.store_batch(job_id, bodies).await?;
        let mut fan_out = FanOut::default();
        for data in frames(&events) {
            let f = self.fan_out_frame(job_id, data.into()).await;
            fan_out.delivered += f.delivered;
            fan_out.gone += f.gone;
            fan_out.failed += f.failed;
        }
        Ok((events, fan_out))
    }

    /// Appends the event with the next `seq`, retrying when another writer took it first.
    pub async fn store(&self, job_id: &JobId, body: EventBody) -> Result<ProgressEvent, PublishError> {
        Ok(self.store_batch(job_id, vec![body]).await?.remove(0))
    }

    /// Appends events with the next seqs, [`MAX_APPEND`] per atomic write, retrying a write
    /// that lost the race for its numbers. Every body is checked against the size limit
    /// before anything is written.
    pub async fn store_batch(
        &self,
        job_id: &JobId,
        bodies: Vec<EventBody>,
    ) -> Result<Vec<ProgressEvent>, PublishError> {
        for body in &bodies {
            let probe = ProgressEvent { job_id: *job_id, seq: u64::MAX, time: u64::MAX, body: body.clone() };
            let bytes = frame(&probe).len();
            if bytes > MAX_EVENT_BYTES {
                return Err(PublishError::TooLarge { bytes });
            }
        }
        let mut job = self.jobs.get(job_id).await?.ok_or(PublishError::NotFound)?;
        let mut stored = Vec::with_capacity(bodies.len());
        for chunk in bodies.chunks(MAX_APPEND) {
            let mut tries = 0;
            loop {
                tries += 1;
                let now = self.clock.now();
                let events: Vec<ProgressEvent> = chunk
                    .iter()
                    .zip(job.last_seq + 1..)
                    .map(|(body, seq)| ProgressEvent { job_id: *job_id, seq, time: now, body: body.clone() })
                    .collect();
                match self.events.append(&events, job.last_seq, job.retain_until).await {
                    Ok(()) => {
                        job.last_seq += events.len() as u64;
                        stored.extend(events);
                        break;
                    }
                    Err(StoreError::ConditionFailed { current: Some(current) }) if tries < APPEND_TRIES => {
                        job = *current
                    }
                    Err(StoreError::ConditionFailed { current: Some(_) }) => return Err(PublishError::Contended),
                    Err(StoreError::ConditionFailed { current: None }) => return Err(PublishError::NotFound),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(stored)
    }

    /// Delivers events that are already stored (read back from the table's stream by the
    /// dispatcher Lambda, for executors that cannot reach the Management API): consecutive
    /// events of a job share frames, as in [`ProgressHub::publish_batch`].
    pub async fn fan_out_events(&self, events: &[ProgressEvent]) -> FanOut {
        let mut total = FanOut::default();
        for group in events.chunk_by(|a, b| a.job_id == b.job_id) {
            for data in frames(group) {
                let f = self.fan_out_frame(&group[0].job_id, data.into()).await;
                total.delivered += f.delivered;
                total.gone += f.gone;
                total.failed += f.failed;
            }
        }
        total
    }

    /// Sends one event to every subscriber of its job.
    pub async fn fan_out(&self, event: &ProgressEvent) -> FanOut {
        self.fan_out_frame(&event.job_id, frame(event).into()).await
    }

    /// Sends a frame to every subscriber of `job_id`, a bounded number at a time.
    async fn fan_out_frame(&self, job_id: &JobId, data: Arc<[u8]>) -> FanOut {
        let subscribers = match self.connections.subscribers(job_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(%job_id, error = %e, "cannot read subscribers");
                return FanOut { failed: 1, ..FanOut::default() };
            }
        };
        let limit = Arc::new(tokio::sync::Semaphore::new(FAN_OUT_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for id in subscribers {
            let (hub, data, limit, job_id) = (self.clone(), data.clone(), limit.clone(), *job_id);
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

/// Frames for consecutive events: as many per frame as fit in [`MAX_EVENT_BYTES`], a lone
/// event in the single-event shape. Every event fits on its own (the store checks).
pub fn frames(events: &[ProgressEvent]) -> Vec<Vec<u8>> {
    // `{"action":"events","events":[` + `]}`, and one comma per event after the first.
    const ENVELOPE: usize = 32;
    let mut out = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let mut end = start;
        let mut bytes = ENVELOPE;
        while end < events.len() {
            let size = serde_json::to_vec(&events[end]).map(|v| v.len()).unwrap_or(MAX_EVENT_BYTES) + 1;
            if end > start && bytes + size > MAX_EVENT_BYTES {
                break;
            }
            bytes += size;
            end += 1;
        }
        out.push(if end - start == 1 {
            frame(&events[start])
        } else {
            serde_json::to_vec(&ServerMessage::Events { events: events[start..end].to_vec() }).unwrap_or_default()
        });
        start = end;
    }
    out
}

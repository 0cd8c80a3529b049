//! [`ProgressStream`]: how a producer that emits many events (a model generating tokens)
//! publishes them without waiting on the store or the network for each one.
//!
//! `push` queues an event and returns at once. A background task publishes whatever has
//! queued up since its last write as one batch ([`ProgressHub::publish_batch`]): one
//! atomic append per 99 events and one coalesced frame per 32 KB to each subscriber. When
//! publishing keeps up, every event goes out alone and at once; when it falls behind (a
//! burst of tokens, a slow store), events coalesce instead of piling up one request each.
//! `flush` waits until everything pushed so far is stored and delivered, so a producer can
//! order its final status after its last token.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::job::JobId;
use crate::progress::{EventBody, MAX_EVENT_BYTES, ProgressEvent};
use crate::publish::{ProgressHub, PublishError, frame};

/// Most events taken into one batch.
const MAX_BATCH: usize = 512;
/// Tries per batch for store errors that may pass (throttling, unavailability).
const BATCH_TRIES: u32 = 4;

/// Why a stream's events were not all published.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamError {
    #[error("the event is {bytes} bytes; the limit is {MAX_EVENT_BYTES}")]
    TooLarge { bytes: usize },
    #[error("{dropped} progress event(s) could not be published: {reason}")]
    Dropped { dropped: usize, reason: String },
    #[error("the progress stream has stopped")]
    Closed,
}

enum Cmd {
    Event(EventBody),
    Flush(oneshot::Sender<Result<u64, StreamError>>),
}

/// What the background task has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Events stored.
    pub published: u64,
    /// Batches written (each one or more atomic appends and fan-outs).
    pub batches: u64,
    /// The last seq stored.
    pub last_seq: u64,
}

/// A job's outgoing progress, published in the background in order.
pub struct ProgressStream {
    job_id: JobId,
    tx: mpsc::UnboundedSender<Cmd>,
    stats: Arc<std::sync::Mutex<StreamStats>>,
    task: tokio::task::JoinHandle<()>,
}

impl ProgressStream {
    /// Starts the background publisher for `job_id`.
    pub fn new(hub: Arc<ProgressHub>, job_id: JobId) -> ProgressStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(std::sync::Mutex::new(StreamStats::default()));
        let task = tokio::spawn(run(hub, job_id, rx, stats.clone()));
        ProgressStream { job_id, tx, stats, task }
    }

    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// Queues an event; never waits. An event too large to deliver is refused here, so the
    /// producer learns of it at once and nothing after it is held up.
    pub fn push(&self, body: EventBody) -> Result<(), StreamError> {
        let probe = ProgressEvent { job_id: self.job_id, seq: u64::MAX, time: u64::MAX, body };
        let bytes = frame(&probe).len();
        if bytes > MAX_EVENT_BYTES {
            return Err(StreamError::TooLarge { bytes });
        }
        self.tx.send(Cmd::Event(probe.body)).map_err(|_| StreamError::Closed)
    }

    /// Waits until every event pushed before this call is published; returns the last seq
    /// this stream stored (0 when none yet), or what failed since the previous flush.
    pub async fn flush(&self) -> Result<u64, StreamError> {
        let (done, wait) = oneshot::channel();
        self.tx.send(Cmd::Flush(done)).map_err(|_| StreamError::Closed)?;
        wait.await.map_err(|_| StreamError::Closed)?
    }

    pub fn stats(&self) -> StreamStats {
        *self.stats.lock().unwrap()
    }

    /// Flushes, then stops the background task.
    pub async fn close(self) -> Result<u64, StreamError> {
        let result = self.flush().await;
        drop(self.tx);
        let _ = self.task.await;
        result
    }
}

async fn run(
    hub: Arc<ProgressHub>,
    job_id: JobId,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    stats: Arc<std::sync::Mutex<StreamStats>>,
) {
    let mut failure: Option<StreamError> = None;
    let mut next = rx.recv().await;
    while let Some(cmd) = next.take() {
        // Take the first command and everything already queued behind it, up to a flush.
        let mut batch = Vec::new();
        let mut flush = None;
        let mut cmd = Some(cmd);
        while let Some(c) = cmd.take() {
            match c {
                Cmd::Event(body) => batch.push(body),
                Cmd::Flush(done) => {
                    flush = Some(done);
                    break;
                }
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            cmd = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            let n = batch.len();
            match publish(&hub, &job_id, batch).await {
                Ok(events) => {
                    let mut s = stats.lock().unwrap();
                    s.published += n as u64;
                    s.batches += 1;
                    s.last_seq = events.last().map_or(s.last_seq, |e| e.seq);
                }
                Err(e) => {
                    tracing::warn!(%job_id, dropped = n, error = %e, "progress events not published");
                    failure = Some(match failure.take() {
                        Some(StreamError::Dropped { dropped, reason }) => {
                            StreamError::Dropped { dropped: dropped + n, reason }
                        }
                        _ => StreamError::Dropped { dropped: n, reason: e.to_string() },
                    });
                }
            }
        }
        if let Some(done) = flush {
            let last_seq = stats.lock().unwrap().last_seq;
            let _ = done.send(match failure.take() {
                Some(e) => Err(e),
                None => Ok(last_seq),
            });
        }
        next = rx.recv().await;
    }

    async fn publish(
        hub: &ProgressHub,
        job_id: &JobId,
        batch: Vec<EventBody>,
    ) -> Result<Vec<ProgressEvent>, PublishError> {
        let mut pause = Duration::from_millis(50);
        let mut tries = 0;
        loop {
            tries += 1;
            match hub.publish_batch(job_id, batch.clone()).await {
                Ok((events, _)) => return Ok(events),
                Err(PublishError::Store(e)) if tries < BATCH_TRIES && e.is_transient() => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

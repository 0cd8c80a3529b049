//! The embedded work queue: SQS standard-queue semantics in memory.
//!
//! What the executors rely on, and therefore what this reproduces: a received message is
//! hidden for its visibility timeout and then redelivered (at-least-once), each delivery
//! gets its own receipt and only the latest one is honoured, receivers long-poll, and a
//! message received too often is moved to a dead-letter queue instead of delivered.
//! Deadlines use `tokio::time::Instant`, so tests can run on paused time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::ports::{MessageQueue, QueueDepth, QueueError, Received};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::lock;

/// SQS's caps on one receive: messages, and long-polling time.
const MAX_BATCH: u32 = 10;
const MAX_WAIT: Duration = Duration::from_secs(20);

/// Numbers queue instances, so a receipt from one queue is never valid on another.
static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

/// An in-process, at-least-once queue with visibility timeouts and optional redrive, of work
/// messages unless told otherwise.
#[derive(Debug)]
pub struct MemoryQueue<M = ferry_core::ports::WorkMessage> {
    id: u64,
    state: Mutex<State<M>>,
    /// Wakes long-polling receivers when a message is sent or made visible early; lapsing
    /// visibility timeouts are covered by receivers sleeping until the earliest deadline.
    changed: Notify,
    dead_letter: Option<DeadLetter<M>>,
}

#[derive(Debug)]
struct DeadLetter<M> {
    queue: Arc<MemoryQueue<M>>,
    max_receive_count: u32,
}

#[derive(Debug)]
struct State<M> {
    /// By sequence number: delivery order is send order (SQS only approximates it).
    messages: BTreeMap<u64, Entry<M>>,
    next_seq: u64,
    /// Counts deliveries, making every receipt distinct.
    deliveries: u64,
}

impl<M> Default for State<M> {
    fn default() -> Self {
        State { messages: BTreeMap::new(), next_seq: 0, deliveries: 0 }
    }
}

#[derive(Debug)]
struct Entry<M> {
    message: M,
    /// Visible (deliverable) from this instant; in flight before it.
    visible_at: Instant,
    receive_count: u32,
    /// The receipt of the latest delivery, the only one `delete` and `set_visibility` accept.
    receipt: Option<String>,
}

impl<M: Clone> Default for MemoryQueue<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Clone> MemoryQueue<M> {
    /// A queue without a dead-letter queue: messages are redelivered forever until deleted.
    pub fn new() -> Self {
        MemoryQueue {
            id: NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            dead_letter: None,
        }
    }

    /// A queue whose messages move to `dlq` once they have been received
    /// `max_receive_count` times and come up again (SQS's redrive policy). The moved
    /// message starts afresh in `dlq`, with a receive count of zero.
    pub fn with_dead_letter(dlq: Arc<MemoryQueue<M>>, max_receive_count: u32) -> Self {
        assert!(max_receive_count >= 1, "SQS requires maxReceiveCount >= 1");
        MemoryQueue { dead_letter: Some(DeadLetter { queue: dlq, max_receive_count }), ..Self::new() }
    }

    fn enqueue(&self, message: M) {
        {
            let mut state = lock(&self.state);
            let seq = state.next_seq;
            state.next_seq += 1;
            let entry = Entry { message, visible_at: Instant::now(), receive_count: 0, receipt: None };
            state.messages.insert(seq, entry);
        }
        self.changed.notify_waiters();
    }

    /// Delivers up to `max` visible messages, and takes out those due for the dead-letter
    /// queue (returned, so they are sent there without holding this queue's lock). Also
    /// returns the earliest instant an in-flight message becomes visible.
    fn take_visible(&self, max: usize, visibility: Duration) -> (Vec<Received<M>>, Vec<M>, Option<Instant>) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let State { messages, deliveries, .. } = &mut *state;
        let mut got = Vec::new();
        let mut dead = Vec::new();
        let mut next_visible: Option<Instant> = None;
        let mut dead_seqs = Vec::new();
        for (seq, entry) in messages.iter_mut() {
            if entry.visible_at > now {
                next_visible = Some(next_visible.map_or(entry.visible_at, |t| t.min(entry.visible_at)));
                continue;
            }
            if got.len() == max {
                continue;
            }
            if let Some(dl) = &self.dead_letter
                && entry.receive_count >= dl.max_receive_count
            {
                dead_seqs.push(*seq);
                continue;
            }
            *deliveries += 1;
            let receipt = format!("{}.{}.{}", self.id, seq, deliveries);
            entry.receive_count += 1;
            entry.receipt = Some(receipt.clone());
            entry.visible_at = now + visibility;
            if visibility.is_zero() {
                next_visible = Some(now);
            } else {
                next_visible = Some(next_visible.map_or(entry.visible_at, |t| t.min(entry.visible_at)));
            }
            got.push(Received { message: entry.message.clone(), receipt, receive_count: entry.receive_count });
        }
        for seq in dead_seqs {
            if let Some(entry) = messages.remove(&seq) {
                dead.push(entry.message);
            }
        }
        (got, dead, next_visible)
    }

    /// Finds the message a receipt was issued for, if that receipt is still its latest.
    fn entry_for<'a>(state: &'a mut State<M>, receipt: &str) -> Option<(u64, &'a mut Entry<M>)> {
        let seq: u64 = receipt.split('.').nth(1)?.parse().ok()?;
        let entry = state.messages.get_mut(&seq)?;
        (entry.receipt.as_deref() == Some(receipt)).then_some((seq, entry))
    }
}

#[async_trait]
impl<M: Clone + Send + Sync + 'static> MessageQueue<M> for MemoryQueue<M> {
    async fn send(&self, message: &M) -> Result<(), QueueError> {
        self.enqueue(message.clone());
        Ok(())
    }

    async fn receive(&self, max: u32, wait: Duration, visibility: Duration) -> Result<Vec<Received<M>>, QueueError> {
        // SQS's limits, so a caller that works here is not rejected or capped there.
        let max = max.clamp(1, MAX_BATCH) as usize;
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        loop {
            // Register for wake-ups before looking, so a send between the look and the
            // wait is not missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let (got, dead, next_visible) = self.take_visible(max, visibility);
            if let Some(dl) = &self.dead_letter {
                for message in dead {
                    tracing::warn!(max_receive_count = dl.max_receive_count, "message moved to the dead-letter queue");
                    dl.queue.enqueue(message);
                }
            }
            if !got.is_empty() || Instant::now() >= deadline {
                return Ok(got);
            }
            let wake = next_visible.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        let mut state = lock(&self.state);
        // Like SQS, the latest receipt deletes even after its visibility lapsed, as long
        // as nobody received the message again since.
        let (seq, _) = Self::entry_for(&mut state, receipt).ok_or(QueueError::InvalidReceipt)?;
        state.messages.remove(&seq);
        Ok(())
    }

    async fn set_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        {
            let now = Instant::now();
            let mut state = lock(&self.state);
            let (_, entry) = Self::entry_for(&mut state, receipt).ok_or(QueueError::InvalidReceipt)?;
            // SQS refuses to change a message that is no longer in flight (MessageNotInflight):
            // its holder has lost it and must not act as if it still held it.
            if entry.visible_at <= now {
                return Err(QueueError::InvalidReceipt);
            }
            entry.visible_at = now + visibility;
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let now = Instant::now();
        let state = lock(&self.state);
        let visible = state.messages.values().filter(|e| e.visible_at <= now).count() as u64;
        Ok(QueueDepth { visible, in_flight: state.messages.len() as u64 - visible })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::job::{JobId, TenantId};
    use ferry_core::ports::WorkMessage;

    fn msg(n: u64) -> WorkMessage {
        WorkMessage {
            job_id: JobId::generate(n),
            attempt: 1,
            tenant: TenantId::new("t").unwrap(),
            model: "m".into(),
            trace_id: format!("trace-{n}"),
        }
    }

    const VIS: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn redelivers_after_visibility_with_new_receipt() {
        let q = MemoryQueue::new();
        q.send(&msg(1)).await.unwrap();
        let short = Duration::from_secs(7);
        let first = q.receive(10, Duration::ZERO, short).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(q.depth().await.unwrap(), QueueDepth { visible: 0, in_flight: 1 });
        // A long poll wakes when the message becomes visible again, not at its own deadline.
        let start = Instant::now();
        let second = q.receive(10, Duration::from_secs(20), VIS).await.unwrap();
        assert_eq!(start.elapsed(), short);
        assert_eq!(second[0].receive_count, 2);
        assert_ne!(second[0].receipt, first[0].receipt);
        assert!(matches!(q.delete(&first[0].receipt).await, Err(QueueError::InvalidReceipt)));
        q.delete(&second[0].receipt).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_is_capped_at_20_s() {
        let q = MemoryQueue::<WorkMessage>::new();
        let start = Instant::now();
        assert!(q.receive(1, Duration::from_secs(90), VIS).await.unwrap().is_empty());
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_wakes_on_send() {
        let q = Arc::new(MemoryQueue::new());
        let sender = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            sender.send(&msg(1)).await.unwrap();
        });
        let start = Instant::now();
        let got = q.receive(1, Duration::from_secs(20), VIS).await.unwrap();
        assert_eq!((got.len(), start.elapsed()), (1, Duration::from_secs(3)));
    }

    #[tokio::test(start_paused = true)]
    async fn set_visibility_zero_wakes_a_waiting_receiver() {
        let q = Arc::new(MemoryQueue::new());
        q.send(&msg(1)).await.unwrap();
        let d = q.receive(1, Duration::ZERO, VIS).await.unwrap().remove(0);
        let other = q.clone();
        let waiter = tokio::spawn(async move { other.receive(1, Duration::from_secs(20), VIS).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.set_visibility(&d.receipt, Duration::ZERO).await.unwrap();
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got[0].receive_count, 2);
        // The old receipt can no longer extend the message.
        assert!(q.set_visibility(&d.receipt, VIS).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn moves_to_dead_letter_after_max_receives() {
        let dlq = Arc::new(MemoryQueue::new());
        let q = MemoryQueue::with_dead_letter(dlq.clone(), 2);
        let sent = msg(1);
        q.send(&sent).await.unwrap();
        for n in 1..=2 {
            let got = q.receive(1, Duration::ZERO, Duration::ZERO).await.unwrap();
            assert_eq!(got[0].receive_count, n);
        }
        assert!(q.receive(1, Duration::ZERO, VIS).await.unwrap().is_empty());
        assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
        let dead = dlq.receive(1, Duration::ZERO, VIS).await.unwrap();
        assert_eq!((&dead[0].message, dead[0].receive_count), (&sent, 1));
    }
}

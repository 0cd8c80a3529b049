//! `publish_progress` over real adapters (embedded, and DynamoDB on moto): gap-free
//! numbering under concurrent publishers, fan-out with 410 cleanup and rate-limit retries,
//! refusal of oversized events, and the long-poll read behind `GET /v1/jobs/{id}/events`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::catalog::Catalog;
use ferry_core::job::{Job, JobId, JobStatus, TenantId};
use ferry_core::ports::{Clock, Connection, Notifier, NotifyError, SystemClock};
use ferry_core::progress::{EventBody, MAX_EVENT_BYTES, ProgressEvent};
use ferry_core::publish::{ProgressHub, PublishError, ServerMessage, read_events};
use ferry_core::stream::{ProgressStream, StreamError};
use ferry_tests::backends::{self, Backend};

/// Records posts; answers 410 for ids starting with "gone", 429 once for ids starting with "busy".
/// A post waits while the test holds `gate` for writing (a subscriber slower than the pushes).
#[derive(Default)]
struct Recorder {
    posts: Mutex<Vec<(String, Vec<u8>)>>,
    throttled: Mutex<HashSet<String>>,
    gate: tokio::sync::RwLock<()>,
}

#[async_trait]
impl Notifier for Recorder {
    async fn post(&self, id: &str, data: &[u8]) -> Result<(), NotifyError> {
        drop(self.gate.read().await);
        if id.starts_with("gone") {
            return Err(NotifyError::Gone);
        }
        if id.starts_with("busy") && self.throttled.lock().unwrap().insert(id.to_string()) {
            return Err(NotifyError::LimitExceeded);
        }
        self.posts.lock().unwrap().push((id.to_string(), data.to_vec()));
        Ok(())
    }
}

fn job(tenant: &str) -> Job {
    ferry_tests::fixtures::job(tenant, JobStatus::Running)
}

fn hub(b: &Backend, notifier: Arc<Recorder>) -> Arc<ProgressHub> {
    b.hub(notifier)
}

fn token(i: u32) -> EventBody {
    EventBody::Token { index: i, id: 100 + i, text: format!(" t{i}"), logprob: Some(-0.5) }
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() { super::$name(super::backends::embedded()).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn aws() {
                if let Some(b) = super::backends::aws().await { super::$name(b).await }
            }
        }
    )*};
}

both_backends!(
    sequence_is_gap_free,
    fan_out_cleans_gone_and_retries_busy,
    refuses_what_cannot_be_delivered,
    long_poll_read,
    stream_coalesces_bursts,
    status_changes_are_published,
);

/// Registers a connection subscribed to `job`; returns its id.
async fn subscriber(b: &Backend, job: &Job, prefix: &str) -> String {
    let now = SystemClock.now();
    let id = format!("{prefix}-{}", ulid::Ulid::new());
    let c = Connection { id: id.clone(), tenant: job.tenant.clone(), connected_at: now, expires_at: now + 7_200_000 };
    b.connections.put(&c).await.unwrap();
    b.connections.subscribe(&id, &job.id).await.unwrap();
    id
}

/// The events in the frames posted to `id`, in order, and the frames' sizes.
fn posted_events(recorder: &Recorder, id: &str) -> (Vec<ProgressEvent>, Vec<usize>) {
    let posts = recorder.posts.lock().unwrap();
    let mine: Vec<&Vec<u8>> = posts.iter().filter(|(to, _)| to == id).map(|(_, data)| data).collect();
    let sizes = mine.iter().map(|d| d.len()).collect();
    let events = mine
        .iter()
        .flat_map(|d| serde_json::from_slice::<ServerMessage>(d).expect("a server message").into_events())
        .collect();
    (events, sizes)
}

async fn stream_coalesces_bursts(b: Backend) {
    let j = job("acme");
    b.jobs.create(&j, None).await.unwrap();
    let conn = subscriber(&b, &j, "live").await;
    let recorder = Arc::new(Recorder::default());
    let stream = ProgressStream::new(hub(&b, recorder.clone()), j.id);

    // A burst: 300 small tokens pushed without waiting, then 40 big ones (2 KiB of text each),
    // while the subscriber is slow (its first post waits for the burst): the publisher falls
    // behind, as it does under load, whatever this machine's speed.
    let slow = recorder.gate.write().await;
    const SMALL: u32 = 300;
    let mut pushed = Vec::new();
    for i in 0..SMALL {
        pushed.push(token(i));
    }
    for i in SMALL..SMALL + 40 {
        pushed.push(EventBody::Token { index: i, id: i, text: format!("{i:04}").repeat(512), logprob: None });
    }
    for body in &pushed {
        stream.push(body.clone()).unwrap();
    }
    drop(slow);
    let n = pushed.len() as u64;
    assert_eq!(stream.flush().await, Ok(n), "flush reports the last seq stored");
    let huge = EventBody::Log { level: "info".into(), message: "x".repeat(40 * 1024) };
    assert!(matches!(stream.push(huge), Err(StreamError::TooLarge { .. })), "refused at push");

    // Stored: every event once, in push order, gap-free.
    let stored = b.events.read(&j.id, 0, n, 1000).await.unwrap();
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
    assert_eq!(stored.iter().map(|e| e.body.clone()).collect::<Vec<_>>(), pushed);
    assert_eq!(b.jobs.get(&j.id).await.unwrap().unwrap().last_seq, n);

    // Delivered: the same events in the same order, in far fewer frames, none over 32 KB.
    let (delivered, sizes) = posted_events(&recorder, &conn);
    assert_eq!(delivered, stored, "the subscriber got every event once, in order");
    assert!(sizes.iter().all(|&s| s <= MAX_EVENT_BYTES), "a frame over the limit: {sizes:?}");
    assert!(sizes.len() <= 20, "{} frames for {n} events: not coalesced", sizes.len());
    let stats = stream.stats();
    assert_eq!(stats.published, n);
    assert!(stats.batches < 20, "{} batches", stats.batches);

    // Slow trickle: each event is published alone and promptly, one frame each.
    let frames_before = sizes.len();
    for i in 0..3 {
        stream.push(token(1000 + i)).unwrap();
        assert_eq!(stream.flush().await, Ok(n + 1 + i as u64));
    }
    let (delivered, sizes) = posted_events(&recorder, &conn);
    assert_eq!(delivered.len() as u64, n + 3);
    assert_eq!(sizes.len(), frames_before + 3);
    assert_eq!(stream.close().await, Ok(n + 3));
}

async fn status_changes_are_published(b: Backend) {
    let j = ferry_tests::fixtures::job("acme", JobStatus::Queued);
    b.jobs.create(&j, None).await.unwrap();
    let conn = subscriber(&b, &j, "live").await;
    let recorder = Arc::new(Recorder::default());
    let service = b.with_notifier(recorder.clone()).root(Catalog::demo()).service();
    let cancelled = service.cancel(&j.tenant, &j.id).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    let stored = b.events.read(&j.id, 0, 10, 10).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].body, EventBody::Status { status: JobStatus::Cancelled, attempt: 1 });
    assert_eq!(posted_events(&recorder, &conn).0, stored, "pushed to the subscriber");
    // A request that changes nothing (cancelling a cancelled job) publishes nothing.
    assert!(service.cancel(&j.tenant, &j.id).await.is_err());
    assert_eq!(b.jobs.get(&j.id).await.unwrap().unwrap().last_seq, 1);
}

async fn sequence_is_gap_free(b: Backend) {
    let j = job("acme");
    b.jobs.create(&j, None).await.unwrap();
    let hub = hub(&b, Arc::default());
    // moto runs DynamoDB transactions without isolation (two racing TransactWriteItems can
    // both pass their conditions), so on moto the writers take turns; real DynamoDB
    // serializes them, and the embedded store is raced for real.
    let concurrent = b.name == "embedded";
    let mut tasks = Vec::new();
    for writer in 0..3u32 {
        let (hub, id) = (hub.clone(), j.id);
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..6 {
                let (event, _) = hub.publish_progress(&id, token(writer * 100 + i)).await.unwrap();
                seqs.push(event.seq);
            }
            seqs
        }));
        if !concurrent {
            let done = tasks.pop().unwrap().await.unwrap();
            tasks.push(tokio::spawn(async move { done }));
        }
    }
    let mut all: Vec<u64> = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one writer's events are in order: {seqs:?}");
        all.extend(seqs);
    }
    all.sort();
    assert_eq!(all, (1..=18).collect::<Vec<_>>(), "every number taken exactly once");
    let stored = b.events.read(&j.id, 0, 18, 100).await.unwrap();
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=18).collect::<Vec<_>>());
    assert_eq!(b.jobs.get(&j.id).await.unwrap().unwrap().last_seq, 18);
}

async fn fan_out_cleans_gone_and_retries_busy(b: Backend) {
    let j = job("acme");
    b.jobs.create(&j, None).await.unwrap();
    let now = SystemClock.now();
    let suffix = ulid::Ulid::new().to_string();
    let ids: Vec<String> = ["live", "gone", "busy"].iter().map(|p| format!("{p}-{suffix}")).collect();
    for id in &ids {
        let c = Connection { id: id.clone(), tenant: j.tenant.clone(), connected_at: now, expires_at: now + 7_200_000 };
        b.connections.put(&c).await.unwrap();
        b.connections.subscribe(id, &j.id).await.unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    let hub = hub(&b, recorder.clone());
    let (event, out) =
        hub.publish_progress(&j.id, EventBody::Percentage { percent: 12.5, message: None }).await.unwrap();
    assert_eq!((out.delivered, out.gone, out.failed), (2, 1, 0));
    let posts = recorder.posts.lock().unwrap().clone();
    let got: HashSet<&str> = posts.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got, HashSet::from([ids[0].as_str(), ids[2].as_str()]), "the busy one was retried");
    let frame: serde_json::Value = serde_json::from_slice(&posts[0].1).unwrap();
    assert_eq!(frame["action"], "event");
    assert_eq!(frame["event"]["seq"], event.seq);
    assert_eq!(frame["event"]["type"], "percentage");
    // The gone connection is forgotten: no record, no subscription.
    assert!(b.connections.get(&ids[1]).await.unwrap().is_none());
    let subs = b.connections.subscribers(&j.id).await.unwrap();
    assert!(!subs.contains(&ids[1]) && subs.contains(&ids[0]));
}

async fn refuses_what_cannot_be_delivered(b: Backend) {
    let j = job("acme");
    b.jobs.create(&j, None).await.unwrap();
    let hub = hub(&b, Arc::default());
    let huge = EventBody::Log { level: "info".into(), message: "x".repeat(40 * 1024) };
    assert!(matches!(hub.publish_progress(&j.id, huge).await, Err(PublishError::TooLarge { .. })));
    assert_eq!(b.jobs.get(&j.id).await.unwrap().unwrap().last_seq, 0, "nothing stored");
    let missing = JobId::generate(1);
    assert!(matches!(hub.publish_progress(&missing, token(0)).await, Err(PublishError::NotFound)));
}

async fn long_poll_read(b: Backend) {
    let j = job("acme");
    b.jobs.create(&j, None).await.unwrap();
    let hub = hub(&b, Arc::default());
    for i in 0..3 {
        hub.publish_progress(&j.id, token(i)).await.unwrap();
    }
    let clock = SystemClock;
    let (events, status, last) =
        read_events(&*b.jobs, &*b.events, &clock, &j.tenant, &j.id, 1, 100, Duration::ZERO).await.unwrap();
    assert_eq!((events.iter().map(|e| e.seq).collect::<Vec<_>>(), status, last), (vec![2, 3], JobStatus::Running, 3));
    let (page, _, _) = read_events(&*b.jobs, &*b.events, &clock, &j.tenant, &j.id, 0, 2, Duration::ZERO).await.unwrap();
    assert_eq!(page.len(), 2);

    // A waiting reader wakes when the next event is stored.
    let (h2, id) = (hub.clone(), j.id);
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h2.publish_progress(&id, token(9)).await.unwrap();
    });
    let started = std::time::Instant::now();
    let (events, _, _) =
        read_events(&*b.jobs, &*b.events, &clock, &j.tenant, &j.id, 3, 100, Duration::from_secs(10)).await.unwrap();
    publisher.await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
    assert!(started.elapsed() < Duration::from_secs(5), "woke on the event, not the deadline");

    // Nothing new: returns empty at the deadline. Another tenant: not found.
    let (none, _, _) =
        read_events(&*b.jobs, &*b.events, &clock, &j.tenant, &j.id, 4, 100, Duration::from_millis(300)).await.unwrap();
    assert!(none.is_empty());
    let other = TenantId::new("other").unwrap();
    assert!(matches!(
        read_events(&*b.jobs, &*b.events, &clock, &other, &j.id, 0, 100, Duration::ZERO).await,
        Err(PublishError::NotFound)
    ));
}

//! Event store and connection store cases: gap-free progress events appended under a
//! compare-and-set on the job's `last_seq`, read back by range; WebSocket connections and
//! their job subscriptions.

use std::sync::Arc;

use ferry_core::ports::{Connection, MAX_APPEND, StoreError};
use ferry_core::progress::{EventBody, ProgressEvent};
use ferry_core::{Job, JobError, JobId, JobStatus, Millis};
use ferry_tests::backends::Backend;

use crate::support::{QUEUED_1, T0, get, queued_job, tenant, tricky_json};

fn event(job: &Job, seq: u64, body: EventBody) -> ProgressEvent {
    ProgressEvent { job_id: job.id, seq, time: T0 + seq * 10, body }
}

/// One body of every variant, with unicode text and f32 values that need every digit.
fn all_bodies() -> Vec<EventBody> {
    vec![
        EventBody::Status { status: JobStatus::Running, attempt: 2 },
        EventBody::Log {
            level: "info".into(), message: "loading weights: Grüße, 世界 🚀 \"q\" \\ \t\n é".into()
        },
        EventBody::Token { index: 0, id: 128_000, text: "▁Hello".into(), logprob: Some(-0.123_456_79) },
        EventBody::Token { index: 1, id: 7, text: "🔥 ключ".into(), logprob: None },
        EventBody::Token { index: u32::MAX, id: u32::MAX, text: String::new(), logprob: Some(-1.0e-38) },
        EventBody::Percentage { percent: 33.333_332, message: Some("batch 1/3 ✓".into()) },
        EventBody::Percentage { percent: 100.0, message: None },
        EventBody::inline_result(tricky_json()),
        EventBody::Result {
            output: serde_json::Value::Null,
            output_url: Some("https://api.example/v1/jobs/01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B/output".into()),
            output_bytes: Some(4_000_000),
        },
        EventBody::Error { error: JobError { kind: "model_error".into(), message: "CUDA out of memory: 🔥".into() } },
        EventBody::Status { status: JobStatus::Failed, attempt: 2 },
    ]
}

/// Appends `bodies` as seq 1, 2, ... to a job at `last_seq` 0.
async fn append_all(b: &Backend, job: &Job, bodies: Vec<EventBody>, retain_until: Millis) -> Vec<ProgressEvent> {
    let mut events = Vec::new();
    for (i, body) in bodies.into_iter().enumerate() {
        let e = event(job, i as u64 + 1, body);
        b.events
            .append(std::slice::from_ref(&e), i as u64, retain_until)
            .await
            .unwrap_or_else(|err| panic!("[{}] append {}: {err}", b.name, e.seq));
        events.push(e);
    }
    events
}

async fn read(b: &Backend, job: &JobId, after: u64, last_seq: u64, limit: u32) -> Vec<ProgressEvent> {
    b.events.read(job, after, last_seq, limit).await.unwrap_or_else(|e| panic!("[{}] read: {e}", b.name))
}

fn seqs(events: &[ProgressEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

pub async fn case_append_read_round_trip(b: Backend) {
    let job = queued_job(&tenant("events"), T0);
    b.jobs.create(&job, None).await.unwrap();
    let events = append_all(&b, &job, all_bodies(), job.retain_until).await;
    let n = events.len() as u64;
    assert_eq!(get(&b, &job.id).await.last_seq, n, "[{}] last_seq after appends", b.name);

    // Everything, every body exactly as written, in order.
    assert_eq!(read(&b, &job.id, 0, n, 100).await, events, "[{}] full read", b.name);
    // Pages.
    assert_eq!(read(&b, &job.id, 0, n, 2).await, events[0..2], "[{}]", b.name);
    assert_eq!(seqs(&read(&b, &job.id, 2, n, 3).await), [3, 4, 5], "[{}]", b.name);
    assert_eq!(read(&b, &job.id, n - 1, n, 10).await, events[n as usize - 1..], "[{}]", b.name);
    assert_eq!(seqs(&read(&b, &job.id, 1, n, 1).await), [2], "[{}]", b.name);
    // The caller's `last_seq` bounds the read even if more are stored.
    assert_eq!(seqs(&read(&b, &job.id, 1, 4, 100).await), [2, 3, 4], "[{}]", b.name);
    // A zero limit, and reading at or past last_seq, return nothing.
    assert!(read(&b, &job.id, 0, n, 0).await.is_empty(), "[{}] limit 0", b.name);
    assert!(read(&b, &job.id, n, n, 100).await.is_empty(), "[{}] after == last_seq", b.name);
    assert!(read(&b, &job.id, n + 5, n, 100).await.is_empty(), "[{}] after > last_seq", b.name);
    // A `last_seq` beyond what is stored (events deleted, or a stale caller): the
    // missing numbers are simply absent.
    assert_eq!(read(&b, &job.id, 0, n + 50, 1000).await, events, "[{}] last_seq past the end", b.name);
    // Another job's events are never mixed in, and a job without events reads empty.
    let other = queued_job(&tenant("events"), T0 + 1);
    b.jobs.create(&other, None).await.unwrap();
    assert!(read(&b, &other.id, 0, 10, 100).await.is_empty(), "[{}] other job", b.name);
}

pub async fn case_read_across_batches(b: Backend) {
    // More than one BatchGetItem's worth (100 keys) on DynamoDB, written in batched appends.
    const N: u64 = 250;
    let job = queued_job(&tenant("events"), T0);
    b.jobs.create(&job, None).await.unwrap();
    let events: Vec<ProgressEvent> = (1..=N)
        .map(|seq| {
            let i = seq as u32;
            event(&job, seq, EventBody::Token { index: i, id: i * 3, text: format!("t{i}"), logprob: None })
        })
        .collect();
    for (i, chunk) in events.chunks(MAX_APPEND).enumerate() {
        let expected = (i * MAX_APPEND) as u64;
        b.events
            .append(chunk, expected, job.retain_until)
            .await
            .unwrap_or_else(|e| panic!("[{}] chunk {i}: {e}", b.name));
    }
    assert_eq!(get(&b, &job.id).await.last_seq, N, "[{}]", b.name);
    assert_eq!(read(&b, &job.id, 0, N, 1000).await, events, "[{}]", b.name);
    assert_eq!(read(&b, &job.id, 10, N, 105).await, events[10..115], "[{}]", b.name);
    assert_eq!(read(&b, &job.id, 99, N, 1000).await, events[99..], "[{}]", b.name);
}

pub async fn case_append_batches(b: Backend) {
    let job = queued_job(&tenant("events"), T0);
    b.jobs.create(&job, None).await.unwrap();
    let bodies = all_bodies();
    let batch: Vec<ProgressEvent> = bodies.iter().cloned().zip(1..).map(|(body, seq)| event(&job, seq, body)).collect();
    b.events.append(&batch[..4], 0, job.retain_until).await.unwrap();
    assert_eq!(get(&b, &job.id).await.last_seq, 4, "[{}]", b.name);
    let stored = get(&b, &job.id).await;

    // Batches that break the rules write nothing, and say so with the stored job.
    let other = queued_job(&tenant("events"), T0 + 1);
    b.jobs.create(&other, None).await.unwrap();
    let mixed = [batch[4].clone(), event(&other, 6, EventBody::Percentage { percent: 1.0, message: None })];
    let gap = [batch[4].clone(), batch[6].clone()];
    let too_many: Vec<ProgressEvent> = (5..=5 + MAX_APPEND as u64)
        .map(|seq| event(&job, seq, EventBody::Log { level: "info".into(), message: format!("{seq}") }))
        .collect();
    for (name, bad, expected) in [
        ("mixed jobs", &mixed[..], 4),
        ("gap inside", &gap[..], 4),
        ("stale", &batch[2..6], 2),
        ("too many", &too_many[..], 4),
    ] {
        match b.events.append(bad, expected, job.retain_until).await {
            Err(StoreError::ConditionFailed { current: Some(current) }) => {
                assert_eq!(current.last_seq, 4, "[{}] {name}", b.name)
            }
            other => panic!("[{}] {name}: expected ConditionFailed with the job, got {other:?}", b.name),
        }
    }
    match b.events.append(&[], 4, job.retain_until).await {
        Err(StoreError::ConditionFailed { .. }) => {}
        other => panic!("[{}] empty batch: expected ConditionFailed, got {other:?}", b.name),
    }
    assert_eq!(get(&b, &job.id).await, stored, "[{}]", b.name);
    assert_eq!(get(&b, &other.id).await.last_seq, 0, "[{}]", b.name);

    // The rest in one go, then all of it reads back in order.
    b.events.append(&batch[4..], 4, job.retain_until).await.unwrap();
    assert_eq!(get(&b, &job.id).await.last_seq, batch.len() as u64, "[{}]", b.name);
    assert_eq!(read(&b, &job.id, 0, batch.len() as u64, 100).await, batch, "[{}]", b.name);
}

pub async fn case_update_keeps_last_seq(b: Backend) {
    let job = queued_job(&tenant("events"), T0);
    b.jobs.create(&job, None).await.unwrap();
    append_all(&b, &job, all_bodies()[..3].to_vec(), job.retain_until).await;

    let mut running = job.clone(); // last_seq 0 in the value written
    running.status = JobStatus::Running;
    running.updated_at = T0 + 5;
    b.jobs.update(&running, QUEUED_1).await.unwrap();
    let stored = get(&b, &job.id).await;
    assert_eq!((stored.status, stored.last_seq), (JobStatus::Running, 3), "[{}] update reset last_seq", b.name);

    // Appends go on from there.
    let next = event(&job, 4, EventBody::Percentage { percent: 50.0, message: None });
    b.events.append(std::slice::from_ref(&next), 3, job.retain_until).await.unwrap();
    assert_eq!(get(&b, &job.id).await.last_seq, 4, "[{}]", b.name);
    assert_eq!(seqs(&read(&b, &job.id, 0, 4, 10).await), [1, 2, 3, 4], "[{}]", b.name);
}

pub async fn case_append_condition_failures(b: Backend) {
    let job = queued_job(&tenant("events"), T0);
    b.jobs.create(&job, None).await.unwrap();
    let first = event(&job, 1, EventBody::Log { level: "info".into(), message: "first".into() });
    b.events.append(std::slice::from_ref(&first), 0, job.retain_until).await.unwrap();
    let stored = get(&b, &job.id).await;

    let stale = event(&job, 1, EventBody::Log { level: "info".into(), message: "stale".into() });
    match b.events.append(std::slice::from_ref(&stale), 0, job.retain_until).await {
        Err(StoreError::ConditionFailed { current: Some(current) }) => {
            assert_eq!(current.last_seq, 1, "[{}]", b.name);
            assert_eq!(*current, stored, "[{}]", b.name);
        }
        other => panic!("[{}] stale expected_last_seq: expected ConditionFailed with the job, got {other:?}", b.name),
    }
    let ahead = event(&job, 6, EventBody::Log { level: "info".into(), message: "ahead".into() });
    match b.events.append(std::slice::from_ref(&ahead), 5, job.retain_until).await {
        Err(StoreError::ConditionFailed { current: Some(current) }) => assert_eq!(current.last_seq, 1, "[{}]", b.name),
        other => panic!("[{}] expected_last_seq ahead: expected ConditionFailed, got {other:?}", b.name),
    }
    // `seq` must be `expected_last_seq + 1`.
    let gap = event(&job, 3, EventBody::Log { level: "info".into(), message: "gap".into() });
    match b.events.append(std::slice::from_ref(&gap), 1, job.retain_until).await {
        Err(StoreError::ConditionFailed { current: Some(current) }) => assert_eq!(current.last_seq, 1, "[{}]", b.name),
        other => panic!("[{}] seq != expected + 1: expected ConditionFailed, got {other:?}", b.name),
    }
    // Nothing of the failed appends was written.
    assert_eq!(get(&b, &job.id).await, stored, "[{}]", b.name);
    assert_eq!(read(&b, &job.id, 0, 10, 100).await, vec![first], "[{}]", b.name);

    // A missing job: no job, no event.
    let missing = queued_job(&tenant("events"), T0 + 1);
    let orphan = event(&missing, 1, EventBody::Status { status: JobStatus::Running, attempt: 1 });
    match b.events.append(std::slice::from_ref(&orphan), 0, missing.retain_until).await {
        Err(StoreError::ConditionFailed { current: None }) => {}
        other => panic!("[{}] missing job: expected ConditionFailed without a job, got {other:?}", b.name),
    }
    assert_eq!(b.jobs.get(&missing.id).await.unwrap(), None, "[{}] append created a job", b.name);
    assert!(read(&b, &missing.id, 0, 1, 10).await.is_empty(), "[{}] orphan event stored", b.name);
}

pub async fn case_concurrent_appends_one_wins(b: Backend) {
    let t = tenant("events-race");
    let mut moto_skips = 0;
    for round in 0..5 {
        let job = queued_job(&t, T0 + round);
        b.jobs.create(&job, None).await.unwrap();
        let a = event(&job, 1, EventBody::Log { level: "info".into(), message: "from a".into() });
        let c = event(&job, 1, EventBody::Log { level: "info".into(), message: "from c".into() });
        let (ra, rc) = tokio::join!(
            b.events.append(std::slice::from_ref(&a), 0, job.retain_until),
            b.events.append(std::slice::from_ref(&c), 0, job.retain_until)
        );
        // See the moto note below: its unisolated transactions can leave an event stored
        // while the job still says 0, which the adapter rightly reports as Corrupt.
        if b.name == "aws" && [&ra, &rc].iter().any(|r| matches!(r, Err(StoreError::Corrupt(_)))) {
            moto_skips += 1;
            continue;
        }
        for r in [&ra, &rc] {
            if let Err(e) = r {
                assert!(matches!(e, StoreError::ConditionFailed { .. }), "[{}] unexpected error {e:?}", b.name);
            }
        }
        assert!(ra.is_ok() || rc.is_ok(), "[{}] neither append won: {ra:?} {rc:?}", b.name);
        let stored = read(&b, &job.id, 0, 5, 10).await;
        let last_seq = get(&b, &job.id).await.last_seq;
        let winner = match (&ra, &rc) {
            (Ok(()), Err(_)) => &a,
            (Err(_), Ok(())) => &c,
            _ => &a, // both Ok: only moto gets here (see below)
        };
        let consistent = ra.is_ok() != rc.is_ok() && last_seq == 1 && stored == [winner.clone()];
        if !consistent && b.name == "aws" {
            // moto cannot run this race: TransactWriteItems checks and writes without a
            // lock on a threaded server, and a cancelled transaction restores a deep copy
            // of the whole table taken when it began, which can undo a concurrent winner
            // (moto 5.2.5, `dynamodb/models/__init__.py` `transact_write_items`). Real
            // DynamoDB serialises transactions on an item; the embedded store holds a lock.
            moto_skips += 1;
            continue;
        }
        assert!(consistent, "[{}] round {round}: {ra:?} {rc:?}, last_seq {last_seq}, stored {stored:?}", b.name);
        let loser = if ra.is_ok() { rc } else { ra };
        match loser {
            Err(StoreError::ConditionFailed { current: Some(current) }) => {
                assert_eq!(current.last_seq, 1, "[{}]", b.name)
            }
            other => panic!("[{}] loser: expected ConditionFailed with the job, got {other:?}", b.name),
        }
    }
    if moto_skips > 0 {
        eprintln!("[{}] {moto_skips} of 5 rounds raced inside moto and were not judged", b.name);
    }
}

fn connection(id: &str, connected_at: Millis) -> Connection {
    Connection { id: id.into(), tenant: tenant("ws"), connected_at, expires_at: connected_at + 7_200_000 }
}

async fn subscribers(b: &Backend, job: &JobId) -> Vec<String> {
    let mut ids = b.connections.subscribers(job).await.unwrap_or_else(|e| panic!("[{}] subscribers: {e}", b.name));
    ids.sort();
    ids
}

fn job_id(n: u64) -> JobId {
    JobId::generate(T0 + n)
}

pub async fn case_connection_round_trip(b: Backend) {
    // API Gateway ids look like base64 (`L0SM9cOFvHcCIhw=`); include the odd characters.
    let c = connection("L0SM9cOFvHcCIhw=", T0);
    b.connections.put(&c).await.unwrap();
    assert_eq!(b.connections.get(&c.id).await.unwrap(), Some(c.clone()), "[{}]", b.name);
    assert_eq!(b.connections.get("nope+/=").await.unwrap(), None, "[{}]", b.name);
    assert_eq!(b.connections.get("").await.unwrap(), None, "[{}]", b.name);

    // Put replaces the record, and keeps the connection's subscriptions.
    let job = job_id(1);
    b.connections.subscribe(&c.id, &job).await.unwrap();
    let replaced = Connection { tenant: tenant("ws-2"), connected_at: T0 + 1, expires_at: T0 + 99, ..c.clone() };
    b.connections.put(&replaced).await.unwrap();
    assert_eq!(b.connections.get(&c.id).await.unwrap(), Some(replaced), "[{}]", b.name);
    assert_eq!(subscribers(&b, &job).await, vec![c.id.clone()], "[{}]", b.name);
    assert_eq!(b.connections.delete(&c.id).await.unwrap(), [job], "[{}]", b.name);
}

pub async fn case_subscriptions(b: Backend) {
    let (c1, c2) = (connection("conn-1=", T0), connection("conn-2=", T0 + 1));
    b.connections.put(&c1).await.unwrap();
    b.connections.put(&c2).await.unwrap();
    let (j1, j2, j3) = (job_id(1), job_id(2), job_id(3));

    b.connections.subscribe(&c1.id, &j1).await.unwrap();
    b.connections.subscribe(&c1.id, &j1).await.unwrap(); // idempotent
    b.connections.subscribe(&c2.id, &j1).await.unwrap();
    b.connections.subscribe(&c1.id, &j2).await.unwrap();
    assert_eq!(subscribers(&b, &j1).await, [c1.id.clone(), c2.id.clone()], "[{}]", b.name);
    assert_eq!(subscribers(&b, &j2).await, vec![c1.id.clone()], "[{}]", b.name);
    assert!(subscribers(&b, &j3).await.is_empty(), "[{}]", b.name);

    b.connections.unsubscribe(&c1.id, &j1).await.unwrap();
    b.connections.unsubscribe(&c1.id, &j1).await.unwrap(); // idempotent
    b.connections.unsubscribe(&c1.id, &j3).await.unwrap(); // never subscribed
    b.connections.unsubscribe("unknown", &j1).await.unwrap();
    assert_eq!(subscribers(&b, &j1).await, vec![c2.id.clone()], "[{}]", b.name);
    assert_eq!(subscribers(&b, &j2).await, vec![c1.id.clone()], "[{}]", b.name);
    b.connections.unsubscribe(&c2.id, &j1).await.unwrap();
    assert!(subscribers(&b, &j1).await.is_empty(), "[{}]", b.name);

    // Only a recorded connection can subscribe.
    match b.connections.subscribe("unknown", &j3).await {
        Err(StoreError::ConditionFailed { current: None }) => {}
        other => panic!("[{}] subscribe unknown connection: expected ConditionFailed, got {other:?}", b.name),
    }
    assert!(subscribers(&b, &j3).await.is_empty(), "[{}]", b.name);
    assert_eq!(b.connections.get("unknown").await.unwrap(), None, "[{}] subscribe created a connection", b.name);
}

pub async fn case_delete_connection(b: Backend) {
    let (c1, c2) = (connection("del-1", T0), connection("del-2", T0));
    b.connections.put(&c1).await.unwrap();
    b.connections.put(&c2).await.unwrap();
    let mut jobs = vec![job_id(1), job_id(2), job_id(3)];
    for j in &jobs {
        b.connections.subscribe(&c1.id, j).await.unwrap();
    }
    b.connections.subscribe(&c2.id, &jobs[0]).await.unwrap();
    b.connections.unsubscribe(&c1.id, &jobs[2]).await.unwrap();
    jobs.pop();

    let mut followed = b.connections.delete(&c1.id).await.unwrap();
    followed.sort();
    assert_eq!(followed, jobs, "[{}] delete returns the followed jobs", b.name);
    assert_eq!(b.connections.get(&c1.id).await.unwrap(), None, "[{}]", b.name);
    assert_eq!(subscribers(&b, &jobs[0]).await, vec![c2.id.clone()], "[{}]", b.name);
    assert!(subscribers(&b, &jobs[1]).await.is_empty(), "[{}]", b.name);
    assert_eq!(b.connections.get(&c2.id).await.unwrap(), Some(c2.clone()), "[{}]", b.name);

    // Deleting again, or an unknown connection, is fine and follows nothing.
    assert!(b.connections.delete(&c1.id).await.unwrap().is_empty(), "[{}]", b.name);
    assert!(b.connections.delete("never-seen").await.unwrap().is_empty(), "[{}]", b.name);
    // A deleted connection cannot subscribe any more.
    assert!(
        matches!(b.connections.subscribe(&c1.id, &jobs[0]).await, Err(StoreError::ConditionFailed { current: None })),
        "[{}]",
        b.name
    );
    assert_eq!(subscribers(&b, &jobs[0]).await, vec![c2.id.clone()], "[{}]", b.name);
}

pub async fn case_many_subscribers(b: Backend) {
    const CONNECTIONS: usize = 1000;
    // Bounded, so moto (one Python process, ~100-150 requests/s here) is not swamped.
    const PARALLEL: usize = 16;
    let job = job_id(1);
    let ids: Arc<Vec<String>> = Arc::new((0..CONNECTIONS).map(|i| format!("Zm9v{i:04}Ynl0ZQ=")).collect());
    // The first one alone, so the job's subscriber item exists before the parallel adds
    // (moto creates a missing item without a lock, and two first writes could race).
    b.connections.put(&connection(&ids[0], T0)).await.unwrap();
    b.connections.subscribe(&ids[0], &job).await.unwrap();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..PARALLEL {
        let (b, ids) = (b.clone(), ids.clone());
        workers.spawn(async move {
            for id in ids.iter().skip(1).skip(w).step_by(PARALLEL) {
                b.connections.put(&connection(id, T0)).await.unwrap();
                b.connections.subscribe(id, &job).await.unwrap();
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let mut expected = ids.to_vec();
    expected.sort();
    assert_eq!(subscribers(&b, &job).await, expected, "[{}]", b.name);
    // And one more connection is gone from the list once deleted.
    assert_eq!(b.connections.delete(&ids[500]).await.unwrap(), [job], "[{}]", b.name);
    assert_eq!(subscribers(&b, &job).await.len(), CONNECTIONS - 1, "[{}]", b.name);
}

/// A job's end and its final events in one write: all or nothing, conditioned on the
/// status, the attempt and `last_seq` together.
pub async fn case_update_with_events(b: Backend) {
    use ferry_core::ports::Expected;
    let t = crate::support::tenant("final");
    let job = crate::support::queued_job(&t, crate::support::T0);
    b.jobs.create(&job, None).await.unwrap();
    let event = |seq: u64, body: EventBody| ProgressEvent { job_id: job.id, seq, time: 5, body };
    b.events
        .append(&[event(1, EventBody::Log { level: "info".into(), message: "hi".into() })], 0, u64::MAX / 2)
        .await
        .unwrap();
    let mut done = job.clone();
    done.status = JobStatus::Cancelled;
    done.finished_at = Some(9);
    let finals = [
        event(2, EventBody::inline_result(serde_json::json!({"n": 1}))),
        event(3, EventBody::Status { status: JobStatus::Cancelled, attempt: 1 }),
    ];
    let queued = Expected { status: JobStatus::Queued, attempt: 1 };
    // A stale last_seq: nothing written, the stored job comes back.
    let stale = [event(1, finals[0].body.clone()), event(2, finals[1].body.clone())];
    match b.jobs.update_with_events(&done, queued, 0, &stale, u64::MAX / 2).await {
        Err(StoreError::ConditionFailed { current: Some(c) }) => assert_eq!(c.last_seq, 1, "[{}]", b.name),
        other => panic!("[{}] {other:?}", b.name),
    }
    // The wrong status: nothing written.
    let running = Expected { status: JobStatus::Running, attempt: 1 };
    let e = b.jobs.update_with_events(&done, running, 1, &finals, u64::MAX / 2).await;
    assert!(matches!(e, Err(StoreError::ConditionFailed { .. })), "[{}] {e:?}", b.name);
    let got = b.jobs.get(&job.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.last_seq), (JobStatus::Queued, 1), "[{}]", b.name);
    assert_eq!(b.events.read(&job.id, 0, 3, 10).await.unwrap().len(), 1, "[{}]", b.name);
    // All of it.
    b.jobs.update_with_events(&done, queued, 1, &finals, u64::MAX / 2).await.unwrap();
    let got = b.jobs.get(&job.id).await.unwrap().unwrap();
    assert_eq!((got.status, got.last_seq, got.finished_at), (JobStatus::Cancelled, 3, Some(9)), "[{}]", b.name);
    let stored = b.events.read(&job.id, 1, got.last_seq, 10).await.unwrap();
    assert_eq!(stored, finals.to_vec(), "[{}]", b.name);
}

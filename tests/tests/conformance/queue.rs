//! Work queue cases: SQS semantics (at-least-once, visibility timeouts, long polling,
//! redrive), in real time: moto works in whole seconds, so the timeouts here are 1 or 2 s.
//!
//! Where SQS, moto and the embedded queue legitimately differ, a case asserts what the
//! port promises on every backend and checks the embedded queue's stricter behaviour
//! separately, with the reason next to it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ferry_core::JobId;
use ferry_core::ports::{Delivery, QueueDepth, QueueError};
use ferry_tests::backends::{Backend, MAX_RECEIVE_COUNT};

use crate::support::{message, tenant};

const SEC: Duration = Duration::from_secs(1);
/// A visibility timeout that must not lapse between two consecutive calls, even on a
/// loaded machine, yet lapses soon enough to wait for.
const SHORT: Duration = Duration::from_secs(2);
/// Long enough that nothing reappears during a case.
const LONG: Duration = Duration::from_secs(60);
/// Generous long-poll for receives that must find something.
const WAIT: Duration = Duration::from_secs(5);

fn depth(visible: u64, in_flight: u64) -> QueueDepth {
    QueueDepth { visible, in_flight }
}

/// Receives exactly one delivery (waiting up to [`WAIT`]).
async fn receive_one(b: &Backend, visibility: Duration) -> Delivery {
    let mut got = b.queue.receive(1, WAIT, visibility).await.expect("receive");
    assert_eq!(got.len(), 1, "[{}] expected one delivery, got {got:?}", b.name);
    got.remove(0)
}

async fn assert_empty(b: &Backend, wait: Duration) {
    let got = b.queue.receive(10, wait, LONG).await.expect("receive");
    assert!(got.is_empty(), "[{}] expected no delivery, got {got:?}", b.name);
}

pub async fn case_round_trip(b: Backend) {
    let t = tenant("queue-rt");
    let full = message(&t, 7);
    b.queue.send(&full).await.unwrap();
    let d = receive_one(&b, LONG).await;
    assert_eq!(d.message, full, "[{}]", b.name);
    assert_eq!(d.receive_count, 1, "[{}]", b.name);
    assert!(!d.receipt.is_empty(), "[{}]", b.name);

    // Empty model and trace id (the SQS adapter leaves such attributes out) come back empty.
    let mut bare = message(&t, 8);
    bare.model.clear();
    bare.trace_id.clear();
    bare.attempt = u32::MAX;
    b.queue.send(&bare).await.unwrap();
    assert_eq!(receive_one(&b, LONG).await.message, bare, "[{}]", b.name);
}

pub async fn case_receive_empty_waits(b: Backend) {
    let start = Instant::now();
    assert_empty(&b, SEC).await;
    let waited = start.elapsed();
    // Long polling waits out `wait` (moto checks about once a second, hence the slack).
    assert!(waited >= Duration::from_millis(900), "[{}] returned after {waited:?}", b.name);
    assert!(waited < Duration::from_secs(5), "[{}] returned after {waited:?}", b.name);

    let start = Instant::now();
    assert_empty(&b, Duration::ZERO).await;
    assert!(start.elapsed() < Duration::from_millis(900), "[{}] short poll waited", b.name);
}

pub async fn case_long_poll_wakes_on_send(b: Backend) {
    let sent = message(&tenant("queue-wake"), 1);
    let queue = b.queue.clone();
    let to_send = sent.clone();
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        queue.send(&to_send).await.unwrap();
    });
    let start = Instant::now();
    let got = b.queue.receive(10, Duration::from_secs(15), LONG).await.unwrap();
    let waited = start.elapsed();
    sender.await.unwrap();
    assert_eq!(got.iter().map(|d| &d.message).collect::<Vec<_>>(), vec![&sent], "[{}]", b.name);
    assert!(waited < Duration::from_secs(5), "[{}] woke only after {waited:?}", b.name);
}

pub async fn case_visibility_expiry_redelivers(b: Backend) {
    let sent = message(&tenant("queue-vis"), 2);
    b.queue.send(&sent).await.unwrap();
    let first = receive_one(&b, SHORT).await;
    assert_eq!(first.receive_count, 1, "[{}]", b.name);
    assert_empty(&b, Duration::ZERO).await;

    // After the visibility timeout the message comes again, with a new receipt.
    let second = receive_one(&b, LONG).await;
    assert_eq!(second.message, sent, "[{}]", b.name);
    assert_eq!(second.receive_count, 2, "[{}]", b.name);
    assert_ne!(second.receipt, first.receipt, "[{}] receipt reused", b.name);

    if b.name == "embedded" {
        // A stale receipt is refused while the message is out under a newer one. Not
        // asserted on AWS: moto honours every receipt a message ever had (it would delete
        // the message here), and real SQS answers success without deleting.
        assert!(matches!(b.queue.delete(&first.receipt).await, Err(QueueError::InvalidReceipt)));
        assert!(matches!(b.queue.set_visibility(&first.receipt, LONG).await, Err(QueueError::InvalidReceipt)));
        assert_eq!(b.queue.depth().await.unwrap(), depth(0, 1));
    }
    b.queue.delete(&second.receipt).await.unwrap();

    // Receipts of a deleted message: the embedded queue says InvalidReceipt, as the port
    // documents; moto (like SQS, for a while) accepts deleting a deleted message again.
    for receipt in [&first.receipt, &second.receipt] {
        match b.queue.delete(receipt).await {
            Err(QueueError::InvalidReceipt) => {}
            Ok(()) if b.name == "aws" => {}
            other => panic!("[{}] delete with a deleted message's receipt: {other:?}", b.name),
        }
    }
    assert_empty(&b, Duration::from_secs(2)).await;
    assert_eq!(b.queue.depth().await.unwrap(), depth(0, 0), "[{}]", b.name);
}

pub async fn case_set_visibility_zero(b: Backend) {
    let sent = message(&tenant("queue-setvis"), 3);
    b.queue.send(&sent).await.unwrap();
    let first = receive_one(&b, LONG).await;
    assert_empty(&b, Duration::ZERO).await;

    b.queue.set_visibility(&first.receipt, Duration::ZERO).await.unwrap();
    let start = Instant::now();
    let second = receive_one(&b, SHORT).await;
    assert!(start.elapsed() < Duration::from_secs(2), "[{}] not visible at once", b.name);
    assert_eq!((&second.message, second.receive_count), (&sent, 2), "[{}]", b.name);

    // Extending keeps it hidden past the 2 s the receive asked for.
    b.queue.set_visibility(&second.receipt, LONG).await.unwrap();
    assert_empty(&b, Duration::from_secs(3)).await;
    assert_eq!(b.queue.depth().await.unwrap(), depth(0, 1), "[{}]", b.name);
}

pub async fn case_delete_is_final(b: Backend) {
    b.queue.send(&message(&tenant("queue-del"), 4)).await.unwrap();
    let d = receive_one(&b, SEC).await;
    b.queue.delete(&d.receipt).await.unwrap();
    // Well past the 1 s visibility timeout: a deleted message never comes back.
    assert_empty(&b, Duration::from_secs(3)).await;
    assert_eq!(b.queue.depth().await.unwrap(), depth(0, 0), "[{}]", b.name);
}

pub async fn case_depth_counts(b: Backend) {
    // SQS's counts are approximate; moto's and the embedded queue's are exact.
    assert_eq!(b.queue.depth().await.unwrap(), depth(0, 0), "[{}]", b.name);
    let t = tenant("queue-depth");
    for n in 0..3 {
        b.queue.send(&message(&t, n)).await.unwrap();
    }
    assert_eq!(b.queue.depth().await.unwrap(), depth(3, 0), "[{}]", b.name);
    let got = b.queue.receive(2, WAIT, LONG).await.unwrap();
    assert_eq!(got.len(), 2, "[{}]", b.name);
    assert_eq!(b.queue.depth().await.unwrap(), depth(1, 2), "[{}]", b.name);
    b.queue.delete(&got[0].receipt).await.unwrap();
    assert_eq!(b.queue.depth().await.unwrap(), depth(1, 1), "[{}]", b.name);
    b.queue.set_visibility(&got[1].receipt, Duration::ZERO).await.unwrap();
    assert_eq!(b.queue.depth().await.unwrap(), depth(2, 0), "[{}]", b.name);
}

pub async fn case_dead_letter_after_max_receives(b: Backend) {
    let sent = message(&tenant("queue-dlq"), 5);
    b.queue.send(&sent).await.unwrap();
    // Visibility 0: each receive leaves the message visible for the next one.
    for n in 1..=MAX_RECEIVE_COUNT {
        let d = receive_one(&b, Duration::ZERO).await;
        assert_eq!((&d.message, d.receive_count), (&sent, n), "[{}]", b.name);
    }
    // The next receive moves it to the dead-letter queue instead of delivering it.
    assert_empty(&b, Duration::from_secs(2)).await;
    assert_eq!(b.queue.depth().await.unwrap(), depth(0, 0), "[{}]", b.name);

    let dead = b.dlq.receive(10, WAIT, LONG).await.unwrap();
    assert_eq!(dead.iter().map(|d| &d.message).collect::<Vec<_>>(), vec![&sent], "[{}]", b.name);
    // The count is not compared: moto carries the source queue's count over (4), the
    // embedded queue starts the dead letter afresh (1).
    assert!(dead[0].receive_count >= 1, "[{}]", b.name);
    assert_eq!(b.dlq.depth().await.unwrap(), depth(0, 1), "[{}]", b.name);
}

pub async fn case_batch_receive(b: Backend) {
    let t = tenant("queue-batch");
    let mut sent = HashSet::new();
    for n in 0..15 {
        let m = message(&t, n);
        sent.insert(m.job_id);
        b.queue.send(&m).await.unwrap();
    }
    // Real SQS may return fewer than asked for even with messages waiting; moto and the
    // embedded queue fill the batch, which is what this checks.
    let first = b.queue.receive(10, WAIT, LONG).await.unwrap();
    assert_eq!(first.len(), 10, "[{}]", b.name);
    // More than 10 is capped at 10; only 5 remain.
    let rest = b.queue.receive(50, WAIT, LONG).await.unwrap();
    assert_eq!(rest.len(), 5, "[{}]", b.name);

    let all: Vec<&Delivery> = first.iter().chain(&rest).collect();
    let ids: HashSet<JobId> = all.iter().map(|d| d.message.job_id).collect();
    assert_eq!(ids, sent, "[{}] lost or duplicated messages", b.name);
    let receipts: HashSet<&str> = all.iter().map(|d| d.receipt.as_str()).collect();
    assert_eq!(receipts.len(), 15, "[{}] receipts not unique", b.name);
    assert!(all.iter().all(|d| d.receive_count == 1), "[{}]", b.name);
    assert_eq!(b.queue.depth().await.unwrap(), depth(0, 15), "[{}]", b.name);
}

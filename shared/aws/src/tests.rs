//! Tests of the adapters against moto (see [`moto`] for the harness); each test uses its
//! own table and queue names so they run in parallel on one server. Without
//! `moto_server` on PATH they print a note and pass, so a machine without Python still
//! builds and tests.
//!
//! The cross-backend conformance suite lives in `tests/`; these only check what is
//! specific to DynamoDB and SQS (conditions, transactions, paging, receipts).

mod moto;

use std::time::Duration;

use ferry_core::ports::{
    ApiKeyRecord, ApiKeyStore, Created, Expected, IdempotencyRecord, JobStore, ListQuery, QueueError, StoreError,
    WorkMessage, WorkQueue,
};
use ferry_core::{Job, JobId, JobStatus, Task, TenantId};

use crate::{bootstrap, sdk_config_for_endpoint};
use moto::{backend, moto};

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

fn job(tenant_name: &str, created_at: u64) -> Job {
    Job {
        id: JobId::generate(created_at),
        tenant: tenant(tenant_name),
        model: "tiny-gpt".into(),
        task: Task::TextGeneration,
        input: serde_json::json!({"prompt": "hello \"world\" ü"}),
        params: serde_json::json!({"max_new_tokens": 8}),
        timeout_s: 60,
        max_attempts: 3,
        created_at,
        expires_at: created_at + 600_000,
        idempotency_key: None,
        status: JobStatus::Queued,
        attempt: 1,
        started_at: None,
        finished_at: None,
        updated_at: created_at,
        cancel_requested_at: None,
        executor_id: None,
        lease_until: None,
        output: None,
        error: None,
        retain_until: created_at + 86_400_000,
        last_seq: 0,
    }
}

const T0: u64 = 1_750_000_000_000;

#[tokio::test]
async fn bootstrap_is_idempotent() {
    let Some((_, urls)) = backend("boot").await else {
        return;
    };
    let sdk = sdk_config_for_endpoint(moto().unwrap()).await;
    let name = urls.queue_url.rsplit('/').next().unwrap().to_string();
    let again = bootstrap(&sdk, &name, &name).await.expect("second bootstrap");
    assert_eq!(again, urls);
    assert!(urls.dlq_url.ends_with("-dlq"));
}

#[tokio::test]
async fn create_get_update() {
    let Some((b, _)) = backend("crud").await else {
        return;
    };
    let mut j = job("acme", T0);
    assert_eq!(b.jobs.create(&j, None).await.unwrap(), Created::New);
    assert!(matches!(b.jobs.create(&j, None).await, Err(StoreError::AlreadyExists)));
    assert_eq!(b.jobs.get(&j.id).await.unwrap().as_ref(), Some(&j));
    assert_eq!(b.jobs.get(&JobId::generate(T0)).await.unwrap(), None);

    // queued -> running sets optional fields...
    let queued = Expected { status: JobStatus::Queued, attempt: 1 };
    j.status = JobStatus::Running;
    j.started_at = Some(T0 + 5);
    j.executor_id = Some("ex-1".into());
    j.lease_until = Some(T0 + 30_000);
    j.updated_at = T0 + 5;
    b.jobs.update(&j, queued).await.unwrap();
    assert_eq!(b.jobs.get(&j.id).await.unwrap().as_ref(), Some(&j));

    // ...and running -> succeeded removes the lease.
    let running = Expected { status: JobStatus::Running, attempt: 1 };
    let mut done = j.clone();
    done.status = JobStatus::Succeeded;
    done.finished_at = Some(T0 + 9);
    done.lease_until = None;
    done.output = Some(serde_json::json!({"text": "hi"}));
    b.jobs.update(&done, running).await.unwrap();
    assert_eq!(b.jobs.get(&j.id).await.unwrap().as_ref(), Some(&done));

    // A stale writer sees the stored job.
    match b.jobs.update(&j, running).await {
        Err(StoreError::ConditionFailed { current: Some(current) }) => assert_eq!(*current, done),
        other => panic!("expected ConditionFailed with current, got {other:?}"),
    }
    match b.jobs.update(&job("acme", T0), queued).await {
        Err(StoreError::ConditionFailed { current: None }) => {}
        other => panic!("expected ConditionFailed without current, got {other:?}"),
    }
}

#[tokio::test]
async fn idempotent_create() {
    let Some((b, _)) = backend("idem").await else {
        return;
    };
    let first = job("acme", T0);
    let record = |job: &Job, key: &str, created_at: u64| IdempotencyRecord {
        tenant: job.tenant.clone(),
        key: key.into(),
        request_hash: format!("hash-of-{}", job.id),
        job_id: job.id,
        created_at,
        expires_at: created_at + 1_000,
    };
    let rec = record(&first, "key with spaces/and#hash", T0);
    assert_eq!(b.jobs.create(&first, Some(&rec)).await.unwrap(), Created::New);

    // Same key, same tenant: nothing written, the binding comes back.
    let second = job("acme", T0 + 1);
    let dup = b.jobs.create(&second, Some(&record(&second, &rec.key, T0 + 1))).await.unwrap();
    assert_eq!(dup, Created::Duplicate(rec.clone()));
    assert_eq!(b.jobs.get(&second.id).await.unwrap(), None);

    // Same key, other tenant: independent.
    let other = job("globex", T0 + 2);
    let created = b.jobs.create(&other, Some(&record(&other, &rec.key, T0 + 2))).await.unwrap();
    assert_eq!(created, Created::New);

    // After expiry the key binds again.
    let later = job("acme", T0 + 5_000);
    let created = b.jobs.create(&later, Some(&record(&later, &rec.key, T0 + 5_000))).await.unwrap();
    assert_eq!(created, Created::New);

    // A job id clash is AlreadyExists, and the fresh key stays unbound.
    let clash = b.jobs.create(&first, Some(&record(&first, "fresh", T0 + 6_000))).await;
    assert!(matches!(clash, Err(StoreError::AlreadyExists)), "{clash:?}");
    let fresh = job("acme", T0 + 6_001);
    let created = b.jobs.create(&fresh, Some(&record(&fresh, "fresh", T0 + 6_001))).await.unwrap();
    assert_eq!(created, Created::New);
}

#[tokio::test]
async fn list_pages_newest_first_with_filter() {
    let Some((b, _)) = backend("list").await else {
        return;
    };
    let mut all = Vec::new();
    for i in 0..7 {
        let mut j = job("acme", T0 + i * 1000);
        if i % 2 == 1 {
            j.status = JobStatus::Running;
            j.attempt = 1;
        }
        b.jobs.create(&j, None).await.unwrap();
        all.push(j);
    }
    b.jobs.create(&job("globex", T0 + 500), None).await.unwrap();
    all.reverse(); // newest first

    let mut query = ListQuery { tenant: tenant("acme"), status: None, limit: 3, after: None };
    let mut seen = Vec::new();
    loop {
        let page = b.jobs.list(&query).await.unwrap();
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.iter().map(|j| j.id));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, all.iter().map(|j| j.id).collect::<Vec<_>>());

    // Filtered: the Limit-before-filter loop still fills pages.
    let query = ListQuery { tenant: tenant("acme"), status: Some(JobStatus::Queued), limit: 2, after: None };
    let page = b.jobs.list(&query).await.unwrap();
    let queued: Vec<_> = all.iter().filter(|j| j.status == JobStatus::Queued).map(|j| j.id).collect();
    assert_eq!(page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), queued[..2]);
    assert_eq!(page.next, Some(queued[1]));
    let rest = b.jobs.list(&ListQuery { after: page.next, limit: 10, ..query }).await.unwrap();
    assert_eq!(rest.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), queued[2..]);
    assert_eq!(rest.next, None);

    let none = ListQuery { tenant: tenant("initech"), status: None, limit: 5, after: None };
    assert!(b.jobs.list(&none).await.unwrap().jobs.is_empty());
}

#[tokio::test]
async fn queue_round_trip() {
    let Some((b, _)) = backend("queue").await else {
        return;
    };
    let q = &b.queue;
    let msg = |i: u64, trace: &str| WorkMessage {
        job_id: JobId::generate(T0 + i),
        attempt: 1,
        tenant: tenant("acme"),
        model: "tiny-gpt".into(),
        trace_id: trace.into(),
    };
    let (m1, m2) = (msg(1, "trace-1"), msg(2, ""));
    q.send(&m1).await.unwrap();
    q.send(&m2).await.unwrap();

    let got = q.receive(10, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    let mut messages: Vec<_> = got.iter().map(|d| d.message.clone()).collect();
    messages.sort_by_key(|m| m.job_id);
    assert_eq!(messages, vec![m1.clone(), m2.clone()]);
    assert!(got.iter().all(|d| d.receive_count == 1));
    let depth = q.depth().await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (0, 2));

    // Zero visibility hands a message straight back, with its count raised.
    let first = &got[0];
    q.set_visibility(&first.receipt, Duration::ZERO).await.unwrap();
    let again = q.receive(10, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message, first.message);
    assert_eq!(again[0].receive_count, 2);

    q.delete(&again[0].receipt).await.unwrap();
    q.delete(&got[1].receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), Default::default());

    for bad in ["not-a-receipt", ""] {
        let deleted = q.delete(bad).await;
        assert!(matches!(deleted, Err(QueueError::InvalidReceipt)), "{bad:?}: {deleted:?}");
        let changed = q.set_visibility(bad, Duration::from_secs(5)).await;
        assert!(matches!(changed, Err(QueueError::InvalidReceipt)), "{bad:?}: {changed:?}");
    }
}

#[tokio::test]
async fn api_keys() {
    let Some((b, _)) = backend("keys").await else {
        return;
    };
    let rec = ApiKeyRecord { key_hash: "ab".repeat(32), tenant: tenant("acme"), created_at: T0 };
    assert_eq!(b.keys.lookup(&rec.key_hash).await.unwrap(), None);
    b.keys.put(&rec).await.unwrap();
    assert_eq!(b.keys.lookup(&rec.key_hash).await.unwrap(), Some(rec.clone()));
    let moved = ApiKeyRecord { tenant: tenant("globex"), ..rec.clone() };
    b.keys.put(&moved).await.unwrap();
    assert_eq!(b.keys.lookup(&rec.key_hash).await.unwrap(), Some(moved));
    // Keys and jobs share the table but never show up in a tenant's list.
    let query = ListQuery { tenant: tenant("globex"), status: None, limit: 10, after: None };
    assert!(b.jobs.list(&query).await.unwrap().jobs.is_empty());
}

//! `JobService::submit` over the real stores and queues of both backends: what an
//! `Idempotency-Key` returns when the job it named was never queued.

use std::time::Duration;

use ferry_core::catalog::Catalog;
use ferry_core::job::{ENQUEUE_FAILED, JobStatus, TenantId};
use ferry_core::ports::ListQuery;
use ferry_core::service::{ServiceError, Submitted};
use ferry_core::submit::{ValidSubmit, parse_submit};
use ferry_tests::backends::Backend;

ferry_tests::on_both!(a_key_whose_job_was_never_queued_runs_the_retry);

const BODY: &[u8] = br#"{"model":"tiny-llama","input":{"prompt":"hello"},"params":{"max_new_tokens":4}}"#;
const OTHER_BODY: &[u8] = br#"{"model":"tiny-llama","input":{"prompt":"hello"},"params":{"max_new_tokens":5}}"#;

/// The 503 a failed send answers asks the client to retry with the same key; the retry
/// must run a job, not hand back the failed one. Once it has, the key is bound as usual.
async fn a_key_whose_job_was_never_queued_runs_the_retry(b: Backend) {
    let (b, sends) = b.with_failing_queue();
    let root = b.root(Catalog::demo());
    let service = root.service();
    let tenant = TenantId::new("acme").unwrap();
    let valid = |body: &[u8]| -> ValidSubmit { parse_submit(body, &root.catalog, &root.config).unwrap() };
    let key = || Some("retry-me".to_string());

    sends.fail_sends(true);
    let err = service.submit(&tenant, valid(BODY), key(), "t1").await.unwrap_err();
    assert!(matches!(err, ServiceError::EnqueueFailed(_)), "[{}] {err:?}", b.name);
    let query = ListQuery { tenant: tenant.clone(), status: None, limit: 10, after: None };
    let failed = service.list(&query).await.unwrap().jobs;
    assert_eq!(failed.len(), 1, "[{}]", b.name);
    let failed = &failed[0];
    assert_eq!((failed.status, failed.error.as_ref().unwrap().kind.as_str()), (JobStatus::Failed, ENQUEUE_FAILED));
    assert!(failed.never_queued(), "[{}]", b.name);

    sends.fail_sends(false);
    let retried = match service.submit(&tenant, valid(BODY), key(), "t2").await.unwrap() {
        Submitted::New(job) => job,
        Submitted::Existing(job) => panic!("[{}] the retry got the job that was never queued: {job:?}", b.name),
    };
    assert_ne!(retried.id, failed.id, "[{}]", b.name);
    assert_eq!(retried.status, JobStatus::Queued, "[{}]", b.name);
    let got = b.queue.receive(10, Duration::from_millis(500), Duration::from_secs(60)).await.unwrap();
    let ids: Vec<_> = got.iter().map(|d| d.message.job_id).collect();
    assert_eq!(ids, vec![retried.id], "[{}] one message, for the retry", b.name);

    // From now on the key names the retry, as for any queued job.
    match service.submit(&tenant, valid(BODY), key(), "t3").await.unwrap() {
        Submitted::Existing(job) => assert_eq!(job.id, retried.id, "[{}]", b.name),
        Submitted::New(job) => panic!("[{}] a second job for one key: {job:?}", b.name),
    }
    let err = service.submit(&tenant, valid(OTHER_BODY), key(), "t4").await.unwrap_err();
    assert!(matches!(err, ServiceError::IdempotencyMismatch), "[{}] {err:?}", b.name);

    // The failed attempt stays in the history as it was; nothing else was written.
    let jobs = service.list(&query).await.unwrap().jobs;
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), vec![retried.id, failed.id], "[{}]", b.name);
    assert_eq!(&jobs[1], failed, "[{}]", b.name);
}

//! Builders for the values the cases store and send, and readers that check what the
//! store returns on the way.

use ferry_core::input::{JobInput, TextGenerationInput, TextGenerationParams};
use ferry_core::ports::{Expected, IdempotencyRecord, JobPage, ListQuery, WorkMessage};
use ferry_core::{Job, JobError, JobId, JobStatus, Millis, TenantId};
use ferry_tests::backends::Backend;
use serde_json::json;

/// A fixed, realistic epoch (mid-2025) so timestamps look like production ones.
pub const T0: Millis = 1_750_000_000_000;

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("valid tenant id")
}

/// A freshly created job: queued, attempt 1, every optional field unset.
pub fn queued_job(tenant: &TenantId, created_at: Millis) -> Job {
    Job {
        id: JobId::generate(created_at),
        tenant: tenant.clone(),
        model: "sentence-embedder".into(),
        input: JobInput::texts(["hello"]).into(),
        timeout_s: 300,
        max_attempts: 3,
        created_at,
        expires_at: created_at + 3_600_000,
        idempotency_key: None,
        webhook: None,
        status: JobStatus::Queued,
        attempt: 1,
        started_at: None,
        finished_at: None,
        updated_at: created_at,
        cancel_requested_at: None,
        executor_id: None,
        lease_until: None,
        output: None,
        output_object: None,
        error: None,
        retain_until: created_at + 7 * 86_400_000,
        last_seq: 0,
    }
}

/// Text that stresses a store's encoding: unicode (astral-plane characters, escapes,
/// quotes), control characters and a NUL.
pub const TRICKY_TEXT: &str = "Grüße, 世界! 🚀 \"quoted\" back\\slash\ttab\nnewline \u{0} nul \u{7f} é";

/// JSON that stresses a store's encoding: unicode (including astral-plane characters and
/// escapes), nesting, and numbers at the edges of what serde_json keeps exact.
pub fn tricky_json() -> serde_json::Value {
    json!({
        "prompt": TRICKY_TEXT,
        "nested": {"a": [1, [2, [3, {"deep": [true, false, null]}]]], "empty": {}, "list": []},
        "numbers": {
            "u64_max": u64::MAX,
            "i64_min": i64::MIN,
            "zero": 0,
            "neg": -42,
            "float": 0.1,
            "tiny": 1.0e-300,
            "huge": 1.7976931348623157e308,
            "fraction": 123_456_789.125,
        },
        "": "empty key",
        "ключ": "значение",
    })
}

/// A job with every optional field set, as a running job that was asked to cancel might be.
pub fn full_job(tenant: &TenantId, created_at: Millis) -> Job {
    Job {
        id: JobId::generate(created_at),
        tenant: tenant.clone(),
        model: "org/llama-3-8b-instruct".into(),
        input: JobInput::TextGeneration {
            input: TextGenerationInput::prompt(TRICKY_TEXT),
            params: TextGenerationParams {
                max_new_tokens: Some(512),
                temperature: Some(0.7),
                top_p: Some(0.95),
                seed: Some(u64::MAX),
                stop: Some(vec!["\n\n".into(), "</s>".into()]),
                ..TextGenerationParams::default()
            },
        }
        .into(),
        timeout_s: 86_400,
        max_attempts: 5,
        created_at,
        expires_at: created_at + 600_000,
        idempotency_key: Some("idem-ключ-🔑".into()),
        webhook: None,
        status: JobStatus::Cancelling,
        attempt: 2,
        started_at: Some(created_at + 1_000),
        finished_at: Some(created_at + 2_000),
        updated_at: created_at + 2_500,
        cancel_requested_at: Some(created_at + 1_500),
        executor_id: Some("executor-7/ü".into()),
        lease_until: Some(created_at + 61_000),
        output: Some(json!({"text": "partial ✓", "tokens": [1, 2, 3], "logprob": -0.125, "tricky": tricky_json()})),
        output_object: None,
        error: Some(JobError { kind: "model_error".into(), message: "CUDA out of memory: 🔥".into() }),
        retain_until: created_at + 30 * 86_400_000,
        last_seq: 17,
    }
}

pub fn idem(tenant: &TenantId, key: &str, job: &Job, created_at: Millis) -> IdempotencyRecord {
    IdempotencyRecord {
        tenant: tenant.clone(),
        key: key.into(),
        request_hash: format!("sha256-of-request-for-{}", job.id),
        job_id: job.id,
        created_at,
        expires_at: created_at + 86_400_000,
    }
}

pub fn message(tenant: &TenantId, n: u64) -> WorkMessage {
    WorkMessage {
        job_id: JobId::generate(T0 + n),
        attempt: 1 + (n % 3) as u32,
        tenant: tenant.clone(),
        model: format!("org/model-{n}"),
        trace_id: format!("4bf92f3577b34da6a3ce929d0e0e{n:04x}"),
    }
}

/// A job that must exist.
pub async fn get(b: &Backend, id: &JobId) -> Job {
    b.jobs.get(id).await.expect("get").unwrap_or_else(|| panic!("[{}] job {id} missing", b.name))
}

/// One page of a tenant's jobs.
pub async fn list(
    b: &Backend,
    tenant: &TenantId,
    status: Option<JobStatus>,
    limit: u32,
    after: Option<JobId>,
) -> JobPage {
    let query = ListQuery { tenant: tenant.clone(), status, limit, after };
    b.jobs.list(&query).await.expect("list")
}

/// Follows `next` to the end; checks each page's shape on the way.
pub async fn list_all(b: &Backend, tenant: &TenantId, status: Option<JobStatus>, limit: u32) -> Vec<Job> {
    let mut all = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let page = list(b, tenant, status, limit, after).await;
        assert!(page.jobs.len() <= limit as usize, "[{}] page over the limit", b.name);
        if let Some(next) = page.next {
            // `next` is the last job returned, so the following page starts right after it.
            assert_eq!(Some(next), page.jobs.last().map(|j| j.id), "[{}] next is not the last job", b.name);
        }
        all.extend(page.jobs);
        match page.next {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
    panic!("[{}] pagination did not end", b.name);
}

/// The ids, in order.
pub fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

/// Newest first, the order `list` promises.
pub fn sorted_desc(mut ids: Vec<JobId>) -> Vec<JobId> {
    ids.sort_by(|a, b| b.cmp(a));
    ids
}

/// The state of a job just created.
pub const QUEUED_1: Expected = Expected { status: JobStatus::Queued, attempt: 1 };

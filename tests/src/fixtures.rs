//! Jobs for tests that need one in a store without going through the API.

use ferry_core::input::JobInput;
use ferry_core::job::{Job, JobId, JobStatus, TenantId};
use ferry_core::ports::{Clock, SystemClock};

/// A `tiny-llama` job of `tenant`, created now, in `status` (running jobs get a start,
/// an executor and a lease), kept for a year.
pub fn job(tenant: &str, status: JobStatus) -> Job {
    let now = SystemClock.now();
    let running = matches!(status, JobStatus::Running | JobStatus::Cancelling);
    Job {
        id: JobId::generate(now),
        tenant: TenantId::new(tenant).expect("a valid tenant id"),
        model: "tiny-llama".into(),
        input: JobInput::prompt("made by a test").into(),
        timeout_s: 600,
        max_attempts: 3,
        created_at: now,
        expires_at: now + 3_600_000,
        idempotency_key: None,
        webhook: None,
        status,
        attempt: 1,
        started_at: running.then_some(now),
        finished_at: None,
        updated_at: now,
        cancel_requested_at: None,
        executor_id: running.then(|| "test-executor".to_string()),
        lease_until: running.then_some(now + 60_000),
        output: None,
        output_object: None,
        error: None,
        retain_until: now + 365 * 86_400_000,
        last_seq: 0,
    }
}

/// The same, with a fixed id (for events that name a job).
pub fn job_with_id(id: &str, tenant: &str, status: JobStatus) -> Job {
    Job { id: id.parse().expect("a ULID"), ..job(tenant, status) }
}

/// A text-generation input of `prompt`, at most `max_new_tokens` tokens (inline).
pub fn generate(prompt: &str, max_new_tokens: u32) -> ferry_core::input::Input {
    let params = ferry_core::input::TextGenerationParams { max_new_tokens: Some(max_new_tokens), ..Default::default() };
    JobInput::TextGeneration { input: ferry_core::input::TextGenerationInput::prompt(prompt), params }.into()
}

/// A DynamoDB item as a stream record's image (DynamoDB JSON): how tests on moto, which runs
/// no streams, build the records the dispatcher Lambda would receive.
pub fn stream_image(
    item: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
) -> serde_json::Value {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut out = serde_json::Map::new();
    for (k, v) in item {
        let v = match v {
            AttributeValue::S(s) => serde_json::json!({"S": s}),
            AttributeValue::N(n) => serde_json::json!({"N": n}),
            other => panic!("{k}: unexpected {other:?}"),
        };
        out.insert(k.clone(), v);
    }
    serde_json::Value::Object(out)
}

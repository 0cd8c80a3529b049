//! What clients see: the job view (the stable JSON shape of a job) and the list and model
//! envelopes. Timestamps are RFC 3339 strings; durations are integer milliseconds.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::catalog::ModelSpec;
use crate::job::{Job, JobError, JobId, JobStatus, Millis, Task, rfc3339};

/// A job as the API shows it. Every key is always present (null when unknown), so clients
/// can rely on the shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    #[schema(value_type = String, example = "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B")]
    pub id: JobId,
    pub model: String,
    pub task: Task,
    pub status: JobStatus,
    /// 1 for the first try; grows when a lost executor's job is retried.
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_s: u64,
    #[schema(value_type = Object)]
    pub input: Value,
    #[schema(value_type = Object)]
    pub params: Value,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// A queued job not started by then expires.
    pub expires_at: String,
    pub cancel_requested_at: Option<String>,
    /// Time queued before starting (so far, if still queued).
    pub queue_delay_ms: u64,
    /// Time executing (so far, if still running); null if it never started.
    pub execution_ms: Option<u64>,
    /// The sequence number of the latest progress event.
    pub last_seq: u64,
    /// The input's size in bytes when it is stored as an object (then `input` is null).
    pub input_bytes: Option<u64>,
    /// The output (or partial output) when it is small enough to be held inline; null
    /// when there is none yet, or when it is stored as an object (see `output_url`).
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// A URL that fetches a stored output without credentials (presigned on AWS), until
    /// `output_expires_at`; read the job again for a fresh one. `GET /v1/jobs/{id}/output`
    /// answers for every output, inline or stored.
    pub output_url: Option<String>,
    /// The output's size in bytes (serialized JSON), inline or stored.
    pub output_bytes: Option<u64>,
    /// When `output_url` stops working.
    pub output_expires_at: Option<String>,
    pub error: Option<JobError>,
    pub idempotency_key: Option<String>,
    /// Where the job's events are POSTed (`GET /v1/jobs/{id}/webhooks` shows the deliveries).
    pub webhook: Option<crate::webhook::WebhookRequest>,
    /// Where the job stands: waiting for capacity, an executor launching, the model
    /// loading, running. Null for finished jobs and in list pages.
    pub queue_state: Option<crate::queue_state::QueueState>,
}

impl JobView {
    /// The view with its queue state filled in.
    pub fn with_queue_state(mut self, state: Option<crate::queue_state::QueueState>) -> Self {
        self.queue_state = state;
        self
    }

    pub fn new(job: &Job, now: Millis) -> Self {
        JobView {
            id: job.id,
            model: job.model.clone(),
            task: job.task(),
            status: job.status,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            timeout_s: job.timeout_s,
            input: job.input.input_json(),
            params: job.input.params_json(),
            created_at: rfc3339(job.created_at),
            started_at: job.started_at.map(rfc3339),
            finished_at: job.finished_at.map(rfc3339),
            expires_at: rfc3339(job.expires_at),
            cancel_requested_at: job.cancel_requested_at.map(rfc3339),
            queue_delay_ms: job.queue_delay_ms(now),
            execution_ms: job.execution_ms(now),
            last_seq: job.last_seq,
            input_bytes: job.input.object().map(|o| o.bytes),
            output: job.output.clone(),
            output_url: None,
            output_bytes: match (&job.output, &job.output_object) {
                (_, Some(object)) => Some(object.bytes),
                (Some(v), None) => Some(serde_json::to_vec(v).map(|b| b.len() as u64).unwrap_or(0)),
                (None, None) => None,
            },
            output_expires_at: None,
            error: job.error.clone(),
            idempotency_key: job.idempotency_key.clone(),
            webhook: job.webhook.clone(),
            queue_state: None,
        }
    }
}

/// `GET /v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next (older) page; null at the end.
    pub next_cursor: Option<String>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelView {
    pub id: String,
    pub task: Task,
    pub pool: String,
    pub architecture: Option<String>,
    pub dtype: Option<String>,
    pub device: Option<String>,
    /// A handler's input schema (JSON Schema 2020-12), which submits are checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<serde_json::Value>,
}

impl From<&ModelSpec> for ModelView {
    fn from(m: &ModelSpec) -> Self {
        ModelView {
            id: m.id.clone(),
            task: m.task,
            pool: m.pool.clone(),
            architecture: m.architecture.clone(),
            dtype: m.dtype.clone(),
            device: m.device.clone(),
            input_schema: m.input_schema.clone(),
        }
    }
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelView>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    pub version: String,
}

//! Progress events: what executors report about a running job, stored for replay and
//! pushed to subscribed WebSocket connections. Each event has a gap-free `seq` per job,
//! starting at 1, taken with a conditional write on the job's `last_seq` so two writers
//! can never take the same number; clients resume after a drop from the last `seq` they saw.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::job::{JobError, JobId, JobStatus, Millis};

/// One stored event. Serialized flat: `{"job_id", "seq", "time", "type", ...body fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressEvent {
    #[schema(value_type = String)]
    pub job_id: JobId,
    /// 1, 2, 3, ... per job, without gaps.
    pub seq: u64,
    /// Milliseconds since the Unix epoch when the event was stored.
    pub time: Millis,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened. The serde tag `type` names the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// The job entered a new state.
    Status { status: JobStatus, attempt: u32 },
    /// A log line from the executor (`level`: debug, info, warn, error).
    Log { level: String, message: String },
    /// One generated token (TGI's shape): its position, id, text and log-probability.
    Token { index: u32, id: u32, text: String, logprob: Option<f32> },
    /// Work done so far, 0 to 100, with an optional note (loading a model, a batch done).
    Percentage { percent: f32, message: Option<String> },
    /// The final output (also stored on the job). An output too large for one WebSocket
    /// frame comes as a reference instead: `output` null, `output_url` (the job's
    /// `GET /v1/jobs/{id}/output`, which takes the API key and redirects to the object)
    /// and `output_bytes`.
    Result {
        #[schema(value_type = Object)]
        output: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_bytes: Option<u64>,
    },
    /// The job failed, or a step of it did.
    Error { error: JobError },
}

/// Room left in a frame for the rest of a `result` event (ids, seq, time, keys).
const RESULT_ENVELOPE_BYTES: usize = 512;

impl EventBody {
    /// The `result` event of `job`'s `output` (`size`: its serialized bytes): inline when
    /// it fits a frame, else a reference to the job's output route under `api_url` (the
    /// HTTP API's base URL; the path alone when it is not known).
    pub fn result(job: &JobId, output: serde_json::Value, size: usize, api_url: Option<&str>) -> EventBody {
        if size + RESULT_ENVELOPE_BYTES <= MAX_EVENT_BYTES {
            return EventBody::Result { output, output_url: None, output_bytes: None };
        }
        let base = api_url.map(|u| u.trim_end_matches('/')).unwrap_or_default();
        EventBody::Result {
            output: serde_json::Value::Null,
            output_url: Some(format!("{base}/v1/jobs/{job}/output")),
            output_bytes: Some(size as u64),
        }
    }

    /// A `result` event holding `output` inline.
    pub fn inline_result(output: serde_json::Value) -> EventBody {
        EventBody::Result { output, output_url: None, output_bytes: None }
    }

    /// Whether this event ends the stream for a follower.
    pub fn is_final(&self) -> bool {
        match self {
            EventBody::Status { status, .. } => status.is_terminal(),
            _ => false,
        }
    }
}

/// API Gateway's WebSocket frame limit is 32 KB (and 128 KB per message): a single event
/// larger than this is refused at publish time rather than closing the client's connection.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;

/// The seqs `EventStore::read(job, after, last_seq, limit)` covers: `after + 1` to
/// `min(last_seq, after + limit)` (empty when nothing is newer). One definition for every
/// adapter.
pub fn read_window(after: u64, last_seq: u64, limit: u32) -> std::ops::RangeInclusive<u64> {
    after.saturating_add(1)..=last_seq.min(after.saturating_add(u64::from(limit)))
}

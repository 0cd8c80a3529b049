//! The job: Ferry's unit of work, as stored by every job store and shown (through
//! [`crate::view::JobView`]) to API clients.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use crate::input::Task;

/// Milliseconds since the Unix epoch. One integer type for every timestamp keeps stores
/// simple (DynamoDB numbers) and arithmetic exact.
pub type Millis = u64;

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: Millis) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.format(&fmt).unwrap_or_default()
}

/// A job id: a ULID, so ids sort by creation time (the tenant index relies on that) and
/// can be generated without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(ulid::Ulid);

impl JobId {
    /// A fresh id whose time part is `now`. Ids from one process are strictly increasing
    /// (monotonic within a millisecond, as the ULID spec suggests), so "newest first" is
    /// also submission order for one API instance.
    pub fn generate(now: Millis) -> Self {
        static LAST: std::sync::Mutex<(Millis, u128)> = std::sync::Mutex::new((0, 0));
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let random_max = (1u128 << 80) - 1;
        // Fresh randomness leaves headroom (top bit clear) for increments in the same ms.
        let (ms, random) = if now > last.0 {
            (now, rand_bits() & (random_max >> 1))
        } else if last.1 < random_max {
            (last.0, last.1 + 1)
        } else {
            (last.0 + 1, rand_bits() & (random_max >> 1))
        };
        *last = (ms, random);
        JobId(ulid::Ulid::from_parts(ms, random))
    }

    /// The creation time encoded in the id.
    pub fn timestamp_ms(&self) -> Millis {
        self.0.timestamp_ms()
    }
}

fn rand_bits() -> u128 {
    // ulid's own generator draws from `rand`; reuse it rather than add a dependency.
    ulid::Ulid::new().random()
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a string is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid job id (expected a 26-character ULID)")]
pub struct InvalidJobId;

impl FromStr for JobId {
    type Err = InvalidJobId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // ULIDs are case-insensitive (Crockford's base32): any spelling names the same job,
        // and the id is always shown (and stored) in upper case. The first character is at
        // most 7 (128 bits); a larger one would silently wrap to another id.
        if s.len() != 26 || !s.is_ascii() || s.as_bytes()[0] > b'7' {
            return Err(InvalidJobId);
        }
        ulid::Ulid::from_string(&s.to_ascii_uppercase()).map(JobId).map_err(|_| InvalidJobId)
    }
}

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A tenant: the owner of API keys and jobs. Letters, digits, `-`, `_`, `.`; 1 to 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

/// Why a string is not a tenant id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant ids are 1 to 64 characters of letters, digits, '-', '_' or '.'")]
pub struct InvalidTenantId;

impl TenantId {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidTenantId> {
        let s = s.into();
        let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if ok { Ok(TenantId(s)) } else { Err(InvalidTenantId) }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TenantId::new(s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The lifecycle states. See `docs/STATE_MACHINE.md` for the transition table, which
/// [`crate::state`] enforces and a test checks against the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    /// A running job whose cancel was requested; the executor has not yet stopped it.
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    /// Still queued when its queue deadline (`expires_at`) passed.
    Expired,
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Cancelling,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::TimedOut,
        JobStatus::Expired,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Cancelling => "cancelling",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Expired => "expired",
        }
    }

    /// Terminal states never change again.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running | JobStatus::Cancelling)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown status {s:?}"))
    }
}

/// Why a job failed (or was cancelled by force): a machine-readable type and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    /// A stable, snake_case class such as `enqueue_failed`, `model_error`, `expired`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// A job as stored. Immutable fields are set at creation; the lifecycle fields change
/// only through [`crate::state::transition`] and a conditional store write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub tenant: TenantId,
    pub model: String,
    /// What the job runs: its task, input and params, validated when it was submitted.
    /// Stored (and shown) as `task`, `input` and `params`; a large input as an object
    /// (`input: null` and `input_object`).
    #[serde(flatten)]
    pub input: crate::input::Input,
    pub timeout_s: u64,
    pub max_attempts: u32,
    pub created_at: Millis,
    /// A queued job not started by then becomes `expired`.
    pub expires_at: Millis,
    pub idempotency_key: Option<String>,
    /// Where the job's events are delivered ([`crate::deliver`]), when it asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<crate::webhook::WebhookRequest>,

    // Lifecycle: written by conditional updates.
    pub status: JobStatus,
    /// Starts at 1; each retry after a lost executor adds one.
    pub attempt: u32,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub updated_at: Millis,
    pub cancel_requested_at: Option<Millis>,
    pub executor_id: Option<String>,
    pub lease_until: Option<Millis>,
    /// The output (or partial output) when small enough for the record.
    pub output: Option<serde_json::Value>,
    /// Where the output is stored when it is not inline (never both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_object: Option<crate::objects::ObjectRef>,
    pub error: Option<JobError>,
    /// When the store may delete the record (DynamoDB TTL). Stores keep returning it until
    /// they delete it; the job service treats it as gone from then on.
    pub retain_until: Millis,

    /// Highest progress sequence number published (maintained by the progress path).
    pub last_seq: u64,
}

/// `error.type` of a job whose message could not be sent (`JobService`'s enqueue).
pub const ENQUEUE_FAILED: &str = "enqueue_failed";

impl Job {
    /// Records `output` (inline, or the reference to its object), replacing any earlier one.
    pub fn set_output(&mut self, output: crate::objects::Output) {
        match output {
            crate::objects::Output::Inline(v) => (self.output, self.output_object) = (Some(v), None),
            crate::objects::Output::Stored(r) => (self.output, self.output_object) = (None, Some(r)),
        }
    }

    /// Whether an output (inline or stored) is recorded.
    pub fn has_output(&self) -> bool {
        self.output.is_some() || self.output_object.is_some()
    }

    /// The job's task (its input's).
    pub fn task(&self) -> Task {
        self.input.task()
    }

    /// Whether the job failed before any executor could see it: its first message was
    /// never sent. An `Idempotency-Key` bound to such a job is taken over by the retry.
    pub fn never_queued(&self) -> bool {
        self.status == JobStatus::Failed
            && self.attempt == 1
            && self.started_at.is_none()
            && self.error.as_ref().is_some_and(|e| e.kind == ENQUEUE_FAILED)
    }

    /// Whether the job waited in the queue past `expires_at` without ever starting. A job
    /// queued again after a lost or released attempt has started, so it does not expire:
    /// its queue deadline was met.
    pub fn is_expired(&self, now: Millis) -> bool {
        self.status == JobStatus::Queued && self.started_at.is_none() && now >= self.expires_at
    }

    /// Time spent queued before the (latest) start, or until now/finish if never started.
    pub fn queue_delay_ms(&self, now: Millis) -> u64 {
        let end = self.started_at.or(self.finished_at).unwrap_or(now);
        end.saturating_sub(self.created_at)
    }

    /// Time spent executing, if it ever started.
    pub fn execution_ms(&self, now: Millis) -> Option<u64> {
        self.started_at.map(|s| self.finished_at.unwrap_or(now).saturating_sub(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_in_any_case_and_show_in_upper_case() {
        let id: JobId = "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B".parse().unwrap();
        for spelling in ["01jd3q7zk8m6w0y8v6zq0c9f1b", "01Jd3Q7zK8m6W0y8V6zQ0c9F1b"] {
            let same: JobId = spelling.parse().unwrap();
            assert_eq!(same, id, "{spelling}");
            assert_eq!(same.to_string(), "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B");
        }
        for bad in [
            "",
            "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1",
            "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1U",
            "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1é",
            "81JD3Q7ZK8M6W0Y8V6ZQ0C9F1B",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?}");
        }
        let json: JobId = serde_json::from_str("\"01jd3q7zk8m6w0y8v6zq0c9f1b\"").unwrap();
        assert_eq!(json, id);
    }
}

//! Inputs and outputs of any size. A job record holds its input and output inline while
//! they are small; a larger one is stored as an object (S3 on AWS, a directory under
//! `ferry dev`'s state dir embedded) and the record keeps an [`ObjectRef`]. DynamoDB's item
//! limit is 400 KB for the whole record, input and output together, so each of them is
//! inline only up to [`INLINE_BYTES`] (as serialized JSON), which leaves the record well
//! under the limit whatever else it holds.
//!
//! Keys are derived from the job, never from user text: `inputs/{job id}.json` and
//! `outputs/{job id}/{attempt}.json`. An output is written before the terminal transition
//! that refers to it, so a recorded output always exists; an attempt that loses its race
//! leaves an object no record points to, which the bucket's lifecycle expiry removes.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{JobId, Millis};

/// The most bytes (serialized JSON) an input or an output is kept inline in the job record.
pub const INLINE_BYTES: usize = 64 * 1024;

/// How long a URL to a stored output works, by default (`FERRY_OUTPUT_URL_TTL_S`).
pub const DEFAULT_URL_TTL_S: u64 = 3600;

/// Where a stored input or output is, and how large it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    /// The object's key in the results bucket (or directory).
    pub key: String,
    /// Its size in bytes (serialized JSON).
    pub bytes: u64,
}

/// A job's output (or partial output) as a transition records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// Small enough for the record.
    Inline(Value),
    /// Stored as an object first (over [`INLINE_BYTES`]).
    Stored(ObjectRef),
}

impl From<Value> for Output {
    fn from(v: Value) -> Self {
        Output::Inline(v)
    }
}

/// The key of a job's stored input.
pub fn input_key(job: &JobId) -> String {
    format!("inputs/{job}.json")
}

/// The key of the output of a job's attempt (one per attempt, so a late attempt that loses
/// its race never overwrites the recorded one).
pub fn output_key(job: &JobId, attempt: u32) -> String {
    format!("outputs/{job}/{attempt}.json")
}

/// Why an object call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// This process has no object store (`FERRY_RESULTS_BUCKET` unset).
    #[error("no results store is configured")]
    NotConfigured,
    /// The service throttled, failed or could not be reached: retry later.
    #[error("results store unavailable: {0}")]
    Unavailable(String),
    /// The call was refused for good (access denied, no such bucket).
    #[error("results store refused the call: {0}")]
    Refused(String),
}

impl ObjectError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ObjectError::Unavailable(_))
    }
}

/// A URL that fetches an object without credentials until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUrl {
    pub url: String,
    pub expires_at: Millis,
}

/// The results store: large inputs and outputs, by key.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Writes (or replaces) the object at `key`.
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), ObjectError>;

    /// The object at `key`, or None when there is none (never written, or expired).
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ObjectError>;

    /// A URL anyone holding it can GET the object from for `ttl` from `now` (a presigned
    /// S3 URL; a signed `ferry dev` URL), or None when this store cannot make one (then
    /// the API serves the object itself). Signing is local: no call is made.
    async fn url(&self, key: &str, ttl: Duration, now: Millis) -> Result<Option<ObjectUrl>, ObjectError>;

    /// Whether `GET /v1/jobs/{id}/output` redirects to [`ObjectStore::url`] rather than
    /// reading the object (S3: a Lambda cannot answer with more than 6 MB).
    fn redirects(&self) -> bool {
        false
    }
}

/// The store of a process that holds no large input or output: every call is
/// [`ObjectError::NotConfigured`], so a job that needs one fails with a clear error.
pub struct NoObjects;

#[async_trait]
impl ObjectStore for NoObjects {
    async fn put(&self, _key: &str, _body: Vec<u8>) -> Result<(), ObjectError> {
        Err(ObjectError::NotConfigured)
    }

    async fn get(&self, _key: &str) -> Result<Option<Vec<u8>>, ObjectError> {
        Err(ObjectError::NotConfigured)
    }

    async fn url(&self, _key: &str, _ttl: Duration, _now: Millis) -> Result<Option<ObjectUrl>, ObjectError> {
        Err(ObjectError::NotConfigured)
    }
}

/// Serialized `value` and whether it must be stored as an object.
pub fn encode(value: &Value) -> (Vec<u8>, bool) {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let large = bytes.len() > INLINE_BYTES;
    (bytes, large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_job_alone() {
        let id: JobId = "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B".parse().unwrap();
        assert_eq!(input_key(&id), "inputs/01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B.json");
        assert_eq!(output_key(&id, 2), "outputs/01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B/2.json");
    }

    #[test]
    fn only_what_is_over_the_threshold_is_stored() {
        let small = Value::String("x".repeat(INLINE_BYTES - 2));
        assert_eq!(encode(&small).0.len(), INLINE_BYTES);
        assert!(!encode(&small).1);
        let large = Value::String("x".repeat(INLINE_BYTES - 1));
        assert!(encode(&large).1);
    }
}

//! The API's error shape: `{"error": {"type", "message", "field"?}}`, one `type` per HTTP
//! status so clients can branch on either. Internal details never reach a client: a 500
//! carries only a request id to find the logged cause.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// One of `invalid_request` (400), `unauthorized` (401), `not_found` (404),
    /// `method_not_allowed` (405), `conflict` (409), `payload_too_large` (413),
    /// `unsupported_media_type` (415), `validation_error` (422), `rate_limited` (429),
    /// `internal` (500), `unavailable` (503).
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// The offending field as a path (`params.temperature`, `input.texts[2]`) or header name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error on its way to becoming an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
    /// The allowed methods, for 405 (`GET, POST`).
    pub allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), field: None, retry_after: None, allow: None }
    }
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    /// 400: the request is malformed (syntax, types, unknown or missing fields).
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message).with_field(field)
    }
    /// 422: well-formed but not acceptable (unknown model, out-of-range values).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message).with_field(field)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, message).with_field("Authorization")
    }
    /// The one answer for "missing" and "someone else's": tenants cannot probe each other.
    pub fn job_not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "no such job").with_field("id")
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, message)
    }
    pub fn rate_limited(message: impl Into<String>, retry_after: u64) -> Self {
        ApiError { retry_after: Some(retry_after), ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message) }
    }
    pub fn internal(request_id: &str) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error; quote request id {request_id} when reporting it"),
        )
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message) }
    }

    /// The `type` string for a status.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "invalid_request",
            401 => "unauthorized",
            404 => "not_found",
            405 => "method_not_allowed",
            409 => "conflict",
            413 => "payload_too_large",
            415 => "unsupported_media_type",
            422 => "validation_error",
            429 => "rate_limited",
            503 => "unavailable",
            _ => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail { kind: self.kind().into(), message: self.message.clone(), field: self.field.clone() },
        }
    }

    pub fn into_response(self) -> Response<Bytes> {
        let mut resp = json_response(self.status, &self.body());
        let headers = resp.headers_mut();
        if let Some(s) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(allow) = self.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
            headers.insert(header::ALLOW, allow);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON response; serialization of our own types cannot fail.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Bytes> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Bytes::from(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A message from an adapter or a model made fit for tenants: ARNs, URLs (S3 locations,
/// endpoints), file paths and 12-digit account ids are replaced by what they are, and the
/// whole is capped at 300 characters. What stays is the cause in words ("RESOURCE:GPU",
/// "device lost"); the full text goes to the log of whoever produced it.
pub fn redact(message: &str) -> String {
    let words: Vec<String> = message
        .split(' ')
        .map(|w| {
            let core = w.trim_matches(|c: char| matches!(c, '(' | ')' | '"' | '\'' | ',' | ';' | '[' | ']'));
            let digits = core.chars().filter(char::is_ascii_digit).count();
            if core.contains("arn:") {
                w.replace(core, "[arn]")
            } else if core.contains("://") {
                w.replace(core, "[url]")
            } else if core.starts_with('/') && core[1..].contains('/') {
                w.replace(core, "[path]")
            } else if digits == 12 && core.chars().all(|c| c.is_ascii_digit()) {
                w.replace(core, "[account]")
            } else {
                w.to_string()
            }
        })
        .collect();
    let joined = words.join(" ");
    match joined.char_indices().nth(300) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact;

    #[test]
    fn internals_are_replaced_and_causes_kept() {
        let raw = "RunTask failed: RESOURCE:GPU (arn:aws:ecs:us-east-1:123456789012:container-instance/x) \
                   assuming role arn:aws:iam::123456789012:role/ferry-dispatcher; account 123456789012; \
                   fetching s3://acme-models/llama/model.safetensors into /models/llama/x.tmp: device lost";
        let out = redact(raw);
        for leaked in ["123456789012", "arn:aws", "acme-models", "/models/llama"] {
            assert!(!out.contains(leaked), "{leaked} in {out}");
        }
        for kept in ["RESOURCE:GPU", "[arn]", "[url]", "[path]", "[account]", "device lost"] {
            assert!(out.contains(kept), "{kept} missing from {out}");
        }
        assert_eq!(redact("no capacity"), "no capacity");
        assert!(redact(&"x".repeat(1000)).chars().count() <= 301);
    }
}

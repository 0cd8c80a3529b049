//! The one error type of the routes: [`HttpError`] wraps the API's error shape
//! ([`ApiError`], `{"error": {"type", "message", "field"?}}`) and turns into the response.
//! Service and store errors become what a client may see in one place ([`From`] impls);
//! their cause is logged with the request id, never sent.

use axum::response::{IntoResponse, Response};
use ferry_core::error::ApiError;
use ferry_core::objects::ObjectError;
use ferry_core::ports::{QueueError, StoreError};
use ferry_core::publish::PublishError;
use ferry_core::service::ServiceError;
use http::StatusCode;

tokio::task_local! {
    /// The id of the request being answered (also its `x-request-id` header).
    static REQUEST_ID: String;
}

/// The id of the request being answered ("-" outside a request).
pub fn request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| "-".into())
}

/// Runs `f` as the request `id`.
pub(crate) async fn with_request_id<F: std::future::Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// An error on its way to becoming an HTTP response.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(e)
    }
}

impl From<ServiceError> for HttpError {
    /// What a client may see of a service error; the cause is logged, not sent.
    fn from(e: ServiceError) -> Self {
        let request_id = request_id();
        HttpError(match e {
            ServiceError::NotFound => ApiError::job_not_found(),
            ServiceError::Rejected(e) => e,
            ServiceError::AlreadyFinished(s) => ApiError::conflict(format!("the job is already {s}")),
            ServiceError::IdempotencyMismatch => ApiError::conflict(e.to_string()).with_field("Idempotency-Key"),
            ServiceError::Contended | ServiceError::Store(StoreError::ConditionFailed { .. }) => {
                ApiError::conflict("the job changed concurrently; retry the request")
            }
            ServiceError::Store(StoreError::Throttled(ref m)) | ServiceError::Queue(QueueError::Throttled(ref m)) => {
                tracing::warn!(request_id, cause = %m, "backend throttled");
                ApiError::rate_limited("the service is overloaded; retry shortly", 1)
            }
            ServiceError::EnqueueFailed(ref cause) => {
                tracing::error!(request_id, %cause, "enqueue failed");
                ApiError::unavailable("the work queue is unavailable; the job was not started, retry shortly")
            }
            ServiceError::NoOutput(status) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("the job has no output (it is {status})"))
                    .with_field("output")
            }
            ServiceError::Objects(ObjectError::NotConfigured) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "this deployment has no results store, so it keeps inputs of at most {} bytes",
                    ferry_core::objects::INLINE_BYTES
                ),
            )
            .with_field("input"),
            ServiceError::Objects(ref cause @ ObjectError::Unavailable(_)) => {
                tracing::error!(request_id, %cause, "results store unavailable");
                ApiError::unavailable("the results store is unavailable; retry shortly")
            }
            other => {
                tracing::error!(request_id, error = %other, "internal error");
                ApiError::internal(&request_id)
            }
        })
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        ServiceError::Store(e).into()
    }
}

impl From<PublishError> for HttpError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::NotFound => HttpError(ApiError::job_not_found()),
            other => {
                let request_id = request_id();
                tracing::error!(request_id, error = %other, "reading events failed");
                HttpError(ApiError::internal(&request_id))
            }
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        self.0.into_response().map(axum::body::Body::from)
    }
}

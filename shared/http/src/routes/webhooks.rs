//! The tenant's webhook signing secrets (read them, made on first use, and rotate them), and a
//! job's webhook deliveries (list them, send them again).

use axum::extract::State;
use axum::response::Response;
use ferry_core::deliver::{DeliveryList, WebhookError};
use ferry_core::error::{ApiError, ErrorBody};
use ferry_core::webhook_secrets::{SecretsError, WebhookSecretList, rotate, signing_secrets};
use http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::json;
use crate::error::{HttpError, request_id};
use crate::extract::{JobIdPath, Tenant};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_secret))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
}

fn answer(result: Result<Vec<ferry_core::webhook::WebhookSecret>, SecretsError>) -> Result<Response, HttpError> {
    match result {
        Ok(secrets) => Ok(json(StatusCode::OK, &WebhookSecretList::from(secrets.as_slice()))),
        Err(e) => {
            tracing::error!(request_id = %request_id(), error = %e, "webhook secrets could not be read or written");
            Err(ApiError::unavailable("the webhook secrets could not be read or written; retry shortly").into())
        }
    }
}

/// The secrets that sign this tenant's webhook deliveries, the current one first (a rotated-out
/// one stays for 24 hours); the first is created on first use.
#[utoipa::path(get, path = "/v1/webhooks/secret", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = WebhookSecretList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn get_secret(State(api): State<AppState>, Tenant(tenant): Tenant) -> Result<Response, HttpError> {
    answer(signing_secrets(api.webhook_secrets.as_ref(), &tenant, api.service.clock.now()).await)
}

/// Makes a new current secret; the previous one keeps signing beside it for 24 hours, so
/// receivers can switch without missing a delivery.
#[utoipa::path(post, path = "/v1/webhooks/secret/rotate", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = WebhookSecretList), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn rotate_secret(State(api): State<AppState>, Tenant(tenant): Tenant) -> Result<Response, HttpError> {
    answer(rotate(api.webhook_secrets.as_ref(), &tenant, api.service.clock.now()).await)
}

impl From<WebhookError> for HttpError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Service(e) => e.into(),
            WebhookError::Store(e) => e.into(),
            WebhookError::NoWebhook => ApiError::conflict("the job was submitted without a webhook").into(),
            WebhookError::NoSuchDelivery(id) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("the job has no webhook delivery {id:?}"))
                    .with_field("id")
                    .into()
            }
            WebhookError::NothingToRedeliver => {
                ApiError::conflict("the job has no webhook delivery yet: none of its webhook's events happened").into()
            }
            other => {
                tracing::error!(request_id = %request_id(), error = %other, "webhook deliveries could not be queued");
                ApiError::unavailable("the webhook queue is unavailable; retry shortly").into()
            }
        }
    }
}

/// A job's webhook deliveries, oldest first: each event's `webhook-id`, state, tries (time,
/// HTTP status or error, duration) and when the next try is due.
#[utoipa::path(get, path = "/v1/jobs/{id}/webhooks", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID, any case)")),
    responses((status = 200, body = DeliveryList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_deliveries(
    State(api): State<AppState>,
    Tenant(tenant): Tenant,
    JobIdPath(id): JobIdPath,
) -> Result<Response, HttpError> {
    let list = api.webhooks.list(&tenant, &id).await?;
    Ok(json(StatusCode::OK, &DeliveryList::from(list.as_slice())))
}

/// `POST /v1/jobs/{id}/webhooks/redeliver`'s optional body.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redeliver {
    /// The delivery to send again (its `webhook-id`); without it, every delivery not
    /// delivered, or the `job.completed` one when all were.
    pub id: Option<String>,
}

/// Sends a job's webhook deliveries again, with the same `webhook-id`s and a fresh retry
/// schedule; an endpoint a 410 disabled is enabled again. Answers 202 with the deliveries queued.
#[utoipa::path(post, path = "/v1/jobs/{id}/webhooks/redeliver", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID, any case)")),
    request_body(content = Option<Redeliver>, content_type = "application/json"),
    responses((status = 202, body = DeliveryList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn redeliver(
    State(api): State<AppState>,
    Tenant(tenant): Tenant,
    JobIdPath(id): JobIdPath,
    body: axum::body::Bytes,
) -> Result<Response, HttpError> {
    let wanted = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let parsed: Redeliver = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request("body", format!("expected {{\"id\": \"msg_...\"}} or no body: {e}")))?;
        parsed.id
    };
    let queued = api.webhooks.redeliver(&tenant, &id, wanted.as_deref()).await?;
    Ok(json(StatusCode::ACCEPTED, &DeliveryList::from(queued.as_slice())))
}

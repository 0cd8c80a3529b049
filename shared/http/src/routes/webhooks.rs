//! The tenant's webhook signing secrets: read them (made on first use) and rotate them.

use axum::extract::State;
use axum::response::Response;
use ferry_core::error::{ApiError, ErrorBody};
use ferry_core::webhook::{SecretsError, WebhookSecretList, rotate, signing_secrets};
use http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::json;
use crate::error::{HttpError, request_id};
use crate::extract::Tenant;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_secret)).routes(routes!(rotate_secret))
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

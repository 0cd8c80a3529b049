//! Input objects: files a job's input refers to by URL (an image of an `image-embeddings`
//! job) instead of carrying them inline, stored in the results store under the tenant.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use ferry_core::error::{ApiError, ErrorBody};
use ferry_core::images::{MAX_INPUT_OBJECT_BYTES, sniff};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::json;
use crate::error::HttpError;
use crate::extract::Tenant;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(store_input)).routes(routes!(get_input))
}

/// A stored input object.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredInput {
    /// The object's id (a ULID).
    pub id: String,
    /// Where this API serves it (`GET`, with the same API key); what a job's input names it
    /// by (`"images": [url]`).
    pub url: String,
    pub bytes: u64,
    /// `image/png`, `image/jpeg` or `image/webp` when the bytes are one of those images,
    /// else `application/octet-stream`.
    pub content_type: String,
}

fn content_type(bytes: &[u8]) -> &'static str {
    sniff(bytes).map(|h| h.format.media_type()).unwrap_or("application/octet-stream")
}

/// The API's own address as the request reached it: `X-Forwarded-Proto` (API Gateway's) or
/// http on loopback and https elsewhere, and the `Host` header.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let proto = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or_else(|| {
        let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        if matches!(name, "localhost" | "127.0.0.1" | "[::1]") { "http" } else { "https" }
    });
    format!("{proto}://{host}")
}

/// Stores the request body (up to 4 MiB, any bytes) as an input object of this API key's
/// tenant, kept as long as job inputs are. Answers its id and the URL a job's input names
/// it by.
#[utoipa::path(post, path = "/v1/inputs", tag = "inputs", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored", body = StoredInput),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
async fn store_input(
    State(api): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let too_large = || {
        let message = format!("an input object holds at most {MAX_INPUT_OBJECT_BYTES} bytes");
        HttpError::from(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message).with_field("body"))
    };
    // Read with our own limit (axum's default would answer 413 without a JSON body).
    let body = axum::body::to_bytes(body, MAX_INPUT_OBJECT_BYTES).await.map_err(|_| too_large())?;
    if body.is_empty() {
        return Err(ApiError::bad_request("body", "the request body is empty: send the file's bytes").into());
    }
    let id = api.service.store_input(&tenant, body.to_vec()).await?;
    let stored = StoredInput {
        url: format!("{}/v1/inputs/{id}", base_url(&headers)),
        bytes: body.len() as u64,
        content_type: content_type(&body).into(),
        id,
    };
    let mut resp = json(StatusCode::CREATED, &stored);
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/inputs/{}", stored.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// An input object's bytes, to this API key's tenant only.
#[utoipa::path(get, path = "/v1/inputs/{id}", tag = "inputs", security(("bearer" = [])),
    params(("id" = String, Path, description = "The id `POST /v1/inputs` answered")),
    responses(
        (status = 200, description = "The object's bytes", content_type = "application/octet-stream"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
async fn get_input(
    State(api): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let Some(bytes) = api.service.stored_input(&tenant, &id).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such input").with_field("id").into());
    };
    let kind = content_type(&bytes);
    let mut r = Response::new(axum::body::Body::from(bytes));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    Ok(r)
}

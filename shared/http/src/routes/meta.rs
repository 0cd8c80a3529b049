//! Routes that need no key: liveness and the OpenAPI document.

use axum::extract::State;
use axum::response::Response;
use ferry_core::view::Health;
use http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::json;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(openapi_json))
}

/// Liveness: the process answers. Needs no key.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, body = Health)))]
async fn healthz() -> Response {
    json(StatusCode::OK, &Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// This document. Needs no key.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3 document")))]
async fn openapi_json(State(api): State<AppState>) -> Response {
    json(StatusCode::OK, &api.doc)
}

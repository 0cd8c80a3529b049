//! The catalog's models and the executor pools.

use axum::extract::State;
use axum::response::Response;
use ferry_core::error::{ApiError, ErrorBody};
use ferry_core::view::{ModelList, ModelView};
use http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::json;
use crate::error::{HttpError, request_id};
use crate::extract::Tenant;
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_models)).routes(routes!(list_pools))
}

/// The models the executors serve.
#[utoipa::path(get, path = "/v1/models", tag = "models", security(("bearer" = [])),
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)))]
async fn list_models(State(api): State<AppState>, _: Tenant) -> Response {
    let models = api.service.catalog.models.iter().map(ModelView::from).collect();
    json(StatusCode::OK, &ModelList { models })
}

/// Each executor pool: desired, running, pending, idle and busy executors, its backlog and
/// its launch failures. Account-wide (pools are shared by every tenant).
#[utoipa::path(get, path = "/v1/pools", tag = "pools", security(("bearer" = [])),
    responses((status = 200, body = ferry_core::dispatch::PoolList), (status = 503, body = ErrorBody)))]
async fn list_pools(State(api): State<AppState>, _: Tenant) -> Result<Response, HttpError> {
    match api.pools.views().await {
        Ok(list) => Ok(json(StatusCode::OK, &list)),
        Err(e) => {
            tracing::error!(request_id = %request_id(), error = %e, "could not read the pools");
            Err(ApiError::unavailable("the pools' state could not be read; retry shortly").into())
        }
    }
}

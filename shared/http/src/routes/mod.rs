//! The routes, one function each with its path, method, extractors and OpenAPI annotation
//! together; each module registers its own ([`all`] merges them). Adding a route is a
//! function and a `routes!` line in its module.

mod events;
mod inputs;
mod jobs;
mod meta;
mod openai;
mod pools;
mod webhooks;

use axum::response::Response;
use http::StatusCode;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

pub use events::EventList;

/// Every route, with its part of the OpenAPI document.
pub(crate) fn all() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(meta::routes())
        .merge(pools::routes())
        .merge(jobs::routes())
        .merge(inputs::routes())
        .merge(events::routes())
        .merge(openai::routes())
        .merge(webhooks::routes())
}

/// A JSON response; serialization of our own types cannot fail.
pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    ferry_core::error::json_response(status, body).map(axum::body::Body::from)
}

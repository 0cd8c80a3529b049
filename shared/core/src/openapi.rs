//! The OpenAPI 3 document, generated from the route functions' annotations and the types
//! they serialize (utoipa), never written by hand. A test checks it lists exactly
//! [`crate::api::ROUTES`].

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Ferry HTTP API", description = "Submit, follow and cancel long GPU jobs."),
    paths(
        routes::healthz,
        routes::openapi_json,
        routes::list_models,
        routes::list_pools,
        routes::submit_job,
        routes::list_jobs,
        routes::get_job,
        routes::cancel_job,
        routes::job_events,
    ),
    components(schemas(
        crate::submit::SubmitJob,
        crate::input::TextGenerationInput,
        crate::input::TextGenerationParams,
        crate::input::EmbeddingsInput,
        crate::view::JobView,
        crate::queue_state::QueueState,
        crate::queue_state::QueueStateKind,
        crate::dispatch::PoolList,
        crate::dispatch::PoolView,
        crate::dispatch::Backlog,
        crate::routes::EventList,
        crate::progress::ProgressEvent,
        crate::progress::EventBody,
        crate::view::JobList,
        crate::view::ModelList,
        crate::view::ModelView,
        crate::view::Health,
        crate::error::ErrorBody,
        crate::error::ErrorDetail,
        crate::job::JobError,
        crate::job::JobStatus,
        crate::job::Task,
    )),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document as served at `GET /openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

//! `ferry-http`: Ferry's HTTP API as one axum router. Each route is one function with its
//! path, method, extractors and OpenAPI annotation together ([`routes`]); the OpenAPI
//! document is generated from the same declarations (utoipa-axum), so the router and the
//! document cannot disagree. The api Lambda serves it through `lambda_http`, `ferry dev`
//! through axum's server; both build it from the composition root with [`Api::new`].
//!
//! Around the routes: a request id (`x-request-id`, also on every log line and in every 500
//! body) and one log line per request; one trailing slash is tolerated; an unknown route is
//! a 404 and a known route's other methods a 405 with `Allow`, both in the API's error shape.

mod error;
mod extract;
mod routes;
mod state;
pub mod webhook_client;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use ferry_core::error::ApiError;
use ferry_core::root::Root;
use http::{HeaderValue, Method, StatusCode};
use tower::ServiceExt;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub use crate::error::{HttpError, request_id};
pub use crate::extract::read_limited;
pub use crate::routes::EventList;
pub use crate::state::{ApiState, AppState};
/// The body of [`Api::stream`]'s responses.
pub use axum::body::Body as StreamBody;

/// The parts of the document no route declares: its title, the input shapes the submit
/// body's `input` and `params` take, and the bearer scheme.
#[derive(OpenApi)]
#[openapi(
    info(title = "Ferry HTTP API", description = "Submit, follow and cancel long GPU jobs."),
    components(schemas(
        ferry_core::input::TextGenerationInput,
        ferry_core::input::TextGenerationParams,
        ferry_core::input::EmbeddingsInput,
        ferry_core::queue_state::QueueState,
        ferry_core::queue_state::QueueStateKind,
        ferry_core::progress::EventBody,
        ferry_core::job::JobError,
        ferry_core::job::JobStatus,
        ferry_core::job::Task,
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

/// The routes and the document they declare.
fn parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(routes::all()).split_for_parts()
}

/// The OpenAPI 3 document (`GET /openapi.json`, `ferry openapi`), from the routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

/// Every route the router serves: `(method, path template)`, from the document.
pub fn route_table() -> Vec<(Method, String)> {
    table(&openapi())
}

fn table(doc: &utoipa::openapi::OpenApi) -> Vec<(Method, String)> {
    let doc = serde_json::to_value(doc).unwrap_or_default();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flat_map(|o| o.keys()) {
            if let Ok(m) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                out.push((m, path.clone()));
            }
        }
    }
    out
}

/// The HTTP API: its state and the router over it. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    state: AppState,
    router: Router,
}

impl std::ops::Deref for Api {
    type Target = ApiState;
    fn deref(&self) -> &ApiState {
        &self.state
    }
}

impl Api {
    /// The API over `root`'s ports.
    pub fn new(root: &Root) -> Api {
        let state = Arc::new(ApiState::new(root));
        let (router, doc) = parts();
        let allowed = Arc::new(table(&doc));
        let router = router
            .fallback(not_found)
            .method_not_allowed_fallback(move |req: Request| method_not_allowed(allowed.clone(), req))
            .with_state(state.clone());
        Api { state, router }
    }

    /// The whole application as a service: the router behind the one-trailing-slash rewrite
    /// and the request context (request id, log line).
    pub fn app(&self) -> App {
        App(self.router.clone())
    }

    /// Answers one request with its whole body: what the api Lambda behind the HTTP API, the
    /// benchmarks and in-process tests call.
    pub async fn handle(&self, req: http::Request<Bytes>) -> http::Response<Bytes> {
        let (parts, body) = self.stream(req).await.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
        http::Response::from_parts(parts, bytes)
    }

    /// Answers one request with a body that streams as the route writes it (the OpenAI
    /// routes' server-sent events): what the api Lambda behind its Function URL, in
    /// response-streaming mode, sends on. Dropping the body is the client going away.
    pub async fn stream(&self, req: http::Request<Bytes>) -> Response {
        match self.app().oneshot(req.map(Body::from)).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// The router behind the one-trailing-slash rewrite (`/v1/jobs/` is `/v1/jobs`) and the
/// request context. Routing happens inside the router, so a rewrite of the path has to
/// wrap it; the context is here too rather than in an axum middleware layer, which would
/// box and clone per request a second time (measured: docs/BENCHMARKS.md, handler).
#[derive(Clone)]
pub struct App(Router);

impl<B> tower::Service<http::Request<B>> for App
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        tower::Service::<http::Request<B>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path.len() > 1
            && let Some(trimmed) = path.strip_suffix('/')
        {
            let pq = match req.uri().query() {
                Some(q) => format!("{trimmed}?{q}"),
                None => trimmed.to_string(),
            };
            let mut parts = req.uri().clone().into_parts();
            if let Ok(pq) = pq.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        Box::pin(request_context(req.method().clone(), req.uri().path().to_string(), self.0.call(req)))
    }
}

/// The request id (a ULID: `x-request-id`, and the id every log line and 500 of the
/// request carries), and one log line per request.
async fn request_context(
    method: Method,
    path: String,
    routed: impl std::future::Future<Output = Result<Response, Infallible>>,
) -> Result<Response, Infallible> {
    let started = Instant::now();
    let request_id = ulid::Ulid::new().to_string();
    let mut resp = error::with_request_id(request_id.clone(), routed).await?;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    tracing::info!(
        request_id, %method, path, status = resp.status().as_u16(),
        latency_ms = started.elapsed().as_secs_f64() * 1000.0, "request"
    );
    Ok(resp)
}

async fn not_found() -> HttpError {
    no_route().into()
}

pub(crate) fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route; GET /openapi.json describes the API")
}

/// A known path with a method it does not take: 405, `Allow` listing the documented ones.
/// (The router also matches a path segment left empty, `/v1/jobs//cancel`: no route.)
async fn method_not_allowed(routes: Arc<Vec<(Method, String)>>, req: Request) -> HttpError {
    let path = req.uri().path();
    let Some(template) = routes.iter().map(|(_, t)| t.as_str()).find(|t| matches_template(t, path)) else {
        return no_route().into();
    };
    let mut allowed: Vec<&str> = routes.iter().filter(|(_, t)| t == template).map(|(m, _)| m.as_str()).collect();
    allowed.sort_unstable();
    let mut e = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} is not allowed on {template}", req.method()));
    e.allow = Some(allowed.join(", "));
    e.into()
}

/// Whether `path` is an instance of `template` (`{name}` stands for one non-empty segment).
fn matches_template(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

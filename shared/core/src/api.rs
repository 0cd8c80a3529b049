//! The HTTP API as one plain async function: [`Api::handle`] takes an `http::Request` with
//! its whole body and returns an `http::Response`. The Lambda (`functions/api`, through
//! `lambda_http`) and `ferry dev` (through axum) both call it, so there is one router, one
//! validator and one error mapping.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};

use crate::auth::{bearer_key, hash_api_key};
use crate::error::ApiError;
use crate::job::TenantId;
use crate::ports::{ApiKeyStore, EventStore, StoreError};
use crate::ratelimit::RateLimiter;
use crate::routes;
use crate::service::{JobService, ServiceError};

/// Every route: (method, path template). The router and the OpenAPI document are both
/// checked against this list by tests.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/models"),
    ("GET", "/v1/pools"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("GET", "/v1/jobs/{id}/events"),
];

/// Per-request context handed to route functions.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Also the `x-request-id` response header and the trace id on queue messages.
    pub request_id: String,
    /// Set on authenticated routes.
    pub tenant: Option<TenantId>,
    /// The `{id}` segment, if the route has one.
    pub path_id: Option<String>,
}

impl Ctx {
    /// The authenticated tenant; route functions for `/v1` only run after auth.
    pub fn tenant(&self) -> &TenantId {
        self.tenant.as_ref().expect("authenticated route")
    }
}

/// The API: the job service, the key store, the progress path and a rate limiter.
pub struct Api {
    pub service: JobService,
    pub keys: Arc<dyn ApiKeyStore>,
    /// Stored progress events (`GET /v1/jobs/{id}/events`).
    pub events: Arc<dyn EventStore>,
    /// The pools' dispatcher, read-only (`GET /v1/pools`).
    pub pools: crate::dispatch::Dispatcher,
    limiter: RateLimiter,
}

impl Api {
    /// The API over `root`'s ports.
    pub fn new(root: &crate::root::Root) -> Self {
        let config = &root.config;
        let limiter = RateLimiter::new(config.rate_limit_per_s, config.rate_limit_burst);
        Api {
            service: root.service(),
            keys: root.ports.keys.clone(),
            events: root.ports.events.clone(),
            pools: root.dispatcher(),
            limiter,
        }
    }

    /// Answers one request. Never panics on input and never returns internals in a body.
    pub async fn handle(&self, req: Request<Bytes>) -> Response<Bytes> {
        let started = Instant::now();
        let request_id = ulid::Ulid::new().to_string();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let mut resp = match self.route(&req, &request_id).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        tracing::info!(
            request_id, %method, path, status = resp.status().as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0, "request"
        );
        resp
    }

    async fn route(&self, req: &Request<Bytes>, request_id: &str) -> Result<Response<Bytes>, ApiError> {
        let (template, path_id) = match_path(req.uri().path()).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "no such route; GET /openapi.json describes the API")
        })?;
        let mut ctx = Ctx { request_id: request_id.to_string(), tenant: None, path_id };
        let method = req.method();
        let allowed: Vec<&str> = ROUTES.iter().filter(|(_, t)| *t == template).map(|(m, _)| *m).collect();
        if !allowed.iter().any(|m| *m == method.as_str()) {
            let mut e = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {template}"));
            e.allow = Some(if allowed.len() > 1 {
                "GET, POST"
            } else if allowed[0] == "GET" {
                "GET"
            } else {
                "POST"
            });
            return Err(e);
        }
        match template {
            "/healthz" => return Ok(routes::healthz()),
            "/openapi.json" => return Ok(routes::openapi_json()),
            _ => {}
        }
        let tenant = self.authenticate(req, request_id).await?;
        self.limiter
            .check(&tenant, self.service.clock.now())
            .map_err(|retry| ApiError::rate_limited("too many requests for this API key; slow down", retry))?;
        ctx.tenant = Some(tenant);
        match (method, template) {
            (&Method::GET, "/v1/models") => Ok(routes::list_models(self, &ctx).await),
            (&Method::GET, "/v1/pools") => routes::list_pools(self, &ctx).await,
            (&Method::POST, "/v1/jobs") => routes::submit_job(self, &ctx, req).await,
            (&Method::GET, "/v1/jobs") => routes::list_jobs(self, &ctx, req).await,
            (&Method::GET, "/v1/jobs/{id}") => routes::get_job(self, &ctx).await,
            (&Method::POST, "/v1/jobs/{id}/cancel") => routes::cancel_job(self, &ctx).await,
            (&Method::GET, "/v1/jobs/{id}/events") => routes::job_events(self, &ctx, req).await,
            _ => Err(ApiError::internal(request_id)),
        }
    }

    async fn authenticate(&self, req: &Request<Bytes>, request_id: &str) -> Result<TenantId, ApiError> {
        let header = match req.headers().get(http::header::AUTHORIZATION) {
            None => return Err(ApiError::unauthorized("missing the header Authorization: Bearer <api key>")),
            Some(h) => h.to_str().map_err(|_| ApiError::unauthorized("malformed Authorization header"))?,
        };
        let key =
            bearer_key(header).ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <api key>"))?;
        match self.keys.lookup(&hash_api_key(key)).await {
            Ok(Some(record)) => Ok(record.tenant),
            Ok(None) => Err(ApiError::unauthorized("invalid API key")),
            Err(e) => Err(self.service_error(ServiceError::Store(e), request_id)),
        }
    }

    /// Maps a service error to what a client may see; the cause is logged, not sent.
    pub fn service_error(&self, e: ServiceError, request_id: &str) -> ApiError {
        match e {
            ServiceError::NotFound => ApiError::job_not_found(),
            ServiceError::AlreadyFinished(s) => ApiError::conflict(format!("the job is already {s}")),
            ServiceError::IdempotencyMismatch => ApiError::conflict(e.to_string()).with_field("Idempotency-Key"),
            ServiceError::Contended | ServiceError::Store(StoreError::ConditionFailed { .. }) => {
                ApiError::conflict("the job changed concurrently; retry the request")
            }
            ServiceError::Store(StoreError::Throttled(ref m))
            | ServiceError::Queue(crate::ports::QueueError::Throttled(ref m)) => {
                tracing::warn!(request_id, cause = %m, "backend throttled");
                ApiError::rate_limited("the service is overloaded; retry shortly", 1)
            }
            ServiceError::EnqueueFailed(ref cause) => {
                tracing::error!(request_id, %cause, "enqueue failed");
                ApiError::unavailable("the work queue is unavailable; the job was not started, retry shortly")
            }
            other => {
                tracing::error!(request_id, error = %other, "internal error");
                ApiError::internal(request_id)
            }
        }
    }
}

/// Finds the route template for a path, and the `{id}` segment if any. One trailing slash
/// is tolerated.
pub fn match_path(path: &str) -> Option<(&'static str, Option<String>)> {
    let path = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    match segs.as_slice() {
        ["healthz"] => Some(("/healthz", None)),
        ["openapi.json"] => Some(("/openapi.json", None)),
        ["v1", "models"] => Some(("/v1/models", None)),
        ["v1", "pools"] => Some(("/v1/pools", None)),
        ["v1", "jobs"] => Some(("/v1/jobs", None)),
        ["v1", "jobs", id] if !id.is_empty() => Some(("/v1/jobs/{id}", Some(id.to_string()))),
        ["v1", "jobs", id, "cancel"] if !id.is_empty() => Some(("/v1/jobs/{id}/cancel", Some(id.to_string()))),
        ["v1", "jobs", id, "events"] if !id.is_empty() => Some(("/v1/jobs/{id}/events", Some(id.to_string()))),
        _ => None,
    }
}

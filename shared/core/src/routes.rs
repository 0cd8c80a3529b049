//! One function per route, each annotated for the OpenAPI document ([`crate::openapi`]).
//! They parse what the route takes, call the job service and shape the response.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::api::{Api, Ctx};
use crate::error::{ApiError, ErrorBody, json_response};
use crate::job::{JobId, JobStatus};
use crate::ports::ListQuery;
use crate::service::Submitted;
use crate::submit::{SubmitJob, parse_submit};
use crate::view::{Health, JobList, JobView, ModelList, ModelView};

/// Liveness: the process answers. Needs no key.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, body = Health)))]
pub fn healthz() -> Response<Bytes> {
    json_response(StatusCode::OK, &Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
}

/// This document. Needs no key.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3 document")))]
pub fn openapi_json() -> Response<Bytes> {
    json_response(StatusCode::OK, &crate::openapi::document())
}

/// Each executor pool: desired, running, pending, idle and busy executors, its backlog and
/// its launch failures. Account-wide (pools are shared by every tenant).
#[utoipa::path(get, path = "/v1/pools", tag = "pools", security(("bearer" = [])),
    responses((status = 200, body = crate::dispatch::PoolList), (status = 503, body = ErrorBody)))]
pub async fn list_pools(api: &Api, ctx: &Ctx) -> Result<Response<Bytes>, ApiError> {
    match api.pools.views().await {
        Ok(list) => Ok(json_response(StatusCode::OK, &list)),
        Err(e) => {
            tracing::error!(request_id = %ctx.request_id, error = %e, "could not read the pools");
            Err(ApiError::unavailable("the pools' state could not be read; retry shortly"))
        }
    }
}

/// The models the executors serve.
#[utoipa::path(get, path = "/v1/models", tag = "models", security(("bearer" = [])),
    responses((status = 200, body = ModelList), (status = 401, body = ErrorBody)))]
pub async fn list_models(api: &Api, _ctx: &Ctx) -> Response<Bytes> {
    let models = api.service.catalog.models.iter().map(ModelView::from).collect();
    json_response(StatusCode::OK, &ModelList { models })
}

/// Submits a job. Returns at once with 202, or with `Prefer: wait=N` waits up to N seconds
/// (at most 25) for a terminal state. The same `Idempotency-Key` and body return the same
/// job (200); the same key with another body is a 409.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])),
    request_body(content = SubmitJob, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters"),
        ("Prefer" = Option<String>, Header, description = "wait=N: wait up to N seconds for a terminal state"),
    ),
    responses(
        (status = 202, description = "Queued (or still running after the wait)", body = JobView),
        (status = 200, description = "Terminal after the wait, or an idempotent replay", body = JobView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
pub async fn submit_job(api: &Api, ctx: &Ctx, req: &Request<Bytes>) -> Result<Response<Bytes>, ApiError> {
    let config = &api.service.config;
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {} bytes", config.max_body_bytes))
            .with_field("body")
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_body_bytes as u64) || req.body().len() > config.max_body_bytes {
        return Err(too_large());
    }
    if req.body().iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request("body", "the request body is empty; expected a JSON object"));
    }
    check_json_content_type(req)?;
    let idempotency_key = idempotency_key(req)?;
    let wait = prefer_wait(req, config.max_wait_s)?;
    let valid = parse_submit(req.body(), &api.service.catalog, config)?;

    let submitted = api
        .service
        .submit(ctx.tenant(), valid, idempotency_key, &ctx.request_id)
        .await
        .map_err(|e| api.service_error(e, &ctx.request_id))?;
    let mut job = submitted.job().clone();
    if let Some(secs) = wait.filter(|s| *s > 0) {
        job = api
            .service
            .wait_terminal(ctx.tenant(), &job.id, Duration::from_secs(secs))
            .await
            .map_err(|e| api.service_error(e, &ctx.request_id))?;
    }
    let status = match submitted {
        Submitted::Existing(_) => StatusCode::OK,
        Submitted::New(_) if job.status.is_terminal() => StatusCode::OK,
        Submitted::New(_) => StatusCode::ACCEPTED,
    };
    let state = api.service.queue_state(&job).await;
    let mut resp = json_response(status, &JobView::new(&job, api.service.clock.now()).with_queue_state(state));
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(secs) = wait {
        resp.headers_mut().insert("preference-applied", HeaderValue::from_str(&format!("wait={secs}")).unwrap());
    }
    Ok(resp)
}

/// One job of the caller's.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID)")),
    responses((status = 200, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_job(api: &Api, ctx: &Ctx) -> Result<Response<Bytes>, ApiError> {
    let id = path_job_id(ctx)?;
    let job = api.service.get(ctx.tenant(), &id).await.map_err(|e| api.service_error(e, &ctx.request_id))?;
    let state = api.service.queue_state(&job).await;
    Ok(json_response(StatusCode::OK, &JobView::new(&job, api.service.clock.now()).with_queue_state(state)))
}

/// The caller's jobs, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])),
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs in this state"),
        ("limit" = Option<u32>, Query, description = "1 to 100, default 20"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)))]
pub async fn list_jobs(api: &Api, ctx: &Ctx, req: &Request<Bytes>) -> Result<Response<Bytes>, ApiError> {
    let mut query = ListQuery { tenant: ctx.tenant().clone(), status: None, limit: 20, after: None };
    let mut seen = Vec::new();
    for (k, v) in parse_query(req.uri().query().unwrap_or(""))? {
        // `?status=&limit=&cursor=` from a client that always sends every parameter means
        // "not set", not "invalid".
        if v.is_empty() && ["status", "limit", "cursor"].contains(&k.as_str()) {
            continue;
        }
        if seen.contains(&k) {
            return Err(ApiError::bad_request(k.clone(), format!("query parameter {k} given twice")));
        }
        match k.as_str() {
            "status" => {
                query.status = Some(v.parse().map_err(|_| {
                    ApiError::bad_request("status", "status must be one of queued, running, cancelling, succeeded, failed, cancelled, timed_out, expired")
                })?)
            }
            "limit" => {
                query.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| ApiError::bad_request("limit", "limit must be an integer from 1 to 100"))?
            }
            "cursor" => query.after = Some(decode_cursor(&v)?),
            other => {
                let q = crate::input::quote(other);
                return Err(ApiError::bad_request(other, format!("unknown query parameter {q}; known: status, limit, cursor")));
            }
        }
        seen.push(k);
    }
    let page = api.service.list(&query).await.map_err(|e| api.service_error(e, &ctx.request_id))?;
    let now = api.service.clock.now();
    let body = JobList {
        jobs: page.jobs.iter().map(|j| JobView::new(j, now)).collect(),
        next_cursor: page.next.map(encode_cursor),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// Cancels a job: a queued job is cancelled at once (200); a running one becomes
/// `cancelling` until its executor stops (202); a finished one is a 409.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID)")),
    responses(
        (status = 200, description = "Cancelled", body = JobView),
        (status = 202, description = "Cancelling: the executor is stopping it", body = JobView),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    ))]
pub async fn cancel_job(api: &Api, ctx: &Ctx) -> Result<Response<Bytes>, ApiError> {
    let id = path_job_id(ctx)?;
    let job = api.service.cancel(ctx.tenant(), &id).await.map_err(|e| api.service_error(e, &ctx.request_id))?;
    let status = if job.status.is_terminal() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok(json_response(status, &JobView::new(&job, api.service.clock.now())))
}

/// Progress events of a job after `after`, for clients without WebSockets. With `wait=S`
/// (at most 20) the call long-polls until an event arrives, the job finishes, or S passes.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "Job id (ULID)"),
        ("after" = Option<u64>, Query, description = "Only events with a larger seq (default 0: all)"),
        ("wait" = Option<u64>, Query, description = "Seconds to wait for a first event, 0 to 20 (default 0)"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100"),
    ),
    responses((status = 200, body = EventList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn job_events(api: &Api, ctx: &Ctx, req: &Request<Bytes>) -> Result<Response<Bytes>, ApiError> {
    let id = path_job_id(ctx)?;
    let (mut after, mut wait, mut limit) = (0u64, 0u64, 100u32);
    let mut seen = Vec::new();
    for (k, v) in parse_query(req.uri().query().unwrap_or(""))? {
        if v.is_empty() {
            continue;
        }
        if seen.contains(&k) {
            return Err(ApiError::bad_request(k.clone(), format!("query parameter {k} given twice")));
        }
        let bad = |msg: &str| ApiError::bad_request(k.clone(), msg.to_string());
        match k.as_str() {
            "after" => after = v.parse().map_err(|_| bad("after must be a sequence number (0 or more)"))?,
            "wait" => wait = v.parse().ok().filter(|w| *w <= 20).ok_or_else(|| bad("wait must be 0 to 20 seconds"))?,
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| bad("limit must be an integer from 1 to 1000"))?
            }
            other => {
                let q = crate::input::quote(other);
                return Err(ApiError::bad_request(
                    other,
                    format!("unknown query parameter {q}; known: after, wait, limit"),
                ));
            }
        }
        seen.push(k);
    }
    let store = &api.events;
    let svc = &api.service;
    let wait = Duration::from_secs(wait);
    let (events, status, last_seq) =
        crate::publish::read_events(&*svc.jobs, &**store, &*svc.clock, ctx.tenant(), &id, after, limit, wait)
            .await
            .map_err(|e| match e {
                crate::publish::PublishError::NotFound => ApiError::job_not_found(),
                other => {
                    tracing::error!(request_id = %ctx.request_id, error = %other, "reading events failed");
                    ApiError::internal(&ctx.request_id)
                }
            })?;
    let next_after = events.last().map_or(after, |e| e.seq);
    Ok(json_response(StatusCode::OK, &EventList { events, status, last_seq, next_after }))
}

/// `GET /v1/jobs/{id}/events`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EventList {
    pub events: Vec<crate::progress::ProgressEvent>,
    /// The job's status now.
    pub status: JobStatus,
    /// The job's latest event number.
    pub last_seq: u64,
    /// Pass as `after` to continue.
    pub next_after: u64,
}

fn path_job_id(ctx: &Ctx) -> Result<JobId, ApiError> {
    let raw = ctx.path_id.as_deref().unwrap_or("");
    raw.parse().map_err(|_| {
        ApiError::bad_request("id", format!("{} is not a job id (a 26-character ULID)", crate::input::quote(raw)))
    })
}

fn check_json_content_type(req: &Request<Bytes>) -> Result<(), ApiError> {
    let unsupported = |msg: &str| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, msg).with_field("Content-Type");
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Err(unsupported("send the body as JSON with Content-Type: application/json"));
    };
    let value = value.to_str().map_err(|_| unsupported("malformed Content-Type"))?.to_ascii_lowercase();
    let mut parts = value.split(';').map(str::trim);
    if parts.next() != Some("application/json") {
        return Err(unsupported("only application/json is accepted"));
    }
    for p in parts {
        if let Some(cs) = p.strip_prefix("charset=")
            && cs.trim_matches('"') != "utf-8"
        {
            return Err(unsupported("only the utf-8 charset is accepted"));
        }
    }
    Ok(())
}

fn idempotency_key(req: &Request<Bytes>) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else { return Ok(None) };
    let bad = || ApiError::bad_request("Idempotency-Key", "Idempotency-Key must be 1 to 255 visible ASCII characters");
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

/// `Prefer: wait=N` (RFC 7240); other preferences are ignored, N above the cap is lowered.
fn prefer_wait(req: &Request<Bytes>, max: u64) -> Result<Option<u64>, ApiError> {
    let mut wait = None;
    for v in req.headers().get_all("prefer") {
        let s = v.to_str().map_err(|_| ApiError::bad_request("Prefer", "malformed Prefer header"))?;
        for pref in s.split([',', ';']).map(str::trim) {
            if let Some((k, val)) = pref.split_once('=')
                && k.trim().eq_ignore_ascii_case("wait")
            {
                let n: u64 =
                    val.trim().trim_matches('"').parse().map_err(|_| {
                        ApiError::bad_request("Prefer", "Prefer: wait=N takes a whole number of seconds")
                    })?;
                wait = Some(n.min(max));
            }
        }
    }
    Ok(wait)
}

/// Cursors are opaque to clients: a version tag and the last job id, base64url.
pub fn encode_cursor(id: JobId) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{id}"))
}

pub fn decode_cursor(s: &str) -> Result<JobId, ApiError> {
    let bad = || ApiError::bad_request("cursor", "invalid cursor; pass next_cursor from a previous page unchanged");
    let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let text = std::str::from_utf8(&raw).map_err(|_| bad())?;
    text.strip_prefix("v1:").and_then(|id| id.parse().ok()).ok_or_else(bad)
}

/// `application/x-www-form-urlencoded` query parsing, strict about bad escapes.
pub fn parse_query(q: &str) -> Result<Vec<(String, String)>, ApiError> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k).ok_or_else(|| ApiError::bad_request("query", "malformed query string"))?;
            let val = percent_decode(v).ok_or_else(|| ApiError::bad_request(key.clone(), "malformed query string"))?;
            Ok((key, val))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

//! Jobs: submit, read, list, cancel.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferry_core::error::{ApiError, ErrorBody};
use ferry_core::job::{JobId, JobStatus};
use ferry_core::ports::ListQuery;
use ferry_core::service::{JobOutput, Submitted};
use ferry_core::submit::{SubmitJob, parse_submit};
use ferry_core::view::{JobList, JobView};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::json;
use crate::error::HttpError;
use crate::extract::{JobIdPath, JsonBody, QueryParams, StrictQuery, Tenant};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(get_output))
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
async fn submit_job(
    State(api): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, HttpError> {
    let config = &api.service.config;
    let idempotency_key = idempotency_key(&headers)?;
    let wait = prefer_wait(&headers, config.max_wait_s)?;
    let valid = parse_submit(&body, &api.service.catalog, config)?;
    let request_id = crate::error::request_id();
    let submitted = api.service.submit(&tenant, valid, idempotency_key, &request_id).await?;
    let mut job = submitted.job().clone();
    if let Some(secs) = wait.filter(|s| *s > 0) {
        job = api.service.wait_terminal(&tenant, &job.id, Duration::from_secs(secs)).await?;
    }
    let status = match submitted {
        Submitted::Existing(_) => StatusCode::OK,
        Submitted::New(_) if job.status.is_terminal() => StatusCode::OK,
        Submitted::New(_) => StatusCode::ACCEPTED,
    };
    let state = api.service.queue_state(&job).await;
    let mut resp = json(status, &api.service.view(&job).await.with_queue_state(state));
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(secs) = wait
        && let Ok(v) = HeaderValue::from_str(&format!("wait={secs}"))
    {
        resp.headers_mut().insert("preference-applied", v);
    }
    Ok(resp)
}

/// One job of the caller's.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID, any case)")),
    responses((status = 200, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(api): State<AppState>,
    Tenant(tenant): Tenant,
    JobIdPath(id): JobIdPath,
) -> Result<Response, HttpError> {
    let job = api.service.get(&tenant, &id).await?;
    let state = api.service.queue_state(&job).await;
    Ok(json(StatusCode::OK, &api.service.view(&job).await.with_queue_state(state)))
}

/// A job's output (or partial output), whether the view holds it inline or it is stored
/// as an object: the JSON itself, or on AWS a redirect (307) to a presigned URL of it.
#[utoipa::path(get, path = "/v1/jobs/{id}/output", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID, any case)")),
    responses(
        (status = 200, description = "The output JSON", content_type = "application/json"),
        (status = 307, description = "Redirect to a presigned URL of the stored output"),
        (status = 404, description = "No such job, or it has no output", body = ErrorBody),
    ))]
async fn get_output(
    State(api): State<AppState>,
    Tenant(tenant): Tenant,
    JobIdPath(id): JobIdPath,
) -> Result<Response, HttpError> {
    let body = match api.service.output(&tenant, &id).await? {
        JobOutput::Inline(v) => serde_json::to_vec(&v).unwrap_or_default(),
        JobOutput::Bytes(b) => b,
        JobOutput::Redirect(url) => {
            let mut r = Response::new(axum::body::Body::empty());
            *r.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            if let Ok(v) = HeaderValue::from_str(&url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(r);
        }
    };
    let mut r = Response::new(axum::body::Body::from(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// `GET /v1/jobs` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs in this state.
    status: Option<JobStatus>,
    /// 1 to 100, default 20.
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl QueryParams for ListParams {
    fn problem(field: &str) -> String {
        match field {
            "status" => {
                "status must be one of queued, running, cancelling, succeeded, failed, cancelled, timed_out, expired"
            }
            "limit" => "limit must be an integer from 1 to 100",
            _ => "malformed query string",
        }
        .into()
    }

    fn out_of_range(&self) -> Option<&'static str> {
        self.limit.is_some_and(|n| !(1..=100).contains(&n)).then_some("limit")
    }
}

/// The caller's jobs, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("bearer" = [])), params(ListParams),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)))]
async fn list_jobs(
    State(api): State<AppState>,
    Tenant(tenant): Tenant,
    StrictQuery(q): StrictQuery<ListParams>,
) -> Result<Response, HttpError> {
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let query = ListQuery { tenant, status: q.status, limit: q.limit.unwrap_or(20), after };
    let page = api.service.list(&query).await?;
    let mut jobs = Vec::with_capacity(page.jobs.len());
    for j in &page.jobs {
        jobs.push(api.service.view(j).await);
    }
    let body = JobList { jobs, next_cursor: page.next.map(encode_cursor) };
    Ok(json(StatusCode::OK, &body))
}

/// Cancels a job: a queued job is cancelled at once (200); a running one becomes
/// `cancelling` until its executor stops (202); a finished one is a 409.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID, any case)")),
    responses(
        (status = 200, description = "Cancelled", body = JobView),
        (status = 202, description = "Cancelling: the executor is stopping it", body = JobView),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
    ))]
async fn cancel_job(
    State(api): State<AppState>,
    Tenant(tenant): Tenant,
    JobIdPath(id): JobIdPath,
) -> Result<Response, HttpError> {
    let job = api.service.cancel(&tenant, &id).await?;
    let status = if job.status.is_terminal() { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok(json(status, &api.service.view(&job).await))
}

pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let bad = || ApiError::bad_request("Idempotency-Key", "Idempotency-Key must be 1 to 255 visible ASCII characters");
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

/// `Prefer: wait=N` (RFC 7240); other preferences are ignored, N above the cap is lowered.
fn prefer_wait(headers: &HeaderMap, max: u64) -> Result<Option<u64>, ApiError> {
    let mut wait = None;
    for v in headers.get_all("prefer") {
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

//! A job's progress events over plain HTTP, for clients without WebSockets.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use ferry_core::error::ErrorBody;
use ferry_core::job::JobStatus;
use ferry_core::progress::ProgressEvent;
use ferry_core::publish::read_events;
use http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::json;
use crate::error::HttpError;
use crate::extract::{JobIdPath, QueryParams, StrictQuery, Tenant};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(job_events))
}

/// `GET /v1/jobs/{id}/events` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events with a larger seq (default 0: all).
    after: Option<u64>,
    /// Seconds to wait for a first event, 0 to 20 (default 0).
    wait: Option<u64>,
    /// 1 to 1000, default 100.
    limit: Option<u32>,
}

impl QueryParams for EventParams {
    fn problem(field: &str) -> String {
        match field {
            "after" => "after must be a sequence number (0 or more)",
            "wait" => "wait must be 0 to 20 seconds",
            "limit" => "limit must be an integer from 1 to 1000",
            _ => "malformed query string",
        }
        .into()
    }

    fn out_of_range(&self) -> Option<&'static str> {
        if self.wait.is_some_and(|w| w > 20) {
            Some("wait")
        } else if self.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
            Some("limit")
        } else {
            None
        }
    }
}

/// `GET /v1/jobs/{id}/events`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EventList {
    pub events: Vec<ProgressEvent>,
    /// The job's status now.
    pub status: JobStatus,
    /// The job's latest event number.
    pub last_seq: u64,
    /// Pass as `after` to continue.
    pub next_after: u64,
}

/// Progress events of a job after `after`, for clients without WebSockets. With `wait=S`
/// (at most 20) the call long-polls until an event arrives, the job finishes, or S passes.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", security(("bearer" = [])),
    params(("id" = String, Path, description = "Job id (ULID, any case)"), EventParams),
    responses((status = 200, body = EventList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn job_events(
    State(api): State<AppState>,
    Tenant(tenant): Tenant,
    JobIdPath(id): JobIdPath,
    StrictQuery(q): StrictQuery<EventParams>,
) -> Result<Response, HttpError> {
    let after = q.after.unwrap_or(0);
    let (limit, wait) = (q.limit.unwrap_or(100), Duration::from_secs(q.wait.unwrap_or(0)));
    let svc = &api.service;
    let (events, status, last_seq) =
        read_events(&*svc.jobs, &*api.events, &*svc.clock, &tenant, &id, after, limit, wait).await?;
    let next_after = events.last().map_or(after, |e| e.seq);
    Ok(json(StatusCode::OK, &EventList { events, status, last_seq, next_after }))
}

//! Glue between `lambda_http` and [`ferry_core::api::Api`]: the only code the Lambda adds.
//! Kept in a library so the event-replay test drives exactly what the binary runs.

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::api::Api;
use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::ports::{Clock, SystemClock};
use ferry_core::publish::ProgressHub;
use ferry_core::service::JobService;
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

/// Why the Lambda cannot start.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// The API as the Lambda runs it, configured by `env` (the process environment in `main`;
/// tests pass a recording lookup, which is how the infra cross-check learns what it reads).
pub async fn build(
    sdk: &ferry_aws::SdkConfig,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Api, BuildError> {
    let backend = ferry_aws::AwsBackend::from_lookup(sdk, env).await?;
    let events = backend.jobs.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Status changes made here (a cancel) are pushed to WebSocket subscribers through the
    // WebSocket API's Management endpoint; without it they are stored for replay only.
    let progress = match env("FERRY_WS_MANAGEMENT_ENDPOINT").filter(|v| !v.trim().is_empty()) {
        Some(endpoint) => Some(Arc::new(ProgressHub {
            jobs: backend.jobs.clone(),
            events: backend.jobs.clone(),
            connections: backend.connections.clone(),
            notifier: Arc::new(ferry_aws::ApiGatewayNotifier::new(sdk, &endpoint)),
            clock: clock.clone(),
        })),
        None => {
            tracing::warn!("FERRY_WS_MANAGEMENT_ENDPOINT is not set: status changes reach WebSocket clients late");
            None
        }
    };
    let catalog = Catalog::from_lookup(env)?;
    // Each pool's queue (new jobs go to their model's pool), and the pools' records for
    // `GET /v1/pools` and the jobs' `queue_state`.
    let fleet = ferry_aws::AwsFleet::from_lookup(sdk, &backend, &catalog, env)?;
    let service = JobService {
        jobs: backend.jobs,
        queues: fleet.queues.clone(),
        clock: clock.clone(),
        catalog: Arc::new(catalog),
        config: Config::from_lookup(env)?,
        progress,
        fleet: Some(fleet.view()),
    };
    let pools = Arc::new(fleet.dispatcher(clock));
    Ok(Api::new(service, backend.keys).with_events(events).with_pools(pools))
}

/// Answers one API Gateway HTTP API (payload v2) request with the shared handler.
pub async fn handle(api: &Api, req: Request) -> Response<Body> {
    let stage = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.stage.clone(),
        _ => None,
    };
    let (mut parts, body) = req.into_parts();
    if let Some(uri) = strip_stage(&parts.uri, stage.as_deref()) {
        parts.uri = uri;
    }
    let body = match body {
        Body::Empty => Bytes::new(),
        Body::Text(s) => Bytes::from(s),
        Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    let resp = api.handle(http::Request::from_parts(parts, body)).await;
    let (parts, body) = resp.into_parts();
    // Our bodies are JSON: send them as text so API Gateway does not base64 them.
    let body = match String::from_utf8(body.to_vec()) {
        Ok(s) => Body::Text(s),
        Err(e) => Body::Binary(e.into_bytes()),
    };
    Response::from_parts(parts, body)
}

/// `lambda_http` puts a named stage in front of the path (`/prod/v1/jobs`); the routes are
/// stage-independent, so it is removed here. The `$default` stage has no prefix.
fn strip_stage(uri: &http::Uri, stage: Option<&str>) -> Option<http::Uri> {
    let stage = stage.filter(|s| *s != "$default" && !s.is_empty())?;
    let prefix = format!("/{stage}");
    let rest = uri.path().strip_prefix(&prefix)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let path = if rest.is_empty() { "/" } else { rest };
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::strip_stage;

    #[test]
    fn named_stages_are_stripped() {
        let uri: http::Uri = "https://x.example/prod/v1/jobs?limit=2".parse().unwrap();
        assert_eq!(strip_stage(&uri, Some("prod")).unwrap().to_string(), "https://x.example/v1/jobs?limit=2");
        assert!(strip_stage(&uri, Some("$default")).is_none());
        assert!(strip_stage(&uri, Some("pro")).is_none(), "only a whole segment is a stage");
        assert!(strip_stage(&uri, None).is_none());
    }
}

//! The OpenAI-compatible API under `/openai/v1` (clients set `base_url` to
//! `<ferry>/openai/v1` and `api_key` to a Ferry key): every call is an ordinary Ferry job
//! (listed, cancellable, idempotent with `Idempotency-Key`, visible over WebSocket; its id
//! is in the response's `id` and the `ferry-job-id` header). The shapes are
//! [`ferry_core::openai`]'s; this module waits for the job, or streams its token events as
//! server-sent events ending with `data: [DONE]`. A client that goes away before its job
//! ends (a dropped stream, an abandoned wait) cancels the job.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use ferry_core::job::{Job, JobId, JobStatus, TenantId};
use ferry_core::openai::{self, Endpoint, OpenAiCall, OpenAiError};
use ferry_core::progress::EventBody;
use ferry_core::publish::read_events;
use ferry_core::service::JobOutput;
use ferry_core::submit::parse_submit;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::Value;
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::HttpError;
use crate::extract::{JsonBody, Tenant};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(chat_completions))
        .routes(routes!(completions))
        .routes(routes!(embeddings))
        .routes(routes!(models))
}

/// OpenAI's chat completions (`stream: true` for server-sent events).
#[utoipa::path(post, path = "/openai/v1/chat/completions", tag = "openai", security(("bearer" = [])),
    responses((status = 200, description = "OpenAI's chat.completion, or its chunks as text/event-stream")))]
async fn chat_completions(
    State(api): State<AppState>,
    tenant: Result<Tenant, HttpError>,
    headers: HeaderMap,
    body: Result<JsonBody, HttpError>,
) -> Response {
    serve(api, tenant, headers, body, Endpoint::Chat).await
}

/// OpenAI's (legacy) completions.
#[utoipa::path(post, path = "/openai/v1/completions", tag = "openai", security(("bearer" = [])),
    responses((status = 200, description = "OpenAI's text_completion, or its chunks as text/event-stream")))]
async fn completions(
    State(api): State<AppState>,
    tenant: Result<Tenant, HttpError>,
    headers: HeaderMap,
    body: Result<JsonBody, HttpError>,
) -> Response {
    serve(api, tenant, headers, body, Endpoint::Completions).await
}

/// OpenAI's embeddings.
#[utoipa::path(post, path = "/openai/v1/embeddings", tag = "openai", security(("bearer" = [])),
    responses((status = 200, description = "OpenAI's embeddings list")))]
async fn embeddings(
    State(api): State<AppState>,
    tenant: Result<Tenant, HttpError>,
    headers: HeaderMap,
    body: Result<JsonBody, HttpError>,
) -> Response {
    serve(api, tenant, headers, body, Endpoint::Embeddings).await
}

/// The catalog's models, in OpenAI's list shape.
#[utoipa::path(get, path = "/openai/v1/models", tag = "openai", security(("bearer" = [])),
    responses((status = 200, description = "OpenAI's model list")))]
async fn models(State(api): State<AppState>, tenant: Result<Tenant, HttpError>) -> Response {
    if let Err(e) = tenant {
        return error_response(&OpenAiError::from_api(&e.0, Endpoint::Chat));
    }
    let models: Vec<_> = api.service.catalog.models.iter().map(|m| (m.id.clone(), m.task)).collect();
    let created = api.service.clock.now() / 1000;
    json_response(StatusCode::OK, &openai::models_response(&models, created), None)
}

async fn serve(
    api: AppState,
    tenant: Result<Tenant, HttpError>,
    headers: HeaderMap,
    body: Result<JsonBody, HttpError>,
    endpoint: Endpoint,
) -> Response {
    match run(api, tenant, headers, body, endpoint).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn run(
    api: AppState,
    tenant: Result<Tenant, HttpError>,
    headers: HeaderMap,
    body: Result<JsonBody, HttpError>,
    endpoint: Endpoint,
) -> Result<Response, OpenAiError> {
    let api_err = |e: HttpError| OpenAiError::from_api(&e.0, endpoint);
    let Tenant(tenant) = tenant.map_err(api_err)?;
    let JsonBody(body) = body.map_err(api_err)?;
    let call = OpenAiCall::parse(endpoint, &body)?;
    let svc = &api.service;
    let valid = parse_submit(&call.native_body(), &svc.catalog, &svc.config).map_err(|e| api_err(e.into()))?;
    if valid.model.task != call.task() {
        return Err(OpenAiError::invalid(
            "model",
            format!("model {} serves {}, not this endpoint", valid.model.id, valid.model.task.as_str()),
        ));
    }
    let key = super::jobs::idempotency_key(&headers).map_err(|e| api_err(e.into()))?;
    let submitted =
        svc.submit(&tenant, valid, key, &crate::error::request_id()).await.map_err(|e| api_err(e.into()))?;
    let job = submitted.job().clone();
    if call.stream {
        return Ok(stream(api.clone(), tenant, call, job));
    }
    // Waiting: a client that goes away cancels its job (the guard, when this future drops).
    let guard = CancelOnDrop { api: Some(api.clone()), tenant: tenant.clone(), id: job.id };
    let wait = Duration::from_secs(svc.config.max_timeout_s + 60);
    let job = svc.wait_terminal(&tenant, &job.id, wait).await.map_err(|e| api_err(e.into()))?;
    guard.disarm();
    let output = finished_output(&api, &tenant, &job, endpoint).await?;
    let response = match endpoint {
        Endpoint::Chat => {
            let texts = if call.logprobs { token_texts(&api, &tenant, &job.id).await } else { Vec::new() };
            openai::chat_response(&call, &job, &output, &texts)
        }
        Endpoint::Completions => openai::completion_response(&call, &job, &output),
        Endpoint::Embeddings => openai::embeddings_response(&call, &output),
    };
    Ok(json_response(StatusCode::OK, &response, Some(&job.id)))
}

/// A finished job's output, or the OpenAI error its failure is.
async fn finished_output(
    api: &AppState,
    tenant: &TenantId,
    job: &Job,
    endpoint: Endpoint,
) -> Result<Value, OpenAiError> {
    if job.status != JobStatus::Succeeded {
        let (kind, message) = match &job.error {
            Some(e) => (e.kind.clone(), e.message.clone()),
            None => (job.status.to_string(), format!("the job ended {}", job.status)),
        };
        if kind == "invalid_input" {
            let param = message.split(':').next().unwrap_or("").trim();
            let mut e = OpenAiError::from_api(&ferry_core::error::ApiError::invalid(param, message.clone()), endpoint);
            e.code = Some(kind);
            return Err(e);
        }
        let status = if job.status == JobStatus::TimedOut { 504 } else { 500 };
        return Err(OpenAiError {
            status,
            message: format!("job {} ended {}: {message}", job.id, job.status),
            kind: "server_error",
            param: None,
            code: Some(kind),
        });
    }
    let output = match api.service.output(tenant, &job.id).await {
        Ok(JobOutput::Inline(v)) => Some(v),
        Ok(JobOutput::Bytes(b)) => serde_json::from_slice(&b).ok(),
        _ => None,
    };
    output.ok_or_else(|| OpenAiError {
        status: 500,
        message: format!("the output of job {} cannot be read here; GET /v1/jobs/{}/output has it", job.id, job.id),
        kind: "server_error",
        param: None,
        code: None,
    })
}

/// The texts of a job's token events, in order.
async fn token_texts(api: &AppState, tenant: &TenantId, id: &JobId) -> Vec<String> {
    let svc = &api.service;
    let (mut after, mut texts) = (0, Vec::new());
    while let Ok((events, _, last)) =
        read_events(&*svc.jobs, &*api.events, &*svc.clock, tenant, id, after, 1000, Duration::ZERO).await
    {
        for e in &events {
            if let EventBody::Token { text, .. } = &e.body {
                texts.push(text.clone());
            }
        }
        after = events.last().map_or(last, |e| e.seq);
        if events.is_empty() || after >= last {
            break;
        }
    }
    texts
}

/// Cancels the job when dropped armed: the client went away.
struct CancelOnDrop {
    api: Option<AppState>,
    tenant: TenantId,
    id: JobId,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.api = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(api) = self.api.take() {
            let (tenant, id) = (self.tenant.clone(), self.id);
            tokio::spawn(async move {
                match api.service.cancel(&tenant, &id).await {
                    Ok(_) => tracing::info!(job_id = %id, "the OpenAI client went away; its job is cancelled"),
                    Err(e) => tracing::debug!(job_id = %id, error = %e, "no cancel after the client went away"),
                }
            });
        }
    }
}

/// Streams the job as server-sent events: the role first, then each token's text, then the
/// finish reason (and usage, when asked), then `data: [DONE]`. A failure mid-stream is an
/// `error` event before `[DONE]`.
fn stream(api: AppState, tenant: TenantId, call: OpenAiCall, job: Job) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let id = job.id;
    tokio::spawn(async move {
        let guard = CancelOnDrop { api: Some(api.clone()), tenant: tenant.clone(), id: job.id };
        if pump(&api, &tenant, &call, &job, &tx).await.is_ok() {
            guard.disarm();
        }
    });
    let mut resp = Response::new(Body::new(ChannelBody(rx)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
        h.insert("ferry-job-id", v);
    }
    resp
}

/// The client is gone.
struct Gone;

async fn send(tx: &mpsc::Sender<Bytes>, v: &Value) -> Result<(), Gone> {
    tx.send(Bytes::from(format!("data: {v}\n\n"))).await.map_err(|_| Gone)
}

async fn pump(
    api: &AppState,
    tenant: &TenantId,
    call: &OpenAiCall,
    job: &Job,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), Gone> {
    let svc = &api.service;
    if call.endpoint == Endpoint::Chat {
        send(tx, &call.chunk(job, Some(""), true, None, None)).await?;
    }
    let mut after = 0;
    loop {
        let read =
            read_events(&*svc.jobs, &*api.events, &*svc.clock, tenant, &job.id, after, 100, Duration::from_secs(5));
        let (events, status, last) = tokio::select! {
            r = read => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "cannot read the job's events for its stream");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            _ = tx.closed() => return Err(Gone),
        };
        for e in &events {
            if let EventBody::Token { text, logprob, .. } = &e.body {
                let lp = logprob.filter(|_| call.logprobs).map(|l| openai::token_logprob(text, l as f64));
                send(tx, &call.chunk(job, Some(text), false, None, lp)).await?;
            }
        }
        after = events.last().map_or(after, |e| e.seq);
        if status.is_terminal() && after >= last {
            break;
        }
    }
    let done = svc.get(tenant, &job.id).await.unwrap_or_else(|_| job.clone());
    match finished_output(api, tenant, &done, call.endpoint).await {
        Ok(output) => {
            send(tx, &call.chunk(&done, None, false, Some(openai::finish_reason(&output)), None)).await?;
            if call.include_usage {
                send(tx, &call.usage_chunk(&done, &output)).await?;
            }
        }
        Err(e) => send(tx, &e.body()).await?,
    }
    tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await.map_err(|_| Gone)
}

/// A response body fed by a channel; dropped (the client gone), it closes the channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn json_response(status: StatusCode, body: &Value, job: Option<&JobId>) -> Response {
    let mut resp = super::json(status, body);
    if let Some(id) = job
        && let Ok(v) = HeaderValue::from_str(&id.to_string())
    {
        resp.headers_mut().insert("ferry-job-id", v);
    }
    resp
}

fn error_response(e: &OpenAiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.body(), None)
}

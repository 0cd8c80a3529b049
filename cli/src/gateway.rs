//! The local WebSocket gateway of `ferry dev`: a stand-in for API Gateway's WebSocket API
//! and its Management API, on one listener.
//!
//! - `GET /` upgrades to a WebSocket. `$connect` ([`WsApi::handle`]) runs before the
//!   upgrade is accepted, so a refusal is a plain HTTP answer (401 with a JSON body).
//!   Text frames go to `$default`; binary frames get an error frame; frames over 128 KiB
//!   close the connection with 1009, as API Gateway does; a close runs `$disconnect`.
//! - `POST|GET|DELETE /@connections/{id}` (also under a stage, `/{stage}/@connections/{id}`):
//!   the Management API, with API Gateway's status codes and `x-amzn-ErrorType` headers,
//!   so `ferry_aws::ApiGatewayNotifier` works against it unchanged.
//! - `POST /dev/jobs/{id}/progress` (only with `--dev-progress`): publishes an
//!   [`EventBody`] through [`ProgressHub::publish_progress`] and answers the stored event.
//!
//! The Management API and the progress driver need the stack's token ([`require_token`]):
//! without it, any local program (or a web page through the browser) could push events
//! to every follower.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use ferry_core::error::ApiError;
use ferry_core::job::{JobId, rfc3339};
use ferry_core::ports::NotifyError;
use ferry_core::progress::EventBody;
use ferry_core::publish::{ProgressHub, PublishError};
use ferry_core::ws::{MAX_CONNECTION_MS, Reply, WsApi, WsRequest};
use ferry_local::gateway::{MAX_MESSAGE_BYTES, Outbound, Registry};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use crate::stack::Stack;

/// Close code for a message over the limit.
const CLOSE_TOO_BIG: u16 = 1009;

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

fn close(code: u16, reason: &str) -> Outbound {
    Outbound::Close { code, reason: reason.into() }
}

/// What the registry queued for a socket, as a frame.
fn frame(out: Outbound) -> Message {
    match out {
        Outbound::Text(s) => Message::Text(s.into()),
        Outbound::Binary(b) => Message::Binary(Bytes::from(b)),
        Outbound::Close { code, reason } => close_message(code, &reason),
    }
}

/// The gateway: the WebSocket API, its connections and the progress hub (the stack's).
pub struct Gateway {
    pub registry: Arc<Registry>,
    pub hub: Arc<ProgressHub>,
    pub api: Arc<WsApi>,
    /// Serves `POST /dev/jobs/{id}/progress`.
    pub dev_progress: bool,
    /// What the Management API and the progress driver require ([`Stack::dev_token`]).
    pub token: String,
}

impl Gateway {
    pub fn new(stack: &Stack, dev_progress: bool) -> Arc<Gateway> {
        Arc::new(Gateway {
            registry: stack.registry.clone(),
            hub: stack.root.hub(),
            api: stack.ws.clone(),
            dev_progress,
            token: stack.dev_token.clone(),
        })
    }
}

type Gw = State<Arc<Gateway>>;

/// The gateway's routes.
pub fn router(gateway: Arc<Gateway>) -> axum::Router {
    let mut guarded = axum::Router::new()
        .route("/@connections/{id}", post(post_connection).get(get_connection).delete(delete_connection))
        .route("/{stage}/@connections/{id}", post(post_staged).get(get_staged).delete(delete_staged));
    if gateway.dev_progress {
        guarded = guarded.route("/dev/jobs/{id}/progress", post(dev_progress));
    }
    let guarded = guarded.layer(axum::middleware::from_fn_with_state(gateway.clone(), require_token));
    axum::Router::new().route("/", get(upgrade)).merge(guarded).with_state(gateway)
}

/// The Management API and the progress driver answer only requests carrying the stack's
/// token: `x-ferry-dev-token: TOKEN`, `Authorization: Bearer TOKEN`, or a SigV4 signature
/// whose access key id is the token (how the AWS SDK's Management API client, signing with
/// the credentials `ferry dev` hands its processes, presents it). Compared in constant time.
async fn require_token(State(gw): Gw, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !presents_token(req.headers(), &gw.token) {
        return api_error(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "this needs the dev token ferry dev printed at start (x-ferry-dev-token)",
            )
            .with_field("x-ferry-dev-token"),
        );
    }
    next.run(req).await
}

fn presents_token(headers: &HeaderMap, token: &str) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let presented = header("x-ferry-dev-token")
        .or_else(|| header("authorization").and_then(ferry_core::auth::bearer_key))
        .or_else(|| header("authorization")?.split("Credential=").nth(1)?.split('/').next());
    presented.is_some_and(|t| ferry_core::auth::constant_time_eq(t.as_bytes(), token.as_bytes()))
}

/// Serves until `shutdown` completes, then closes every WebSocket (1001) and returns.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = gateway.registry.clone();
    let app = router(gateway)
        .layer(axum::middleware::from_fn(crate::server::host_guard))
        .into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    registry.close_all(1001, "Going away");
    registry.drained(Duration::from_secs(5)).await;
    result
}

async fn upgrade(
    State(gw): Gw,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: http::Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let id = new_connection_id(&gw.registry);
    let header = |name: http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let req = WsRequest {
        route_key: "$connect".into(),
        connection_id: id.clone(),
        authorization: header(http::header::AUTHORIZATION),
        token: uri.query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
        }),
        body: None,
    };
    let answer = gw.api.handle(req).await;
    if answer.status != 200 {
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return json_response(status, answer.body);
    }
    // Register before the upgrade completes: a post right after $connect must find it
    // (API Gateway itself answers 410 until the connection is fully open; we are kinder).
    let (tx, rx) = gw.registry.open(&id, peer.ip().to_string(), header(http::header::USER_AGENT));
    // Messages up to twice the limit are read whole, so an oversized one gets 1009 rather
    // than a protocol error; beyond that the read fails and we close with 1009 anyway.
    let ws = ws.max_message_size(2 * MAX_MESSAGE_BYTES).max_frame_size(2 * MAX_MESSAGE_BYTES);
    let gw2 = gw.clone();
    let id2 = id.clone();
    // (This closure lives as long as the socket task: it must not hold a sender.)
    ws.on_failed_upgrade(move |e| {
        tracing::info!(error = %e, "websocket upgrade failed");
        gw2.registry.remove(&id2);
        let api = gw2.api.clone();
        let id = id2.clone();
        tokio::spawn(async move {
            api.handle(WsRequest { route_key: "$disconnect".into(), connection_id: id, ..WsRequest::default() }).await;
        });
    })
    .on_upgrade(move |socket| run_socket(gw, id, socket, tx, rx))
}

/// API Gateway-like ids: 10 random bytes, base64 (16 characters ending in `=`), URL-safe
/// alphabet so they sit in a path segment as they are.
fn new_connection_id(registry: &Registry) -> String {
    loop {
        let random = ulid::Ulid::new().random().to_be_bytes();
        let id = base64::engine::general_purpose::URL_SAFE.encode(&random[6..16]);
        if !registry.contains(&id) {
            return id;
        }
    }
}

async fn run_socket(
    gw: Arc<Gateway>,
    id: String,
    socket: WebSocket,
    tx: mpsc::Sender<Outbound>,
    mut rx: mpsc::Receiver<Outbound>,
) {
    let _guard = gw.registry.task();
    let (mut sink, mut stream) = socket.split();
    let writer_done = Arc::new(Notify::new());
    let done = writer_done.clone();
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let msg = frame(out);
            let close = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
        done.notify_one();
    });
    let expiry = tokio::time::sleep(Duration::from_millis(MAX_CONNECTION_MS));
    tokio::pin!(expiry);
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = writer_done.notified() => break,
            _ = &mut expiry => {
                let _ = tx.send(close(1001, "Going away")).await;
                break;
            }
        };
        let text = match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => {
                tracing::info!(connection_id = %id, error = %e, "websocket read failed");
                // tungstenite's capacity errors: "Space limit exceeded: Message too long ...".
                let text = e.to_string();
                let frame = if text.contains("too long") || text.contains("Space limit") {
                    close(CLOSE_TOO_BIG, "Message too big")
                } else {
                    close(1002, "Protocol error")
                };
                let _ = tx.send(frame).await;
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(b))) => {
                if b.len() > MAX_MESSAGE_BYTES {
                    let _ = tx.send(close(CLOSE_TOO_BIG, "Message too big")).await;
                    break;
                }
                gw.registry.touch(&id);
                let e = ApiError::bad_request("body", "binary frames are not supported; send JSON text frames");
                let reply = serde_json::to_string(&Reply::Error { error: e.body().error }).unwrap_or_default();
                let _ = tx.try_send(Outbound::Text(reply));
                continue;
            }
            Some(Ok(Message::Text(t))) => t,
        };
        if text.len() > MAX_MESSAGE_BYTES {
            let _ = tx.send(close(CLOSE_TOO_BIG, "Message too big")).await;
            break;
        }
        gw.registry.touch(&id);
        let req = WsRequest {
            route_key: "$default".into(),
            connection_id: id.clone(),
            body: Some(text.as_str().to_string()),
            ..WsRequest::default()
        };
        gw.api.handle(req).await;
    }
    gw.registry.remove(&id);
    drop(tx);
    // Let a queued close frame go out, then drop the socket.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    gw.api.handle(WsRequest { route_key: "$disconnect".into(), connection_id: id, ..WsRequest::default() }).await;
}

// ---- Management API ----

async fn post_connection(State(gw): Gw, Path(id): Path<String>, body: Bytes) -> Response {
    management_post(&gw, &id, &body)
}
async fn post_staged(State(gw): Gw, Path((_stage, id)): Path<(String, String)>, body: Bytes) -> Response {
    management_post(&gw, &id, &body)
}
async fn get_connection(State(gw): Gw, Path(id): Path<String>) -> Response {
    management_get(&gw, &id)
}
async fn get_staged(State(gw): Gw, Path((_stage, id)): Path<(String, String)>) -> Response {
    management_get(&gw, &id)
}
async fn delete_connection(State(gw): Gw, Path(id): Path<String>) -> Response {
    management_delete(&gw, &id)
}
async fn delete_staged(State(gw): Gw, Path((_stage, id)): Path<(String, String)>) -> Response {
    management_delete(&gw, &id)
}

fn management_post(gw: &Gateway, id: &str, body: &[u8]) -> Response {
    match gw.registry.post(id, body) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(NotifyError::Gone) => aws_error(StatusCode::GONE, "GoneException", id),
        Err(NotifyError::PayloadTooLarge) => aws_error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLargeException", id),
        Err(NotifyError::LimitExceeded) => aws_error(StatusCode::TOO_MANY_REQUESTS, "LimitExceededException", id),
        Err(NotifyError::Failed(_)) => aws_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerErrorException", id),
    }
}

fn management_get(gw: &Gateway, id: &str) -> Response {
    let Some(c) = gw.registry.describe(id) else { return aws_error(StatusCode::GONE, "GoneException", id) };
    let mut identity = serde_json::json!({ "sourceIp": c.source_ip });
    if let Some(ua) = &c.user_agent {
        identity["userAgent"] = ua.clone().into();
    }
    let body = serde_json::json!({
        "connectedAt": rfc3339(c.connected_at),
        "identity": identity,
        "lastActiveAt": rfc3339(c.last_active_at),
    });
    json_response(StatusCode::OK, body.to_string())
}

fn management_delete(gw: &Gateway, id: &str) -> Response {
    if gw.registry.close(id, 1000, "") {
        StatusCode::NO_CONTENT.into_response()
    } else {
        aws_error(StatusCode::GONE, "GoneException", id)
    }
}

/// An error as API Gateway's Management API answers it.
fn aws_error(status: StatusCode, kind: &'static str, id: &str) -> Response {
    let message = match kind {
        "GoneException" => format!("connection {id} is gone"),
        "PayloadTooLargeException" => format!("the message is larger than {MAX_MESSAGE_BYTES} bytes"),
        "LimitExceededException" => format!("too many messages queued for connection {id}"),
        _ => "internal error".to_string(),
    };
    let mut r = json_response(status, serde_json::json!({ "message": message }).to_string());
    r.headers_mut().insert("x-amzn-ErrorType", http::HeaderValue::from_static(kind));
    r
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

// ---- Dev-only progress driver ----

async fn dev_progress(State(gw): Gw, Path(id): Path<String>, body: Bytes) -> Response {
    let Ok(job_id) = id.parse::<JobId>() else {
        return api_error(ApiError::job_not_found());
    };
    let body: EventBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return api_error(ApiError::bad_request("body", format!("not an event body: {e}"))),
    };
    match gw.hub.publish_progress(&job_id, body).await {
        Ok((event, fan_out)) => {
            let mut r = json_response(StatusCode::OK, serde_json::to_string(&event).unwrap_or_default());
            let summary = format!("delivered={} gone={} failed={}", fan_out.delivered, fan_out.gone, fan_out.failed);
            if let Ok(v) = http::HeaderValue::from_str(&summary) {
                r.headers_mut().insert("x-ferry-fan-out", v);
            }
            r
        }
        Err(PublishError::NotFound) => api_error(ApiError::job_not_found()),
        Err(e @ PublishError::TooLarge { .. }) => {
            api_error(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).with_field("body"))
        }
        Err(e) => {
            tracing::error!(job_id = %job_id, error = %e, "dev progress publish failed");
            api_error(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
    }
}

fn api_error(e: ApiError) -> Response {
    let (parts, body) = e.into_response().into_parts();
    Response::from_parts(parts, Body::from(body))
}

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

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use ferry_core::error::ApiError;
use ferry_core::job::JobId;
use ferry_core::ports::{Notifier, NotifyError};
use ferry_core::progress::EventBody;
use ferry_core::publish::{ProgressHub, PublishError};
use ferry_core::ws::{MAX_CONNECTION_MS, Reply, WsApi, WsRequest};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use crate::stack::Stack;

/// API Gateway's limit on one WebSocket message, both ways (frames are 32 KiB; this
/// gateway does not fragment, so it applies the message limit to whole frames).
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// Messages queued for one connection before posts to it answer LimitExceeded.
const SEND_QUEUE: usize = 1024;
/// Close code for a message over the limit.
const CLOSE_TOO_BIG: u16 = 1009;

/// One open connection.
struct Conn {
    tx: mpsc::Sender<Message>,
    connected_at: OffsetDateTime,
    last_active_at: OffsetDateTime,
    source_ip: String,
    user_agent: Option<String>,
}

/// The open connections, by connection id.
#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<String, Conn>>,
    /// Socket tasks still running (they outlive their registry entry while closing).
    tasks: std::sync::atomic::AtomicUsize,
    tasks_done: Notify,
}

/// Counts a running socket task.
struct TaskGuard(Arc<Registry>);

impl TaskGuard {
    fn new(registry: Arc<Registry>) -> Self {
        registry.tasks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        TaskGuard(registry)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.tasks_done.notify_waiters();
    }
}

impl Registry {
    /// Ids of the open connections.
    pub fn ids(&self) -> Vec<String> {
        self.conns.lock().unwrap().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a message for a connection (PostToConnection).
    pub fn post(&self, id: &str, data: &[u8]) -> Result<(), NotifyError> {
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(NotifyError::PayloadTooLarge);
        }
        let msg = match std::str::from_utf8(data) {
            Ok(s) => Message::Text(s.into()),
            Err(_) => Message::Binary(Bytes::copy_from_slice(data)),
        };
        let mut conns = self.conns.lock().unwrap();
        let Some(conn) = conns.get(id) else { return Err(NotifyError::Gone) };
        match conn.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(NotifyError::LimitExceeded),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                conns.remove(id);
                Err(NotifyError::Gone)
            }
        }
    }

    /// Closes a connection (DeleteConnection); false when it is not open.
    pub fn close(&self, id: &str, code: u16, reason: &str) -> bool {
        match self.conns.lock().unwrap().remove(id) {
            Some(conn) => {
                let _ = conn.tx.try_send(close_message(code, reason));
                true
            }
            None => false,
        }
    }

    /// Closes every connection (on shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        for (_, conn) in self.conns.lock().unwrap().drain() {
            let _ = conn.tx.try_send(close_message(code, reason));
        }
    }

    /// Waits (up to `limit`) until every socket task has finished.
    pub async fn drained(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.tasks_done.notified();
                if self.tasks.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// GetConnection's answer.
    fn describe(&self, id: &str) -> Option<serde_json::Value> {
        let conns = self.conns.lock().unwrap();
        let c = conns.get(id)?;
        let mut identity = serde_json::json!({ "sourceIp": c.source_ip });
        if let Some(ua) = &c.user_agent {
            identity["userAgent"] = ua.clone().into();
        }
        Some(serde_json::json!({
            "connectedAt": c.connected_at.format(&Rfc3339).unwrap_or_default(),
            "identity": identity,
            "lastActiveAt": c.last_active_at.format(&Rfc3339).unwrap_or_default(),
        }))
    }

    fn touch(&self, id: &str) {
        if let Some(c) = self.conns.lock().unwrap().get_mut(id) {
            c.last_active_at = OffsetDateTime::now_utc();
        }
    }

    /// Registers a connection under a fresh id and returns it.
    fn insert(&self, id: String, conn: Conn) {
        self.conns.lock().unwrap().insert(id, conn);
    }

    /// Removes `id` if it is still the connection whose sender is `tx`.
    fn remove_if(&self, id: &str, tx: &mpsc::Sender<Message>) {
        let mut conns = self.conns.lock().unwrap();
        if conns.get(id).is_some_and(|c| c.tx.same_channel(tx)) {
            conns.remove(id);
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.conns.lock().unwrap().contains_key(id)
    }
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

/// The in-process notifier of the embedded backend: posts straight into the registry.
#[derive(Clone)]
pub struct LocalNotifier {
    pub registry: Arc<Registry>,
}

#[async_trait]
impl Notifier for LocalNotifier {
    async fn post(&self, connection_id: &str, data: &[u8]) -> Result<(), NotifyError> {
        self.registry.post(connection_id, data)
    }
}

/// The gateway: the WebSocket API, its connections and the progress hub (the stack's).
pub struct Gateway {
    pub registry: Arc<Registry>,
    pub hub: Arc<ProgressHub>,
    pub api: Arc<WsApi>,
    /// Serves `POST /dev/jobs/{id}/progress`.
    pub dev_progress: bool,
}

impl Gateway {
    pub fn new(stack: &Stack, dev_progress: bool) -> Arc<Gateway> {
        Arc::new(Gateway {
            registry: stack.registry.clone(),
            hub: stack.hub.clone(),
            api: stack.ws.clone(),
            dev_progress,
        })
    }
}

type Gw = State<Arc<Gateway>>;

/// The gateway's routes.
pub fn router(gateway: Arc<Gateway>) -> axum::Router {
    let mut r = axum::Router::new()
        .route("/", get(upgrade))
        .route("/@connections/{id}", post(post_connection).get(get_connection).delete(delete_connection))
        .route("/{stage}/@connections/{id}", post(post_staged).get(get_staged).delete(delete_staged));
    if gateway.dev_progress {
        r = r.route("/dev/jobs/{id}/progress", post(dev_progress));
    }
    r.with_state(gateway)
}

/// Serves until `shutdown` completes, then closes every WebSocket (1001) and returns.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = gateway.registry.clone();
    let app = router(gateway).into_make_service_with_connect_info::<SocketAddr>();
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
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let now = OffsetDateTime::now_utc();
    let conn = Conn {
        tx: tx.clone(),
        connected_at: now,
        last_active_at: now,
        source_ip: peer.ip().to_string(),
        user_agent: header(http::header::USER_AGENT),
    };
    gw.registry.insert(id.clone(), conn);
    // Messages up to twice the limit are read whole, so an oversized one gets 1009 rather
    // than a protocol error; beyond that the read fails and we close with 1009 anyway.
    let ws = ws.max_message_size(2 * MAX_MESSAGE_BYTES).max_frame_size(2 * MAX_MESSAGE_BYTES);
    let gw2 = gw.clone();
    let id2 = id.clone();
    // (This closure lives as long as the socket task: it must not hold a sender.)
    ws.on_failed_upgrade(move |e| {
        tracing::info!(error = %e, "websocket upgrade failed");
        gw2.registry.conns.lock().unwrap().remove(&id2);
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
    tx: mpsc::Sender<Message>,
    mut rx: mpsc::Receiver<Message>,
) {
    let _guard = TaskGuard::new(gw.registry.clone());
    let (mut sink, mut stream) = socket.split();
    let writer_done = Arc::new(Notify::new());
    let done = writer_done.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
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
                let _ = tx.send(close_message(1001, "Going away")).await;
                break;
            }
        };
        let text = match msg {
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => {
                tracing::info!(connection_id = %id, error = %e, "websocket read failed");
                // tungstenite's capacity errors: "Space limit exceeded: Message too long ...".
                let text = e.to_string();
                let close = if text.contains("too long") || text.contains("Space limit") {
                    close_message(CLOSE_TOO_BIG, "Message too big")
                } else {
                    close_message(1002, "Protocol error")
                };
                let _ = tx.send(close).await;
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Binary(b))) => {
                if b.len() > MAX_MESSAGE_BYTES {
                    let _ = tx.send(close_message(CLOSE_TOO_BIG, "Message too big")).await;
                    break;
                }
                gw.registry.touch(&id);
                let e = ApiError::bad_request("body", "binary frames are not supported; send JSON text frames");
                let reply = serde_json::to_string(&Reply::Error { error: e.body().error }).unwrap_or_default();
                let _ = tx.try_send(Message::Text(reply.into()));
                continue;
            }
            Some(Ok(Message::Text(t))) => t,
        };
        if text.len() > MAX_MESSAGE_BYTES {
            let _ = tx.send(close_message(CLOSE_TOO_BIG, "Message too big")).await;
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
    gw.registry.remove_if(&id, &tx);
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
    match gw.registry.describe(id) {
        Some(v) => json_response(StatusCode::OK, v.to_string()),
        None => aws_error(StatusCode::GONE, "GoneException", id),
    }
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

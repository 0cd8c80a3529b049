//! Serves the shared API handler over HTTP for `ferry dev` (and for benchmarks): one axum
//! fallback route turns each request into the `http::Request<Bytes>` the handler takes.
//! The body is read up to one byte past the limit, so the handler itself answers 413
//! without this server buffering an unbounded body.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use ferry_core::api::Api;
use ferry_core::root::Ports;
use ferry_local::remote;
use http::StatusCode;
use tokio::net::TcpListener;

/// What the server answers with.
#[derive(Clone)]
pub enum Mode {
    /// The real API.
    Api(Arc<Api>),
    /// A constant 202 with a fixed body: the ceiling benchmarks compare against.
    Constant202,
}

/// Serves until `shutdown` completes, then finishes in-flight requests and returns.
pub async fn serve(
    listener: TcpListener,
    mode: Mode,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_ports(listener, mode, None, shutdown).await
}

/// Like [`serve`], also answering `POST /internal/v1/ports` for `ferry dev`'s executor
/// processes (the in-memory ports, guarded by the token).
pub async fn serve_with_ports(
    listener: TcpListener,
    mode: Mode,
    ports: Option<(Ports, String)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = axum::Router::new().fallback(handle).with_state(mode);
    if let Some(ports) = ports {
        let internal =
            axum::Router::new().route(remote::PATH, axum::routing::post(port_call)).with_state(Arc::new(ports));
        app = app.merge(internal);
    }
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn port_call(State(ports): State<Arc<(Ports, String)>>, req: Request) -> Response {
    let (ports, token) = &*ports;
    let reply = |status: StatusCode, reply: remote::Reply| {
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r
    };
    let authorized = req.headers().get(remote::TOKEN_HEADER).is_some_and(|v| v.as_bytes() == token.as_bytes());
    if !authorized {
        let e = remote::WireError::Unavailable { message: "missing or wrong stack token".into() };
        return reply(StatusCode::FORBIDDEN, remote::Reply::Err(e));
    }
    let body = match read_limited(req.into_body(), 16 << 20).await {
        Ok(b) => b,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                remote::Reply::Err(remote::WireError::Corrupt { message: e.to_string() }),
            );
        }
    };
    let call: remote::Call = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                remote::Reply::Err(remote::WireError::Corrupt { message: e.to_string() }),
            );
        }
    };
    match remote::answer(ports, call).await {
        Ok(v) => reply(StatusCode::OK, remote::Reply::Ok(v)),
        Err(e) => reply(StatusCode::OK, remote::Reply::Err(e)),
    }
}

async fn handle(State(mode): State<Mode>, req: Request) -> Response {
    let api = match mode {
        Mode::Api(api) => api,
        Mode::Constant202 => {
            let mut r = Response::new(Body::from(&br#"{"id":"01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B","status":"queued"}"#[..]));
            *r.status_mut() = StatusCode::ACCEPTED;
            r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            return r;
        }
    };
    let limit = api.service.config.max_body_bytes;
    let (parts, body) = req.into_parts();
    let body = match read_limited(body, limit + 1).await {
        Ok(b) => b,
        Err(_) => {
            let e = ferry_core::error::ApiError::bad_request("body", "the request body could not be read");
            return into_axum(e.into_response());
        }
    };
    into_axum(api.handle(http::Request::from_parts(parts, body)).await)
}

/// Reads at most `max` bytes of the body; anything beyond is not read.
async fn read_limited(body: Body, max: usize) -> Result<Bytes, axum::Error> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = max.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
            if buf.len() >= max {
                break;
            }
        }
    }
    Ok(buf.freeze())
}

fn into_axum(resp: http::Response<Bytes>) -> Response {
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::from(body))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

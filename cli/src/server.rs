//! Serves the HTTP API's router over HTTP/1.1 for `ferry dev` (and for benchmarks), the
//! same router the api Lambda serves, and, on a loopback listener of its own, the ports
//! endpoint of `ferry dev`'s executor processes.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use ferry_core::root::Ports;
use ferry_http::Api;
use ferry_local::remote;
use http::StatusCode;
use tokio::net::TcpListener;

/// What the server answers with.
#[derive(Clone)]
pub enum Mode {
    /// The real API.
    Api(Arc<Api>),
    /// `ferry dev`'s stack: its API, and the signed URLs of its stored outputs
    /// (`/dev/objects/...`, embedded backend).
    Stack(Arc<crate::stack::Stack>),
    /// A constant 202 with a fixed body: the ceiling benchmarks compare against.
    Constant202,
}

/// Serves until `shutdown` completes, then finishes in-flight requests and returns.
pub async fn serve(
    listener: TcpListener,
    mode: Mode,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = match mode {
        Mode::Api(api) => axum::Router::new().fallback_service(api.app()),
        Mode::Stack(stack) => {
            let router = axum::Router::new();
            let router = match &stack.objects {
                Some(objects) => router.route(
                    &format!("{}{{*key}}", ferry_local::OBJECT_URL_PATH),
                    axum::routing::get(signed_object).with_state(objects.clone()),
                ),
                None => router,
            };
            router.fallback_service(stack.api.app())
        }
        Mode::Constant202 => axum::Router::new().fallback(constant_202),
    };
    axum::serve(listener, app.layer(axum::middleware::from_fn(host_guard))).with_graceful_shutdown(shutdown).await
}

/// Serves `POST /internal/v1/ports` for `ferry dev`'s executor processes (the in-memory
/// ports, guarded by the token) and nothing else, on a listener of its own: bind it to
/// loopback, apart from the API's, so exposing the API (`--http 0.0.0.0:8080`) never
/// exposes the stack's ports.
pub async fn serve_ports(
    listener: TcpListener,
    ports: (Ports, String),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(remote::PATH, axum::routing::post(port_call)).with_state(Arc::new(ports));
    axum::serve(listener, app.layer(axum::middleware::from_fn(host_guard))).with_graceful_shutdown(shutdown).await
}

/// Refuses a request whose `Host` is a name other than `localhost`: what a web page reaches
/// a loopback server with by DNS rebinding (its own name resolving to 127.0.0.1), with the
/// well-known dev key. Clients that name the server by an IP address or `localhost` (the
/// CLI, curl, scripts, other machines when bound to one) are served; a request with no
/// `Host` (HTTP/1.0) too.
pub async fn host_guard(req: Request, next: axum::middleware::Next) -> Response {
    match req.headers().get(http::header::HOST).map(|h| h.to_str().map(allowed_host)) {
        None | Some(Ok(true)) => next.run(req).await,
        Some(_) => {
            let body = br#"{"error":{"type":"forbidden","message":"this server answers to localhost and IP addresses only (Host header refused)","field":"Host"}}"#;
            let mut r = Response::new(Body::from(&body[..]));
            *r.status_mut() = StatusCode::FORBIDDEN;
            r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            r
        }
    }
}

/// `localhost` (or a `*.localhost` name, which resolves to loopback by RFC 6761) or an IP
/// literal, with or without a port.
fn allowed_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => return rest.split(']').next().is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host, |(n, _)| n),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

pub use ferry_core::auth::constant_time_eq;

async fn port_call(State(ports): State<Arc<(Ports, String)>>, req: Request) -> Response {
    let (ports, token) = &*ports;
    let reply = |status: StatusCode, reply: remote::Reply| {
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r
    };
    let authorized =
        req.headers().get(remote::TOKEN_HEADER).is_some_and(|v| constant_time_eq(v.as_bytes(), token.as_bytes()));
    if !authorized {
        let e = remote::WireError::Unavailable { message: "missing or wrong stack token".into() };
        return reply(StatusCode::FORBIDDEN, remote::Reply::Err(e));
    }
    let body = match ferry_http::read_limited(req.into_body(), 64 << 20).await {
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

/// `GET /dev/objects/{key}?expires=MS&signature=HEX`: a stored object, to whoever holds
/// a URL the store signed and that has not expired (what a presigned S3 URL does; any
/// `Authorization` header is ignored).
async fn signed_object(
    State(objects): State<Arc<ferry_local::DirObjects>>,
    axum::extract::Path(key): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    use ferry_core::objects::ObjectStore;
    let error = |status: StatusCode, kind: &str, message: &str| {
        let body = serde_json::json!({"error": {"type": kind, "message": message}}).to_string();
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        r
    };
    let query = query.unwrap_or_default();
    let param = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
    let expires = param("expires").and_then(|e| e.parse::<u64>().ok()).unwrap_or(0);
    let signature = param("signature").unwrap_or_default();
    let now = ferry_core::ports::Clock::now(&ferry_core::ports::SystemClock);
    if !objects.verify(&key, expires, signature, now) {
        return error(StatusCode::FORBIDDEN, "forbidden", "the URL's signature is invalid or it has expired");
    }
    match objects.get(&key).await {
        Ok(Some(bytes)) => {
            let mut r = Response::new(Body::from(bytes));
            r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            r
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such object (past its retention?)"),
        Err(e) => {
            tracing::error!(key, error = %e, "reading a stored object");
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the object could not be read; retry shortly")
        }
    }
}

/// The benchmark ceiling: what a server that does nothing answers.
async fn constant_202() -> Response {
    let mut r = Response::new(Body::from(&br#"{"id":"01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B","status":"queued"}"#[..]));
    *r.status_mut() = StatusCode::ACCEPTED;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
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

#[cfg(test)]
mod tests {
    use super::{allowed_host, constant_time_eq};

    #[test]
    fn hosts_by_ip_or_localhost_are_served_and_names_refused() {
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "app.localhost:3000",
            "127.0.0.1:8080",
            "10.0.0.7",
            "[::1]:8080",
            "[::1]",
        ] {
            assert!(allowed_host(ok), "{ok}");
        }
        for refused in
            ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io", "[evil]:80", ""]
        {
            assert!(!allowed_host(refused), "{refused}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}

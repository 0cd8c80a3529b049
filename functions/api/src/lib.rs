//! Glue between `lambda_http` and [`ferry_core::api::Api`]: the only code the Lambda adds.
//! Kept in a library so the event-replay test drives exactly what the binary runs.

use bytes::Bytes;
use ferry_core::api::Api;
use lambda_http::{Body, Request, Response};

/// Answers one API Gateway HTTP API (payload v2) request with the shared handler.
pub async fn handle(api: &Api, req: Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
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

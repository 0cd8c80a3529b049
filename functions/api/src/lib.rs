//! Glue between `lambda_http` and the HTTP API's router ([`ferry_http::Api`]): the only
//! code the Lambda adds. One binary, two functions: behind the HTTP API (buffered) and
//! behind a Function URL in response-streaming mode ([`InvokeMode`]). Kept in a library so
//! the event-replay and Function URL tests drive exactly what the binary runs.

use bytes::Bytes;
use ferry_http::{Api, StreamBody};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

/// Why the Lambda cannot start.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// The API as the Lambda runs it, configured by `env` (the process environment in `main`;
/// tests pass a recording lookup, which is how the infra cross-check learns what it reads):
/// the composition root over the AWS adapters. Status changes made here (a cancel) are
/// pushed to WebSocket subscribers through `FERRY_WS_MANAGEMENT_ENDPOINT`.
pub async fn build(
    sdk: &ferry_aws::SdkConfig,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Api, BuildError> {
    Ok(Api::new(&ferry_aws::api_root_from_lookup(sdk, env).await?))
}

/// How the function answers: `BUFFERED` behind the HTTP API (API Gateway wants the whole
/// response), `RESPONSE_STREAM` behind a Lambda Function URL in response-streaming mode (the
/// body goes out as it is written: the OpenAI routes' server-sent events, for up to the
/// function's 15 minutes). Lambda's own names for the two, from `FERRY_API_INVOKE_MODE`;
/// the HTTP API's function leaves it unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeMode {
    Buffered,
    ResponseStream,
}

impl InvokeMode {
    /// The mode `env` names (unset: `BUFFERED`).
    pub fn from_lookup(env: &(dyn Fn(&str) -> Option<String> + Sync)) -> Result<InvokeMode, BuildError> {
        match env("FERRY_API_INVOKE_MODE").as_deref() {
            None | Some("BUFFERED") => Ok(InvokeMode::Buffered),
            Some("RESPONSE_STREAM") => Ok(InvokeMode::ResponseStream),
            Some(other) => Err(format!("FERRY_API_INVOKE_MODE is {other:?}; it is BUFFERED or RESPONSE_STREAM").into()),
        }
    }
}

/// Serves Lambda's Runtime API until the process ends, answering in `mode`: what `main` runs.
pub async fn run(api: Api, mode: InvokeMode) -> Result<(), lambda_http::Error> {
    match mode {
        InvokeMode::Buffered => {
            lambda_http::run(lambda_http::service_fn(move |req: Request| {
                let api = api.clone();
                async move { Ok::<_, lambda_http::Error>(handle(&api, req).await) }
            }))
            .await
        }
        InvokeMode::ResponseStream => {
            lambda_http::run_with_streaming_response(lambda_http::service_fn(move |req: Request| {
                let api = api.clone();
                async move { Ok::<_, lambda_http::Error>(handle_streaming(&api, req).await) }
            }))
            .await
        }
    }
}

/// Answers one API Gateway HTTP API (payload v2) request with the shared handler.
pub async fn handle(api: &Api, req: Request) -> Response<Body> {
    let resp = api.handle(into_api_request(req)).await;
    let (parts, body) = resp.into_parts();
    // Our bodies are JSON: send them as text so API Gateway does not base64 them.
    let body = match String::from_utf8(body.to_vec()) {
        Ok(s) => Body::Text(s),
        Err(e) => Body::Binary(e.into_bytes()),
    };
    Response::from_parts(parts, body)
}

/// Answers one Lambda Function URL request (the same payload v2) with the shared handler,
/// its body streamed as the route writes it. When Lambda stops taking the stream, the body
/// is dropped, which is a client going away to the route (an OpenAI stream cancels its job).
pub async fn handle_streaming(api: &Api, req: Request) -> Response<StreamBody> {
    api.stream(into_api_request(req)).await
}

/// The request as the router takes it: the stage prefix removed, the body as bytes.
fn into_api_request(req: Request) -> http::Request<Bytes> {
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
    http::Request::from_parts(parts, body)
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

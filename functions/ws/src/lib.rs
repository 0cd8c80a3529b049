//! Glue between API Gateway WebSocket events and [`ferry_core::ws::WsApi`]: the only code
//! the `ws` Lambda adds. Kept in a library so the event-replay test drives exactly what the
//! binary runs.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use base64::Engine;
use ferry_core::ws::{WsApi, WsRequest};

/// Why the Lambda cannot start.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// The WebSocket API as the Lambda runs it, configured by `env` (the process environment in
/// `main`; tests pass a recording lookup): the table's ports and the Management API
/// (`FERRY_WS_MANAGEMENT_ENDPOINT`, required), no queue.
pub fn build(sdk: &ferry_aws::SdkConfig, env: &(dyn Fn(&str) -> Option<String> + Sync)) -> Result<WsApi, BuildError> {
    Ok(ferry_aws::ws_ports_from_lookup(sdk, env)?.ws())
}

/// The route invocation an API Gateway WebSocket event carries: the route key and
/// connection id from `requestContext`, the `Authorization` header and the `token` query
/// parameter (sent on `$connect`), and the message body, base64-decoded when
/// `isBase64Encoded` (binary frames).
pub fn to_ws_request(event: &ApiGatewayWebsocketProxyRequest) -> WsRequest {
    let ctx = &event.request_context;
    // Header names are case-insensitive in the map, so `Authorization` and
    // `authorization` both match; `multiValueHeaders` is the fallback API Gateway also fills.
    let authorization = [&event.headers, &event.multi_value_headers]
        .into_iter()
        .find_map(|h| h.get("authorization").and_then(|v| v.to_str().ok()))
        .map(str::to_string);
    let token = event
        .query_string_parameters
        .first("token")
        .or_else(|| event.multi_value_query_string_parameters.first("token"))
        .map(str::to_string);
    let body = event.body.as_deref().map(|b| {
        if event.is_base64_encoded {
            match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                // Not base64 after all: the handler answers it as malformed JSON.
                Err(_) => b.to_string(),
            }
        } else {
            b.to_string()
        }
    });
    WsRequest {
        route_key: ctx.route_key.clone().unwrap_or_default(),
        connection_id: ctx.connection_id.clone().unwrap_or_default(),
        authorization,
        token,
        body,
    }
}

/// Answers one API Gateway WebSocket event with the shared handler. The status decides
/// whether a `$connect` is accepted (200) or refused (401); replies to messages are posted
/// to the connection by the handler itself, not returned here.
pub async fn handle(api: &WsApi, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
    let req = to_ws_request(&event);
    tracing::debug!(route_key = %req.route_key, connection_id = %req.connection_id, "websocket event");
    let out = api.handle(req).await;
    let mut resp = ApiGatewayProxyResponse::default();
    resp.status_code = i64::from(out.status);
    resp.body = Some(Body::Text(out.body));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(v: serde_json::Value) -> ApiGatewayWebsocketProxyRequest {
        serde_json::from_value(v).expect("a WebSocket event")
    }

    fn ctx(route: &str) -> serde_json::Value {
        serde_json::json!({"routeKey": route, "connectionId": "abc=", "connectedAt": 1, "requestTimeEpoch": 2})
    }

    #[test]
    fn connect_reads_header_in_any_case_and_token() {
        let e = event(serde_json::json!({
            "headers": {"authorization": "Bearer k1"},
            "queryStringParameters": {"token": "k2"},
            "requestContext": ctx("$connect"),
        }));
        let r = to_ws_request(&e);
        assert_eq!((r.route_key.as_str(), r.connection_id.as_str()), ("$connect", "abc="));
        assert_eq!((r.authorization.as_deref(), r.token.as_deref(), r.body), (Some("Bearer k1"), Some("k2"), None));
        let e =
            event(serde_json::json!({"headers": {"Authorization": "Bearer k3"}, "requestContext": ctx("$connect")}));
        assert_eq!(to_ws_request(&e).authorization.as_deref(), Some("Bearer k3"));
    }

    #[test]
    fn binary_frames_are_decoded() {
        let e = event(serde_json::json!({
            "requestContext": ctx("$default"),
            "body": "eyJhY3Rpb24iOiJwaW5nIn0=",
            "isBase64Encoded": true,
        }));
        assert_eq!(to_ws_request(&e).body.as_deref(), Some(r#"{"action":"ping"}"#));
        let e = event(serde_json::json!({"requestContext": ctx("$default"), "body": "{}", "isBase64Encoded": false}));
        assert_eq!(to_ws_request(&e).body.as_deref(), Some("{}"));
    }
}

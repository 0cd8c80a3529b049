//! The AWS `Notifier` adapter (aws-sdk-apigatewaymanagement) over the real wire: a local
//! HTTP server plays the Management API (moto cannot: it never answers 410), with the
//! status codes and `x-amzn-ErrorType` headers API Gateway uses.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use ferry_aws::ApiGatewayNotifier;
use ferry_core::ports::{Notifier, NotifyError};

type Seen = Arc<Mutex<Vec<(String, Vec<u8>, bool)>>>;

async fn post_to_connection(
    State(seen): State<Seen>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    let signed = headers.get("authorization").is_some_and(|v| v.to_str().unwrap_or("").starts_with("AWS4-HMAC-SHA256"));
    seen.lock().unwrap().push((id.clone(), body.to_vec(), signed));
    let (status, kind) = match id.as_str() {
        "gone" => (StatusCode::GONE, "GoneException"),
        "busy" => (StatusCode::TOO_MANY_REQUESTS, "LimitExceededException"),
        "big" => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLargeException"),
        "broken" => (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerErrorException"),
        _ => return (StatusCode::OK, HeaderMap::new(), String::new()),
    };
    let mut h = HeaderMap::new();
    h.insert("x-amzn-errortype", kind.parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    (status, h, format!(r#"{{"message":"{kind}"}}"#))
}

#[tokio::test]
async fn post_to_connection_maps_gateway_answers() {
    let seen: Seen = Arc::default();
    let app = axum::Router::new().route("/dev/@connections/{id}", post(post_to_connection)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sdk = ferry_aws::sdk_config_for_endpoint(&format!("http://{addr}")).await;
    // The stage is part of the endpoint, as on AWS: https://{api}.execute-api.{region}.amazonaws.com/{stage}
    let notifier = ApiGatewayNotifier::new(&sdk, &format!("http://{addr}/dev"));
    notifier.post("abc=", br#"{"action":"event"}"#).await.expect("delivered");
    assert_eq!(notifier.post("gone", b"x").await, Err(NotifyError::Gone));
    assert_eq!(notifier.post("big", b"x").await, Err(NotifyError::PayloadTooLarge));
    // The SDK retries throttling and 5xx itself before giving up; we still get the class.
    assert_eq!(notifier.post("busy", b"x").await, Err(NotifyError::LimitExceeded));
    assert!(matches!(notifier.post("broken", b"x").await, Err(NotifyError::Failed(_))));

    let seen = seen.lock().unwrap();
    let first = &seen[0];
    assert_eq!((first.0.as_str(), first.1.as_slice()), ("abc=", &br#"{"action":"event"}"#[..]));
    assert!(seen.iter().all(|(_, _, signed)| *signed), "requests are SigV4-signed");
    assert_eq!(
        ApiGatewayNotifier::endpoint_for("a1b2c3", "eu-west-1", "prod"),
        "https://a1b2c3.execute-api.eu-west-1.amazonaws.com/prod"
    );
}

//! The real `ferry dev` binary's WebSocket gateway (the in-process gateway tests, on both
//! backends, are in `tests/tests/gateway.rs`).

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The next text frame as JSON.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a frame in time");
        match msg.expect("open").expect("frame") {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The real binary: `ferry dev --ws 127.0.0.1:0 --dev-progress` prints its WebSocket URL,
/// serves it next to the HTTP API, and on Ctrl-C closes open sockets (1001) and exits 0.
#[tokio::test]
async fn ferry_dev_serves_the_gateway_and_stops_on_ctrl_c() {
    use std::process::Command;
    let mut dev = common::spawn_dev(&["--dev-progress", "--no-executor", "--api-key", "k-bin=acme"]);
    assert!(dev.startup.iter().any(|l| l.contains("/dev/jobs/{id}/progress")), "the driver is announced");
    let ws_url = dev.ws.clone();
    assert!(ws_url.starts_with("ws://127.0.0.1:"), "{ws_url}");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_url}/?token=k-bin")).await.expect("connects");
    send(&mut ws, json!({"action": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"action": "pong"}));
    let resp = reqwest::Client::new()
        .post(format!("{}/dev/jobs/01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B/progress", ws_url.replace("ws://", "http://")))
        .header("x-ferry-dev-token", &dev.dev_token)
        .body(r#"{"type":"log","level":"info","message":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "the driver is on and the job is missing");
    assert!(dev.http.starts_with("http://127.0.0.1:"), "the HTTP API is served too: {}", dev.http);

    let child = &mut dev.child;
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed on Ctrl-C") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry dev did not stop on SIGINT");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success());
}

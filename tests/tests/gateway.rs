//! The local WebSocket gateway of `ferry dev` with real WebSocket clients, on the embedded
//! adapters and on the AWS adapters against moto (DynamoDB for connections and events, the
//! AWS SDK's Management API client posting to the gateway, as `ferry dev --backend aws`
//! runs): `$connect` authentication, subscribe/replay/resume with gap-free seqs, tenant
//! isolation, malformed frames, the Management API (410 cleanup), status changes pushed
//! as they are written, and fan-out to 1,000 connections.

use std::sync::Arc;
use std::time::Duration;

use ferry_cli::gateway::{self, Gateway};
use ferry_cli::server;
use ferry_cli::stack::{self, BackendKind, Stack, StackOptions};
use ferry_core::ports::Connection;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const ACME: &str = "k-acme";
const OTHER: &str = "k-other";

struct Env {
    http: String,
    ws: String,
    gw: Arc<Gateway>,
    stack: Stack,
    client: reqwest::Client,
}

/// What a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Embedded stores; progress posted straight into the gateway's registry.
    Embedded,
    /// Embedded stores; progress posted by `ApiGatewayNotifier` (SigV4 over HTTP) to the
    /// gateway's own Management API.
    EmbeddedSdkNotifier,
    /// `ferry dev --backend aws`: DynamoDB and SQS on moto, and the SDK notifier.
    Aws,
}

/// The stack and gateway in-process; `None` when the setup needs moto and it is not
/// installed (never in CI: there a missing moto fails the test).
async fn start(setup: Setup, dev_progress: bool) -> Option<Env> {
    let mut opts = StackOptions::embedded();
    opts.api_keys = vec![format!("{ACME}=acme"), format!("{OTHER}=other")];
    opts.config.rate_limit_per_s = 0.0;
    let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = ws_listener.local_addr().unwrap();
    if setup == Setup::Aws {
        let moto = ferry_tests::moto::shared()?;
        opts.backend = BackendKind::Aws;
        opts.aws_endpoint = Some(moto.endpoint.clone());
        opts.table = ferry_tests::backends::unique_name();
        opts.queue = opts.table.clone();
    }
    opts.management_endpoint = (setup != Setup::Embedded).then(|| format!("http://{ws_addr}"));
    let stack = stack::build(&opts).await.expect("stack");
    let gw = Gateway::new(&stack, dev_progress);
    tokio::spawn(gateway::serve(ws_listener, gw.clone(), std::future::pending()));
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http_listener.local_addr().unwrap();
    tokio::spawn(server::serve(http_listener, server::Mode::Api(stack.api.clone()), std::future::pending()));
    // The Management API and the progress driver take the stack's token.
    let mut headers = http::HeaderMap::new();
    headers.insert("x-ferry-dev-token", stack.dev_token.parse().unwrap());
    let client = reqwest::Client::builder().default_headers(headers).build().unwrap();
    Some(Env { http: format!("http://{http_addr}"), ws: format!("ws://{ws_addr}"), gw, stack, client })
}

/// Each named test on the embedded adapters and on the AWS adapters (moto).
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() { super::$name(super::Setup::Embedded).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn aws() { super::$name(super::Setup::Aws).await }
        }
    )*};
}

on_both!(
    connect_is_authenticated,
    subscribe_replay_and_resume_without_gaps,
    other_tenants_jobs_look_missing,
    malformed_frames_get_errors_and_huge_ones_close_1009,
    management_api_and_gone_cleanup,
    status_changes_reach_subscribers,
    many_connections_all_receive_an_event,
    dev_progress_is_off_by_default,
);

impl Env {
    async fn connect(&self, key: &str) -> Ws {
        let (ws, resp) = tokio_tungstenite::connect_async(format!("{}/?token={key}", self.ws)).await.expect("connects");
        assert_eq!(resp.status(), 101);
        ws
    }

    /// Connects and returns the socket with its connection id (the only new one).
    async fn connect_id(&self, key: &str) -> (Ws, String) {
        let before = self.gw.registry.ids();
        let ws = self.connect(key).await;
        let ids: Vec<String> = self.gw.registry.ids().into_iter().filter(|i| !before.contains(i)).collect();
        assert_eq!(ids.len(), 1);
        (ws, ids[0].clone())
    }

    async fn submit(&self, key: &str) -> String {
        let body = json!({"model": "smollm2-135m-instruct", "input": {"prompt": "hi"}});
        let models: Value = self
            .client
            .get(format!("{}/v1/models", self.http))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let model = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["task"] == "text-generation" || m["task"] == "text_generation")
            .unwrap_or(&models["models"][0]);
        let mut body = body;
        body["model"] = model["id"].clone();
        if model["task"] != "text-generation" && model["task"] != "text_generation" {
            body["input"] = json!({"texts": ["hi"]});
        }
        let resp =
            self.client.post(format!("{}/v1/jobs", self.http)).bearer_auth(key).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "submit: {}", resp.status());
        let job: Value = resp.json().await.unwrap();
        job["id"].as_str().unwrap().to_string()
    }

    async fn drive(&self, job: &str, index: u32) -> reqwest::Response {
        let body = json!({"type": "token", "index": index, "id": 5, "text": format!("t{index}"), "logprob": null});
        self.client.post(format!("{}/dev/jobs/{job}/progress", self.http_gw())).json(&body).send().await.unwrap()
    }

    fn http_gw(&self) -> String {
        self.ws.replace("ws://", "http://")
    }

    /// Waits until the gateway and the store have forgotten `id` ($disconnect ran).
    async fn wait_gone(&self, id: &str) {
        for _ in 0..200 {
            if !self.gw.registry.ids().iter().any(|i| i == id)
                && self.stack.root.ports.connections.get(id).await.unwrap().is_none()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("connection {id} was not cleaned up");
    }
}

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

/// Asserts that nothing arrives for a while.
async fn quiet(ws: &mut Ws) {
    if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
        panic!("unexpected frame {m:?}");
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn subscribe(ws: &mut Ws, job: &str, after: Option<u64>) -> Value {
    let mut msg = json!({"action": "subscribe", "job_id": job});
    if let Some(a) = after {
        msg["after_seq"] = a.into();
    }
    send(ws, msg).await;
    recv(ws).await
}

/// The events a frame carries: one (`event`) or several coalesced (`events`).
fn events_of(frame: &Value) -> Vec<Value> {
    match frame["action"].as_str() {
        Some("event") => vec![frame["event"].clone()],
        Some("events") => frame["events"].as_array().expect("an events array").clone(),
        _ => panic!("not an event frame: {frame}"),
    }
}

/// The next `n` events, however they are framed.
/// The next `n` events, as a client must read them (docs/PROGRESS.md): a live event may
/// also come in the replay that follows a subscribe, so repeated seqs are dropped.
async fn recv_events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    while out.len() < n {
        for e in events_of(&recv(ws).await) {
            if !out.iter().any(|o| o["seq"] == e["seq"]) {
                out.push(e);
            }
        }
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

async fn connect_is_authenticated(setup: Setup) {
    let Some(env) = start(setup, true).await else { return };
    for url in [format!("{}/", env.ws), format!("{}/?token=nope", env.ws)] {
        match tokio_tungstenite::connect_async(url).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), 401);
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap_or(b"{}")).unwrap();
                assert_eq!(body["error"]["type"], "unauthorized", "{body}");
            }
            other => panic!("expected a 401, got {other:?}"),
        }
    }
    // A bad Bearer header is refused too; a good one connects.
    let mut req = format!("{}/", env.ws).into_client_request().unwrap();
    req.headers_mut().insert("authorization", "Bearer nope".parse().unwrap());
    assert!(matches!(tokio_tungstenite::connect_async(req).await, Err(WsError::Http(r)) if r.status() == 401));
    let mut req = format!("{}/", env.ws).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {ACME}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("header auth");
    send(&mut ws, json!({"action": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"action": "pong"}));
    // ?token= works as well.
    let mut ws = env.connect(ACME).await;
    send(&mut ws, json!({"action": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"action": "pong"}));
    assert!(env.gw.registry.len() == 2);
}

async fn subscribe_replay_and_resume_without_gaps(setup: Setup) {
    let Some(env) = start(setup, true).await else { return };
    let (mut ws, id) = env.connect_id(ACME).await;
    assert!(env.stack.root.ports.connections.get(&id).await.unwrap().is_some(), "$connect recorded it");
    let job = env.submit(ACME).await;
    let ack = subscribe(&mut ws, &job, None).await;
    assert_eq!(ack["action"], "subscribed", "{ack}");
    assert_eq!((ack["job_id"].as_str(), ack["last_seq"].as_u64()), (Some(job.as_str()), Some(0)));
    for i in 0..5 {
        let resp = env.drive(&job, i).await;
        assert_eq!(resp.status(), 200);
        let stored: Value = resp.json().await.unwrap();
        assert_eq!(stored["seq"], i as u64 + 1);
    }
    let events = recv_events(&mut ws, 5).await;
    assert_eq!(seqs(&events), [1, 2, 3, 4, 5]);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["text"], format!("t{i}"), "{e}");
    }
    quiet(&mut ws).await;

    ws.close(None).await.unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    env.wait_gone(&id).await;
    for i in 5..7 {
        let resp = env.drive(&job, i).await;
        assert_eq!(resp.headers()["x-ferry-fan-out"], "delivered=0 gone=0 failed=0");
    }

    let mut ws = env.connect(ACME).await;
    let ack = subscribe(&mut ws, &job, Some(5)).await;
    assert_eq!((ack["action"].as_str(), ack["last_seq"].as_u64()), (Some("subscribed"), Some(7)), "{ack}");
    // The replay is coalesced: both stored events in one frame.
    let replay = recv(&mut ws).await;
    assert_eq!(replay["action"], "events", "{replay}");
    assert_eq!(seqs(&events_of(&replay)), [6, 7]);
    quiet(&mut ws).await;
    // Live events keep coming after the replay, one to a frame when they come one by one.
    env.drive(&job, 7).await;
    let live = recv(&mut ws).await;
    assert_eq!((live["action"].as_str(), seqs(&events_of(&live))), (Some("event"), vec![8]));
    send(&mut ws, json!({"action": "unsubscribe", "job_id": job})).await;
    assert_eq!(recv(&mut ws).await["action"], "unsubscribed");
    env.drive(&job, 8).await;
    quiet(&mut ws).await;

    // The dev driver's own errors.
    assert_eq!(env.drive("01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B", 0).await.status(), 404);
    assert_eq!(env.drive("not-a-job", 0).await.status(), 404);
    let bad = env
        .client
        .post(format!("{}/dev/jobs/{job}/progress", env.http_gw()))
        .body(r#"{"type":"nope"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

async fn other_tenants_jobs_look_missing(setup: Setup) {
    let Some(env) = start(setup, true).await else { return };
    let job = env.submit(ACME).await;
    let mut ws = env.connect(OTHER).await;
    let theirs = subscribe(&mut ws, &job, None).await;
    let missing = subscribe(&mut ws, "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B", None).await;
    assert_eq!(theirs["action"], "error", "{theirs}");
    assert_eq!(theirs["error"]["type"], "not_found", "{theirs}");
    assert_eq!(theirs, missing);
    // And no events leak.
    env.drive(&job, 0).await;
    quiet(&mut ws).await;
}

async fn malformed_frames_get_errors_and_huge_ones_close_1009(setup: Setup) {
    let Some(env) = start(setup, true).await else { return };
    let (mut ws, id) = env.connect_id(ACME).await;
    ws.send(Message::Text("not json".into())).await.unwrap();
    let e = recv(&mut ws).await;
    assert_eq!((e["action"].as_str(), e["error"]["type"].as_str()), (Some("error"), Some("invalid_request")), "{e}");
    send(&mut ws, json!({"action": "nope"})).await;
    assert_eq!(recv(&mut ws).await["error"]["type"], "invalid_request");
    send(&mut ws, json!({"no_action": 1})).await;
    assert_eq!(recv(&mut ws).await["error"]["field"], "action");
    send(&mut ws, json!({"action": "subscribe", "job_id": "x"})).await;
    assert_eq!(recv(&mut ws).await["error"]["field"], "job_id");
    ws.send(Message::Binary(vec![1u8, 2, 3].into())).await.unwrap();
    assert_eq!(recv(&mut ws).await["error"]["type"], "invalid_request");
    // 32 KiB < frame <= 128 KiB: WsApi's own limit answers 413 in an error frame.
    ws.send(Message::Text("x".repeat(64 * 1024).into())).await.unwrap();
    assert_eq!(recv(&mut ws).await["error"]["type"], "payload_too_large");
    // Over 128 KiB: closed with 1009, and the connection is cleaned up.
    ws.send(Message::Text("x".repeat(200 * 1024).into())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Size);
                break;
            }
            Some(Ok(Message::Text(t))) => panic!("unexpected {t}"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    env.wait_gone(&id).await;

    // Far over (beyond what the gateway reads whole): still 1009.
    // The gateway closes while the client is still writing, so the write may fail (a broken
    // pipe, a reset); the close frame is then read when it reached the client before that.
    let (mut ws, id) = env.connect_id(ACME).await;
    match ws.send(Message::Text("y".repeat(600 * 1024).into())).await {
        Ok(()) => expect_close(&mut ws, CloseCode::Size).await,
        Err(tokio_tungstenite::tungstenite::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) =>
        {
            if let Ok(Some(Ok(Message::Close(Some(frame))))) =
                tokio::time::timeout(Duration::from_secs(10), ws.next()).await
            {
                assert_eq!(frame.code, CloseCode::Size);
            }
        }
        Err(e) => panic!("sending the huge frame: {e}"),
    }
    env.wait_gone(&id).await;
}

async fn expect_close(ws: &mut Ws, code: CloseCode) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, code);
                return;
            }
            Some(Ok(Message::Text(t))) => panic!("unexpected {t}"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn management_api_and_gone_cleanup(setup: Setup) {
    let Some(env) = start(setup, true).await else { return };
    let base = env.http_gw();
    // Without the dev token (or with another), neither answers.
    let anyone = reqwest::Client::new();
    for (path, token) in
        [("/@connections/x", None), ("/dev/jobs/01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B/progress", Some("fdt_wrong"))]
    {
        let mut req = anyone.post(format!("{base}{path}")).body(r#"{"type":"log","level":"info","message":"x"}"#);
        if let Some(t) = token {
            req = req.header("x-ferry-dev-token", t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        assert_eq!(resp.json::<Value>().await.unwrap()["error"]["field"], "x-ferry-dev-token");
    }
    for path in ["/@connections/AAAAAAAAAAAAAA%3D%3D", "/dev/@connections/nope"] {
        let resp = env.client.post(format!("{base}{path}")).body("hi").send().await.unwrap();
        assert_eq!(resp.status(), 410);
        assert_eq!(resp.headers()["x-amzn-errortype"], "GoneException");
        let body: Value = resp.json().await.unwrap();
        assert!(body["message"].is_string());
        assert_eq!(env.client.get(format!("{base}{path}")).send().await.unwrap().status(), 410);
        assert_eq!(env.client.delete(format!("{base}{path}")).send().await.unwrap().status(), 410);
    }

    let (mut ws, id) = env.connect_id(ACME).await;
    let resp = env.client.post(format!("{base}/prod/@connections/{id}")).body(r#"{"hello":1}"#).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(recv(&mut ws).await, json!({"hello": 1}));
    let big = env.client.post(format!("{base}/@connections/{id}")).body("x".repeat(129 * 1024)).send().await.unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(big.headers()["x-amzn-errortype"], "PayloadTooLargeException");
    let info: Value = env.client.get(format!("{base}/@connections/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["identity"]["sourceIp"], "127.0.0.1", "{info}");
    for f in ["connectedAt", "lastActiveAt"] {
        let t = info[f].as_str().unwrap();
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).expect("RFC 3339");
    }
    let del = env.client.delete(format!("{base}/@connections/{id}")).send().await.unwrap();
    assert_eq!(del.status(), 204);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
    env.wait_gone(&id).await;
    assert_eq!(env.client.get(format!("{base}/@connections/{id}")).send().await.unwrap().status(), 410);

    // A connection record whose socket is gone (a lost $disconnect): the publish gets
    // Gone and removes it.
    stale_connection_is_removed_on_publish(&env).await;
}

async fn stale_connection_is_removed_on_publish(env: &Env) {
    let job = env.submit(ACME).await;
    let now = env.stack.root.ports.clock.now();
    let stale = Connection {
        id: "c3RhbGUtY29ubmVjdGlvbg==".into(),
        tenant: ferry_core::TenantId::new("acme").unwrap(),
        connected_at: now,
        expires_at: now + 60_000,
    };
    env.stack.root.ports.connections.put(&stale).await.unwrap();
    env.stack.root.ports.connections.subscribe(&stale.id, &job.parse().unwrap()).await.unwrap();
    let mut ws = env.connect(ACME).await;
    subscribe(&mut ws, &job, None).await;
    let resp = env.drive(&job, 0).await;
    assert_eq!(resp.headers()["x-ferry-fan-out"], "delivered=1 gone=1 failed=0");
    assert_eq!(seqs(&recv_events(&mut ws, 1).await), [1]);
    assert!(env.stack.root.ports.connections.get(&stale.id).await.unwrap().is_none(), "410 removed the record");
    assert_eq!(env.stack.root.ports.connections.subscribers(&job.parse().unwrap()).await.unwrap().len(), 1);
}

async fn many_connections_all_receive_an_event(setup: Setup) {
    // Each connection costs two descriptors here (client and server side).
    let n = 1000.min(open_files_limit().saturating_sub(200) / 2).max(100);
    let Some(env) = start(setup, true).await else { return };
    let job = env.submit(ACME).await;
    // Clients connect and subscribe 32 at a time, as a crowd would.
    let env = Arc::new(env);
    let mut sockets = Vec::with_capacity(n);
    let mut joining = tokio::task::JoinSet::new();
    for i in 0..n {
        let (env, job) = (env.clone(), job.clone());
        joining.spawn(async move {
            let mut ws = env.connect(ACME).await;
            assert_eq!(subscribe(&mut ws, &job, None).await["action"], "subscribed");
            ws
        });
        if joining.len() == 32 || i == n - 1 {
            while let Some(ws) = joining.join_next().await {
                sockets.push(ws.unwrap());
            }
        }
    }
    let resp = env.drive(&job, 0).await;
    assert_eq!(resp.headers()["x-ferry-fan-out"], format!("delivered={n} gone=0 failed=0").as_str());
    for ws in &mut sockets {
        assert_eq!(seqs(&recv_events(ws, 1).await), [1]);
    }
}

/// The soft limit on open files (Linux), or a conservative guess.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            let line = l.lines().find(|l| l.starts_with("Max open files"))?.to_string();
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

#[tokio::test]
async fn aws_notifier_goes_through_the_management_api() {
    let env = start(Setup::EmbeddedSdkNotifier, true).await.expect("no moto needed");
    let (mut ws, _id) = env.connect_id(ACME).await;
    let job = env.submit(ACME).await;
    // The ack and the events go WsApi -> ApiGatewayNotifier (SigV4, HTTP) -> this gateway.
    assert_eq!(subscribe(&mut ws, &job, None).await["action"], "subscribed");
    for i in 0..3 {
        env.drive(&job, i).await;
    }
    for want in 1..=3 {
        assert_eq!(seqs(&recv_events(&mut ws, 1).await), [want]);
    }
    stale_connection_is_removed_on_publish(&env).await;
}

async fn dev_progress_is_off_by_default(setup: Setup) {
    let Some(env) = start(setup, false).await else { return };
    let job = env.submit(ACME).await;
    assert_eq!(env.drive(&job, 0).await.status(), 404);
}

/// A cancel through the HTTP API reaches a subscriber as a `status` event at once (the job
/// service publishes every status change it writes), ending the stream.
async fn status_changes_reach_subscribers(setup: Setup) {
    let Some(env) = start(setup, true).await else { return };
    let job = env.submit(ACME).await;
    let mut ws = env.connect(ACME).await;
    assert_eq!(subscribe(&mut ws, &job, None).await["action"], "subscribed");
    env.drive(&job, 0).await;
    let resp = env.client.post(format!("{}/v1/jobs/{job}/cancel", env.http)).bearer_auth(ACME).send().await.unwrap();
    assert_eq!(resp.status(), 200, "a queued job is cancelled at once");
    let events = recv_events(&mut ws, 2).await;
    assert_eq!(seqs(&events), [1, 2]);
    assert_eq!((events[1]["type"].as_str(), events[1]["status"].as_str()), (Some("status"), Some("cancelled")));
    assert_eq!(events[1]["attempt"], 1);
    quiet(&mut ws).await;
}

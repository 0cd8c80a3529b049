//! `ferry dev`'s whole stack in the test process, as a client meets it: the HTTP API and the
//! WebSocket API on loopback ports, in-process executors, on the embedded adapters or on the
//! AWS adapters against moto (a fresh table, queue and bucket per stack).

use std::sync::Arc;
use std::time::Duration;

use ferry_cli::gateway::{self, Gateway};
use ferry_cli::server;
use ferry_cli::stack::{self, BackendKind, StackOptions};
use ferry_core::progress::{EventBody, ProgressEvent};
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A running stack and a client of it, with one API key.
pub struct DevStack {
    pub http: String,
    ws: String,
    key: String,
    pub client: reqwest::Client,
    stop: ferry_executor::worker::Shutdown,
    running: tokio::task::JoinHandle<()>,
}

impl DevStack {
    /// Starts the stack `opts` describes (on moto when `aws`; None when moto is missing), with
    /// `key` for tenant `acme`, no rate limit and in-process executors polling every 500 ms.
    pub async fn start(aws: bool, key: &str, mut opts: StackOptions) -> Option<DevStack> {
        let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_addr = ws_listener.local_addr().unwrap();
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = format!("http://{}", http_listener.local_addr().unwrap());
        opts.api_keys = vec![format!("{key}=acme")];
        opts.config.rate_limit_per_s = 0.0;
        opts.executors = true;
        opts.api_url = Some(http.clone());
        opts.worker.poll_wait = Duration::from_millis(500);
        if aws {
            let moto = crate::moto::shared()?;
            opts.backend = BackendKind::Aws;
            opts.aws_endpoint = Some(moto.endpoint.clone());
            opts.table = crate::backends::unique_name();
            opts.queue = opts.table.clone();
            opts.results_bucket = opts.table.clone();
            opts.management_endpoint = Some(format!("http://{ws_addr}"));
        }
        let stack = Arc::new(stack::build(&opts).await.expect("stack"));
        let stop = ferry_executor::worker::Shutdown::default();
        let running = {
            let (stack, stop) = (stack.clone(), stop.clone());
            tokio::spawn(async move { stack.run(stop).await })
        };
        tokio::spawn(gateway::serve(ws_listener, Gateway::new(&stack, false), std::future::pending()));
        tokio::spawn(server::serve(http_listener, server::Mode::Stack(stack), std::future::pending()));
        Some(DevStack {
            http,
            ws: format!("ws://{ws_addr}/?token={key}"),
            key: key.to_string(),
            client: reqwest::Client::new(),
            stop,
            running,
        })
    }

    /// `POST /v1/jobs` with `body`: the status and the answer.
    pub async fn submit(&self, body: &Value) -> (u16, Value) {
        self.post("/v1/jobs", body).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp =
            self.client.post(format!("{}{path}", self.http)).bearer_auth(&self.key).json(body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/inputs` with `bytes` as the body: the status and the answer.
    pub async fn upload(&self, bytes: Vec<u8>) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}/v1/inputs", self.http))
            .bearer_auth(&self.key)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.http)).bearer_auth(&self.key).send().await.unwrap()
    }

    /// The job's view.
    pub async fn job(&self, id: &str) -> Value {
        self.get(&format!("/v1/jobs/{id}")).await.json().await.unwrap()
    }

    /// A WebSocket subscribed to job `id`, as a client follows it.
    pub async fn follow(&self, id: &str) -> Follower {
        let (mut ws, _) = tokio_tungstenite::connect_async(&self.ws).await.unwrap();
        ws.send(Message::Text(json!({"action": "subscribe", "job_id": id}).to_string().into())).await.unwrap();
        Follower(ws)
    }

    /// Submits `body` (a 202 expected) while following the job; its id and every event to
    /// its final status, within `limit`.
    pub async fn run(&self, body: &Value, limit: Duration) -> (String, Vec<ProgressEvent>) {
        let (status, job) = self.submit(body).await;
        assert_eq!(status, 202, "{job}");
        let id = job["id"].as_str().unwrap().to_string();
        let events = self.follow(&id).await.until_final(limit).await;
        (id, events)
    }

    /// Polls job `id` until its status is terminal (within `limit`); its view.
    pub async fn settled(&self, id: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let view = self.job(id).await;
            let terminal = view["status"].as_str().and_then(|s| s.parse::<ferry_core::job::JobStatus>().ok());
            if terminal.is_some_and(|s| s.is_terminal()) {
                return view;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {id} still {} after {limit:?}", view["status"]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(self) {
        self.stop.trigger();
        tokio::time::timeout(Duration::from_secs(60), self.running).await.expect("the executor stops").unwrap();
    }
}

/// The output of job `id` (its `view`), stored as an object because it is large, checked
/// as a client reads it: the view has `output: null`, its size and an expiring URL that needs
/// no credentials; the output route gives the same bytes; the follower's `events` hold a
/// `result` reference pointing at that route. The output and its size in bytes.
pub async fn stored_output(dev: &DevStack, id: &str, view: &Value, events: &[ProgressEvent]) -> (Value, u64) {
    assert!(view["output"].is_null(), "a large output is not inline");
    let bytes = view["output_bytes"].as_u64().expect("output_bytes");
    assert!(view["output_expires_at"].is_string(), "{view}");
    let url = view["output_url"].as_str().expect("output_url");
    let by_url = reqwest::get(url).await.unwrap();
    assert_eq!(by_url.status(), 200, "{url}");
    let by_url = by_url.bytes().await.unwrap();
    assert_eq!(by_url.len() as u64, bytes);
    // The output route gives the same (a redirect on AWS, followed without the key).
    let routed = dev.get(&format!("/v1/jobs/{id}/output")).await;
    assert_eq!(routed.status(), 200);
    assert_eq!(routed.bytes().await.unwrap(), by_url);
    // The follower got a reference, small enough for a frame.
    let result = events.iter().find_map(|e| match &e.body {
        EventBody::Result { output, output_url, output_bytes } => Some((output, output_url, output_bytes)),
        _ => None,
    });
    let (output, output_url, output_bytes) = result.expect("a result event");
    assert!(output.is_null());
    assert_eq!(output_url.as_deref(), Some(format!("{}/v1/jobs/{id}/output", dev.http).as_str()));
    assert_eq!(*output_bytes, Some(bytes));
    (serde_json::from_slice(&by_url).unwrap(), bytes)
}

/// A WebSocket subscribed to one job.
pub struct Follower(tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>);

impl Follower {
    /// Every event up to the job's final status, within `limit`.
    pub async fn until_final(mut self, limit: Duration) -> Vec<ProgressEvent> {
        crate::follow::events_until_final(&mut self.0, limit).await
    }
}

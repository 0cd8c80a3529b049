//! Results and inputs of any size, end to end on `ferry dev`'s stack with its in-process
//! executor serving the real all-MiniLM-L6-v2 (`FERRY_MINILM_DIR`), on the embedded
//! adapters and on the AWS adapters against moto: embedding jobs of 128 and 1,000 texts
//! succeed; the outputs (and the 1,000 texts' input) are stored as objects; the view has
//! `output: null` with a URL that fetches the output without credentials; the output route
//! answers it; a WebSocket follower gets a `result` reference; and every vector equals what
//! the model computes for the same texts directly.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use ferry_cli::gateway::{self, Gateway};
use ferry_cli::server;
use ferry_cli::stack::{self, BackendKind, StackOptions};
use ferry_core::progress::{EventBody, ProgressEvent};
use ferry_executor::models::bert::BertEmbedder;
use ferry_executor::models::{NoProgress, Placement, RunOutcome};
use ferry_executor::testing::minilm_dir;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "k-results";
/// `n` distinct texts of about 100 bytes each.
fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!("text number {i}: the quick brown fox jumps over the lazy dog near the river bank, twice {}", i * 7)
        })
        .collect()
}

fn vectors(output: &Value) -> Vec<Vec<f32>> {
    let rows = output["embeddings"].as_array().expect("embeddings");
    rows.iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect()
}

struct Dev {
    http: String,
    ws: String,
    client: reqwest::Client,
    stop: ferry_executor::worker::Shutdown,
    running: tokio::task::JoinHandle<()>,
}

async fn start(aws: bool, dir: &std::path::Path) -> Option<Dev> {
    let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = ws_listener.local_addr().unwrap();
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = format!("http://{}", http_listener.local_addr().unwrap());
    let mut opts = StackOptions::embedded();
    opts.api_keys = vec![format!("{KEY}=acme")];
    opts.models = vec![format!("minilm={}", dir.display())];
    opts.config.rate_limit_per_s = 0.0;
    opts.executors = true;
    opts.api_url = Some(http.clone());
    opts.worker.poll_wait = Duration::from_millis(500);
    if aws {
        let moto = ferry_tests::moto::shared()?;
        opts.backend = BackendKind::Aws;
        opts.aws_endpoint = Some(moto.endpoint.clone());
        opts.table = ferry_tests::backends::unique_name();
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
    Some(Dev { http, ws: format!("ws://{ws_addr}/?token={KEY}"), client: reqwest::Client::new(), stop, running })
}

impl Dev {
    /// Submits an embeddings job of `texts` while following it; returns its id and events.
    async fn run(&self, texts: &[String]) -> (String, Vec<ProgressEvent>) {
        let (mut ws, _) = tokio_tungstenite::connect_async(&self.ws).await.unwrap();
        let body = json!({"model": "minilm", "input": {"texts": texts}});
        let resp =
            self.client.post(format!("{}/v1/jobs", self.http)).bearer_auth(KEY).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 202);
        let job: Value = resp.json().await.unwrap();
        let id = job["id"].as_str().unwrap().to_string();
        ws.send(Message::Text(json!({"action": "subscribe", "job_id": id}).to_string().into())).await.unwrap();
        let events = ferry_tests::follow::events_until_final(&mut ws, Duration::from_secs(240)).await;
        (id, events)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.http)).bearer_auth(KEY).send().await.unwrap()
    }

    /// Checks job `id` (of `texts`) end to end and returns its vectors.
    async fn check(&self, id: &str, events: &[ProgressEvent], texts: &[String]) -> Vec<Vec<f32>> {
        let view: Value = self.get(&format!("/v1/jobs/{id}")).await.json().await.unwrap();
        assert_eq!(view["status"], "succeeded", "{view}");
        assert!(view["output"].is_null(), "a large output is not inline");
        let bytes = view["output_bytes"].as_u64().expect("output_bytes");
        assert!(bytes > ferry_core::objects::INLINE_BYTES as u64, "{bytes}");
        assert!(view["output_expires_at"].is_string(), "{view}");
        // The view's URL needs no credentials.
        let url = view["output_url"].as_str().expect("output_url");
        let by_url = reqwest::get(url).await.unwrap();
        assert_eq!(by_url.status(), 200, "{url}");
        let by_url = by_url.bytes().await.unwrap();
        assert_eq!(by_url.len() as u64, bytes);
        // The output route gives the same (a redirect on AWS, followed without the key).
        let routed = self.get(&format!("/v1/jobs/{id}/output")).await;
        assert_eq!(routed.status(), 200);
        assert_eq!(routed.bytes().await.unwrap(), by_url);
        // The follower got a reference, small enough for a frame.
        let result = events.iter().find_map(|e| match &e.body {
            EventBody::Result { output, output_url, output_bytes } => Some((output, output_url, output_bytes)),
            _ => None,
        });
        let (output, output_url, output_bytes) = result.expect("a result event");
        assert!(output.is_null());
        assert_eq!(output_url.as_deref(), Some(format!("{}/v1/jobs/{id}/output", self.http).as_str()));
        assert_eq!(*output_bytes, Some(bytes));
        let output: Value = serde_json::from_slice(&by_url).unwrap();
        let got = vectors(&output);
        assert_eq!(got.len(), texts.len());
        got
    }

    async fn stop(self) {
        self.stop.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.running).await.expect("the executor stops").unwrap();
    }
}

async fn large_embedding_jobs(aws: bool) {
    let Some(dir) = minilm_dir() else { return };
    let Some(dev) = start(aws, &dir).await else { return };
    let model = BertEmbedder::load(&dir, &Placement { device: Device::Cpu, dtype: DType::F32 }).unwrap();
    let direct = |texts: &[String]| match model.embed(texts, &NoProgress).unwrap() {
        RunOutcome::Done(out) => vectors(&out),
        other => panic!("{other:?}"),
    };

    // 128 texts: a small input, an output of about half a megabyte.
    let small = texts(128);
    let (id, events) = dev.run(&small).await;
    let view: Value = dev.get(&format!("/v1/jobs/{id}")).await.json().await.unwrap();
    assert_eq!(view["input"]["texts"].as_array().map(Vec::len), Some(128), "a small input stays inline");
    assert_eq!(dev.check(&id, &events, &small).await, direct(&small));

    // 1,000 texts: the input (about 100 KB) is stored too.
    let many = texts(1000);
    let (id, events) = dev.run(&many).await;
    let view: Value = dev.get(&format!("/v1/jobs/{id}")).await.json().await.unwrap();
    assert!(view["input"].is_null(), "a large input is stored: {}", view["input"]);
    assert!(view["input_bytes"].as_u64() > Some(ferry_core::objects::INLINE_BYTES as u64), "{}", view["input_bytes"]);
    assert_eq!(dev.check(&id, &events, &many).await, direct(&many));
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_embedding_jobs_embedded() {
    large_embedding_jobs(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_embedding_jobs_aws() {
    large_embedding_jobs(true).await;
}

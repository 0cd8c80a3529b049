//! Progress delivery (issue 3): `publish_progress` through `ferry dev`'s WebSocket gateway
//! (event store, subscriber lookup, fan-out through the notifier, one WebSocket per client)
//! to 1, 100 and 1000 subscribed clients, beside the ceiling: a raw WebSocket server on the
//! same axum/tungstenite stack broadcasting the same frames. Real clients
//! (tokio-tungstenite) on loopback measure the latency from just before publish to receipt.
//!
//! `cargo bench -p ferry-benches --bench delivery` prints a markdown table.
//! Knob: FERRY_BENCH_SCALE (default 1) multiplies the number of events per run.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use bytes::Bytes;
use ferry_cli::gateway::{self, Gateway};
use ferry_cli::stack::{self, DEV_API_KEY, StackOptions};
use ferry_core::config::Config;
use ferry_core::progress::{EventBody, ProgressEvent};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::Message;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn micros() -> u64 {
    base().elapsed().as_micros() as u64
}

/// What one run measured.
struct Run {
    /// Deliveries (events × clients) per second, from the first publish to the last receipt.
    deliveries_per_s: f64,
    /// Events stored and fanned out per second (publisher side).
    publishes_per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

/// A client: connects, optionally subscribes, then records the latency of `m` events.
async fn client(url: String, subscribe: Option<String>, m: usize, ready: mpsc::Sender<()>) -> Vec<u64> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    if let Some(job) = subscribe {
        ws.send(Message::text(format!(r#"{{"action":"subscribe","job_id":"{job}"}}"#))).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.to_text().unwrap_or("").contains("\"subscribed\"") {
                break;
            }
        }
    }
    ready.send(()).await.unwrap();
    let mut latencies = Vec::with_capacity(m);
    while latencies.len() < m {
        let Some(Ok(msg)) = ws.next().await else { break };
        let Ok(text) = msg.to_text() else { continue };
        let v: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => continue,
        };
        // One event per frame (`event`) or several coalesced (`events`).
        let events = match v["action"].as_str() {
            Some("event") => vec![v["event"].clone()],
            Some("events") => v["events"].as_array().cloned().unwrap_or_default(),
            _ => vec![],
        };
        let now = micros();
        for e in events {
            if let Some(sent) = e["message"].as_str().and_then(|s| s.parse::<u64>().ok()) {
                latencies.push(now.saturating_sub(sent));
            }
        }
    }
    latencies
}

async fn clients(url: &str, subscribe: Option<String>, n: usize, m: usize) -> Vec<tokio::task::JoinHandle<Vec<u64>>> {
    let (tx, mut rx) = mpsc::channel(n);
    let handles: Vec<_> =
        (0..n).map(|_| tokio::spawn(client(url.to_string(), subscribe.clone(), m, tx.clone()))).collect();
    for _ in 0..n {
        rx.recv().await.expect("client ready");
    }
    handles
}

fn summarize(handles_out: Vec<Vec<u64>>, n: usize, m: usize, total: Duration, publish: Duration) -> Run {
    let mut all: Vec<u64> = handles_out.into_iter().flatten().collect();
    assert_eq!(all.len(), n * m, "every client got every event");
    all.sort_unstable();
    Run {
        deliveries_per_s: (n * m) as f64 / total.as_secs_f64(),
        publishes_per_s: m as f64 / publish.as_secs_f64(),
        p50_us: all[all.len() / 2],
        p99_us: all[(all.len() * 99 / 100).min(all.len() - 1)],
    }
}

fn log_event(seq: u64) -> EventBody {
    let _ = seq;
    EventBody::Log { level: "info".into(), message: micros().to_string() }
}

/// How ferry publishes in a run.
#[derive(Clone, Copy, PartialEq)]
enum Publish {
    /// `publish_progress` per event, each awaited: one append and one fan-out per event.
    OneByOne,
    /// `ProgressStream::push` per event, then one flush: bursts are stored in batched
    /// appends and delivered in coalesced frames (what the executor does with tokens).
    Stream,
}

async fn run_ferry(n: usize, m: usize, mode: Publish) -> Run {
    let opts =
        StackOptions { config: Config { rate_limit_per_s: 0.0, ..Config::default() }, ..StackOptions::embedded() };
    let stack = stack::build(&opts).await.unwrap();
    let gw = Gateway::new(&stack, false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/?token={DEV_API_KEY}", listener.local_addr().unwrap());
    tokio::spawn(gateway::serve(listener, gw.clone(), std::future::pending()));
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/jobs")
        .header("authorization", format!("Bearer {DEV_API_KEY}"))
        .header("content-type", "application/json")
        .body(Bytes::from_static(br#"{"model":"tiny-llama","input":{"prompt":"bench"}}"#))
        .unwrap();
    let resp = stack.api.handle(req).await;
    let job: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    let id_str = job["id"].as_str().unwrap().to_string();
    let id = id_str.parse().unwrap();
    let handles = clients(&url, Some(id_str), n, m).await;
    let t0 = Instant::now();
    match mode {
        Publish::OneByOne => {
            for i in 0..m {
                gw.hub.publish_progress(&id, log_event(i as u64)).await.expect("published");
            }
        }
        Publish::Stream => {
            let stream = ferry_core::stream::ProgressStream::new(gw.hub.clone(), id);
            for i in 0..m {
                stream.push(log_event(i as u64)).expect("pushed");
            }
            stream.close().await.expect("published");
        }
    }
    let publish = t0.elapsed();
    let mut out = Vec::new();
    for h in handles {
        out.push(tokio::time::timeout(Duration::from_secs(120), h).await.expect("clients finish").unwrap());
    }
    summarize(out, n, m, t0.elapsed(), publish)
}

async fn raw_ws(State(tx): State<broadcast::Sender<Arc<str>>>, ws: WebSocketUpgrade) -> Response {
    // Subscribe before answering the upgrade: a client that has connected misses nothing.
    let mut rx = tx.subscribe();
    ws.on_upgrade(move |mut socket: WebSocket| async move {
        while let Ok(frame) = rx.recv().await {
            if socket.send(AxMessage::Text(frame.to_string().into())).await.is_err() {
                break;
            }
        }
    })
}

/// The raw server; with `pace`, event i is sent at i × pace (the rate ferry published at), so
/// latencies compare at equal load; without, as fast as the channel takes them (the ceiling).
async fn run_raw(n: usize, m: usize, pace: Option<Duration>) -> Run {
    let (tx, _) = broadcast::channel::<Arc<str>>(m + 16);
    let app = axum::Router::new().route("/", axum::routing::get(raw_ws)).with_state(tx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let handles = clients(&url, None, n, m).await;
    let job_id = ferry_core::JobId::generate(1);
    let t0 = Instant::now();
    for i in 0..m {
        if let Some(p) = pace {
            tokio::time::sleep_until((t0 + p * i as u32).into()).await;
        }
        let event = ProgressEvent { job_id, seq: i as u64 + 1, time: 0, body: log_event(i as u64) };
        let frame = String::from_utf8(ferry_core::publish::frame(&event)).unwrap();
        tx.send(frame.into()).unwrap();
        tokio::task::yield_now().await;
    }
    let publish = t0.elapsed();
    let mut out = Vec::new();
    for h in handles {
        out.push(tokio::time::timeout(Duration::from_secs(120), h).await.expect("clients finish").unwrap());
    }
    summarize(out, n, m, t0.elapsed(), publish)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let scale: usize = std::env::var("FERRY_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    base();
    println!(
        "| subscribers | events | raw ceiling deliveries/s | ferry one-by-one deliveries/s | ratio | ferry stream \
         deliveries/s | ratio | one-by-one p50 / p99 | raw at that rate p50 / p99 | stream p50 / p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, m) in [(1, 1000 * scale), (100, 200 * scale), (1000, 40 * scale)] {
        let ceiling = run_raw(n, m, None).await;
        let ferry = run_ferry(n, m, Publish::OneByOne).await;
        let stream = run_ferry(n, m, Publish::Stream).await;
        let pace = Duration::from_secs_f64(1.0 / ferry.publishes_per_s);
        let paced = run_raw(n, m, Some(pace)).await;
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "| {n} | {m} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms |",
            ceiling.deliveries_per_s,
            ferry.deliveries_per_s,
            ferry.deliveries_per_s / ceiling.deliveries_per_s,
            stream.deliveries_per_s,
            stream.deliveries_per_s / ceiling.deliveries_per_s,
            ms(ferry.p50_us),
            ms(ferry.p99_us),
            ms(paced.p50_us),
            ms(paced.p99_us),
            ms(stream.p50_us),
            ms(stream.p99_us),
        );
    }
}

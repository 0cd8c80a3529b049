//! The whole path: `ferry dev`'s stack with its in-process executor, a real job on the real
//! (tiny, random-weight) Llama from submit over HTTP to the result, with live tokens over
//! the WebSocket gateway; on the embedded adapters and on the AWS adapters against moto
//! (where progress goes through the AWS SDK's Management API client to the gateway).

use std::time::Duration;

use ferry_cli::gateway::{self, Gateway};
use ferry_cli::server;
use ferry_cli::stack::{self, BackendKind, StackOptions};
use ferry_core::JobStatus;
use ferry_core::progress::EventBody;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "k-e2e";

async fn submit_and_follow(aws: bool) {
    let ws_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = ws_listener.local_addr().unwrap();
    let mut opts = StackOptions::embedded();
    opts.api_keys = vec![format!("{KEY}=acme")];
    opts.config.rate_limit_per_s = 0.0;
    opts.executors = true;
    opts.worker.poll_wait = Duration::from_millis(500);
    if aws {
        let Some(moto) = ferry_tests::moto::shared() else { return };
        opts.backend = BackendKind::Aws;
        opts.aws_endpoint = Some(moto.endpoint.clone());
        opts.table = ferry_tests::backends::unique_name();
        opts.queue = opts.table.clone();
        opts.management_endpoint = Some(format!("http://{ws_addr}"));
    }
    let stack = std::sync::Arc::new(stack::build(&opts).await.expect("stack"));
    assert_eq!(stack.workers.len(), 1, "one pool, one executor");
    let stop = ferry_executor::worker::Shutdown::default();
    let running = {
        let (stack, stop) = (stack.clone(), stop.clone());
        tokio::spawn(async move { stack.run(stop).await })
    };
    let gw = Gateway::new(&stack, false);
    tokio::spawn(gateway::serve(ws_listener, gw, std::future::pending()));
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = format!("http://{}", http_listener.local_addr().unwrap());
    tokio::spawn(server::serve(http_listener, server::Mode::Api(stack.api.clone()), std::future::pending()));

    // Subscribe first, then submit, so every event arrives live (or in the replay).
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{ws_addr}/?token={KEY}")).await.unwrap();
    let client = reqwest::Client::new();
    let body = json!({"model": "tiny-llama", "input": {"prompt": "the river and the boat"},
        "params": {"max_new_tokens": 12, "temperature": 0.8, "seed": 7}});
    let job: Value =
        client.post(format!("{http}/v1/jobs")).bearer_auth(KEY).json(&body).send().await.unwrap().json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    ws.send(Message::Text(json!({"action": "subscribe", "job_id": id}).to_string().into())).await.unwrap();

    let mut events = ferry_tests::follow::events_until_final(&mut ws, Duration::from_secs(60)).await;
    // In order, each once, gap-free from 1 (a replay and a live copy may overlap: dedupe).
    events.sort_by_key(|e| e.seq);
    events.dedup_by_key(|e| e.seq);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    let final_job: Value =
        client.get(format!("{http}/v1/jobs/{id}")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    assert_eq!(final_job["status"], "succeeded", "{final_job}");
    let output = &final_job["output"];
    let token_ids: Vec<u32> = serde_json::from_value(output["token_ids"].clone()).unwrap();
    assert_eq!(token_ids.len(), 12, "{output}");
    assert_eq!(output["details"]["finish_reason"], "length");
    assert_eq!(output["details"]["seed"], 7);

    // The live stream carried every token, in order, with the ids and text of the result.
    let tokens: Vec<(u32, u32, String)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Token { index, id, text, .. } => Some((*index, *id, text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(tokens.iter().map(|t| t.0).collect::<Vec<_>>(), (0..12).collect::<Vec<_>>());
    assert_eq!(tokens.iter().map(|t| t.1).collect::<Vec<_>>(), token_ids);
    let streamed: String = tokens.iter().map(|t| t.2.as_str()).collect();
    assert_eq!(streamed, output["text"].as_str().unwrap());
    let statuses: Vec<JobStatus> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::Status { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [JobStatus::Running, JobStatus::Succeeded]);
    assert!(
        events.iter().any(|e| matches!(&e.body, EventBody::Log { message, .. } if message.contains("model loaded"))),
        "the load time is reported"
    );
    let result = events.iter().find_map(|e| match &e.body {
        EventBody::Result { output, .. } => Some(output.clone()),
        _ => None,
    });
    assert_eq!(result.as_ref(), Some(output));
    stop.trigger();
    tokio::time::timeout(Duration::from_secs(30), running).await.expect("the executor stops").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_to_result_with_live_tokens_embedded() {
    submit_and_follow(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_to_result_with_live_tokens_aws() {
    submit_and_follow(true).await;
}

//! Results and inputs of any size, end to end on `ferry dev`'s stack with its in-process
//! executor serving the real all-MiniLM-L6-v2 (`FERRY_MINILM_DIR`), on the embedded
//! adapters and on the AWS adapters against moto: embedding jobs of 128 and 1,000 texts
//! succeed; the outputs (and the 1,000 texts' input) are stored as objects; the view has
//! `output: null` with a URL that fetches the output without credentials; the output route
//! answers it; a WebSocket follower gets a `result` reference; and every vector equals what
//! the model computes for the same texts directly.

use std::time::Duration;

use candle_core::{DType, Device};
use ferry_cli::stack::StackOptions;
use ferry_core::progress::ProgressEvent;
use ferry_executor::models::bert::BertEmbedder;
use ferry_executor::models::{NoProgress, Placement, RunOutcome};
use ferry_executor::testing::minilm_dir;
use ferry_tests::dev::DevStack;
use serde_json::{Value, json};

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

/// Submits an embeddings job of `texts` while following it; returns its id and events.
async fn run(dev: &DevStack, texts: &[String]) -> (String, Vec<ProgressEvent>) {
    dev.run(&json!({"model": "minilm", "input": {"texts": texts}}), Duration::from_secs(240)).await
}

/// Checks job `id` (of `texts`) end to end and returns its vectors.
async fn check(dev: &DevStack, id: &str, events: &[ProgressEvent], texts: &[String]) -> Vec<Vec<f32>> {
    let view = dev.job(id).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let (output, bytes) = ferry_tests::dev::stored_output(dev, id, &view, events).await;
    let got = vectors(&output);
    assert_eq!(got.len(), texts.len());
    assert!(bytes > ferry_core::objects::INLINE_BYTES as u64);
    got
}

async fn large_embedding_jobs(aws: bool) {
    let Some(dir) = minilm_dir() else { return };
    let opts = StackOptions { models: vec![format!("minilm={}", dir.display())], ..StackOptions::embedded() };
    let Some(dev) = DevStack::start(aws, KEY, opts).await else { return };
    let model = BertEmbedder::load(&dir, &Placement { device: Device::Cpu, dtype: DType::F32 }).unwrap();
    let direct = |texts: &[String]| match model.embed(texts, &NoProgress).unwrap() {
        RunOutcome::Done(out) => vectors(&out),
        other => panic!("{other:?}"),
    };

    // 128 texts: a small input, an output of about half a megabyte.
    let small = texts(128);
    let (id, events) = run(&dev, &small).await;
    let view = dev.job(&id).await;
    assert_eq!(view["input"]["texts"].as_array().map(Vec::len), Some(128), "a small input stays inline");
    assert_eq!(check(&dev, &id, &events, &small).await, direct(&small));

    // 1,000 texts: the input (about 100 KB) is stored too.
    let many = texts(1000);
    let (id, events) = run(&dev, &many).await;
    let view = dev.job(&id).await;
    assert!(view["input"].is_null(), "a large input is stored: {}", view["input"]);
    assert!(view["input_bytes"].as_u64() > Some(ferry_core::objects::INLINE_BYTES as u64), "{}", view["input_bytes"]);
    assert_eq!(check(&dev, &id, &events, &many).await, direct(&many));
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

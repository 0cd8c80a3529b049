//! `image-embeddings` (issue 16) end to end on `ferry dev`'s stack, on the embedded adapters
//! and on the AWS adapters against moto, with the tiny CLIP of
//! `executor/tests/fixtures/clip`: images uploaded with `POST /v1/inputs` and named by
//! their URL beside `data:` URIs and texts, embeddings as transformers computes them (the
//! fixture's reference), an input large enough to be stored as an object; 422s at submit for
//! what the API can see (an input this tenant never stored, another URL, a format or size it
//! refuses), and an image that only fails to decode failing its job as `invalid_input` while
//! the executor goes on serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use ferry_cli::stack::StackOptions;
use ferry_executor::testing::ScratchDir;
use ferry_tests::dev::DevStack;
use serde_json::{Value, json};

const KEY: &str = "k-images";
const LIMIT: Duration = Duration::from_secs(60);

ferry_tests::on_both_stacks!(image_embeddings_end_to_end);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../executor/tests/fixtures/clip")
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

fn data_uri(media: &str, bytes: &[u8]) -> String {
    format!("data:{media};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// transformers' normalized embedding of fixture image `name` (Pillow backend).
fn reference(name: &str) -> Vec<f64> {
    let r: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap();
    let entry = r["images"].as_array().unwrap().iter().find(|e| e["file"] == name).unwrap().clone();
    entry["embedding"]["pil"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

fn cosine(a: &Value, b: &[f64]) -> f64 {
    let a: Vec<f64> = a.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
}

async fn start(aws: bool) -> Option<(DevStack, ScratchDir)> {
    let scratch = ScratchDir::new("ferry-images-test").unwrap();
    let catalog = json!({"models": [
        {"id": "clip-tiny", "task": "image-embeddings", "path": fixtures().join("model")},
    ]});
    let file = scratch.path().join("catalog.json");
    std::fs::write(&file, catalog.to_string()).unwrap();
    let mut opts = StackOptions { models_file: Some(file), ..StackOptions::embedded() };
    opts.worker.concurrency = 0;
    let dev = DevStack::start(aws, KEY, opts).await?;
    Some((dev, scratch))
}

async fn refused(dev: &DevStack, images: Vec<String>, field: &str, says: &str) {
    let (status, body) = dev.submit(&json!({"model": "clip-tiny", "input": {"images": images}})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], field, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{message:?} does not say {says:?}");
}

async fn image_embeddings_end_to_end(aws: bool) {
    let Some((dev, _scratch)) = start(aws).await else { return };

    // An uploaded image, read back as it was stored.
    let wide = image("wide-80x45.png");
    let (status, stored) = dev.upload(wide.clone()).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(
        (stored["bytes"].as_u64(), stored["content_type"].as_str()),
        (Some(wide.len() as u64), Some("image/png"))
    );
    let url = stored["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&dev.http) && url.ends_with(stored["id"].as_str().unwrap()), "{url}");
    let read = dev.get(&format!("/v1/inputs/{}", stored["id"].as_str().unwrap())).await;
    assert_eq!(read.status(), 200);
    assert_eq!(read.bytes().await.unwrap().to_vec(), wide);

    // Its URL beside a data: URI and a text: images first, then the text, in order.
    let at_size = image("rgb-32.png");
    let body = json!({"model": "clip-tiny", "input": {
        "images": [data_uri("image/png", &at_size), url], "texts": ["ships"],
    }});
    let (id, _) = dev.run(&body, LIMIT).await;
    let view = dev.settled(&id, LIMIT).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let output = &view["output"];
    assert_eq!(output["dimensions"], 16);
    let vectors = output["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 3);
    assert!(cosine(&vectors[0], &reference("rgb-32.png")) >= 0.9999);
    assert!(cosine(&vectors[1], &reference("wide-80x45.png")) >= 0.99);

    // Over 64 KB of input: the job's input is stored as an object and read back by the executor.
    let large = image("large-203x150-lossy.webp");
    let many: Vec<String> = (0..8).map(|_| data_uri("image/webp", &large)).collect();
    let (id, _) = dev.run(&json!({"model": "clip-tiny", "input": {"images": many}}), LIMIT).await;
    let view = dev.settled(&id, LIMIT).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert!(view["input"].is_null(), "a large input is not inline: {view}");
    let vectors = view["output"]["embeddings"].as_array().unwrap().clone();
    assert_eq!(vectors.len(), 8);
    assert!(cosine(&vectors[7], &reference("large-203x150-lossy.webp")) >= 0.99);

    // What the API sees is refused before anything is queued.
    let png = data_uri("image/png", &at_size);
    let never = format!("{}/v1/inputs/{}", dev.http, ulid::Ulid::new());
    refused(&dev, vec![png.clone(), never], "input.images[1]", "no input").await;
    refused(&dev, vec!["https://example.com/cat.png".into()], "input.images[0]", "never fetched").await;
    refused(&dev, vec![data_uri("image/gif", b"GIF89a")], "input.images[0]", "image/gif").await;
    let mut zero = at_size.clone();
    zero[16..20].copy_from_slice(&0u32.to_be_bytes());
    refused(&dev, vec![data_uri("image/png", &zero)], "input.images[0]", "no pixels").await;
    let mut huge = at_size.clone();
    huge[16..24].copy_from_slice(&[0, 0, 0x40, 0, 0, 0, 0x40, 0]);
    refused(&dev, vec![data_uri("image/png", &huge)], "input.images[0]", "over the limit").await;
    let (status, text) = dev.upload(b"not an image".to_vec()).await;
    assert_eq!(status, 201, "{text}");
    refused(&dev, vec![text["url"].as_str().unwrap().into()], "input.images[0]", "not a PNG, JPEG or WebP").await;
    let (status, body) = dev.submit(&json!({"model": "clip-tiny", "input": {}})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("input.images")), "{body}");
    assert_eq!(dev.get("/v1/inputs/not-an-id").await.status(), 404);

    // An image whose header is fine but whose data is not fails its job, naming it; the
    // executor goes on.
    let mut corrupt = at_size.clone();
    let n = corrupt.len();
    corrupt[n / 2..n - 12].iter_mut().for_each(|b| *b ^= 0x5A);
    let body = json!({"model": "clip-tiny", "input": {"images": [png.clone(), data_uri("image/png", &corrupt)]}});
    let (id, _) = dev.run(&body, LIMIT).await;
    let view = dev.settled(&id, LIMIT).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["error"]["type"], "invalid_input", "{view}");
    assert!(view["error"]["message"].as_str().unwrap().starts_with("input.images[1]: cannot decode"), "{view}");
    assert_eq!(view["attempt"], 1, "invalid input is not retried: {view}");
    let (id, _) = dev.run(&json!({"model": "clip-tiny", "input": {"images": [png]}}), LIMIT).await;
    assert_eq!(dev.settled(&id, LIMIT).await["status"], "succeeded");
    dev.stop().await;
}

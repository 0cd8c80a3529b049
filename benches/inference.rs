//! Inference on this machine's CPU (issue 4), Ferry's side: Llama decode tokens/s at
//! batch 1 for random-weight models of a few shapes (`llama`), and MiniLM embeddings
//! sentences/s at batch 1 and 32 (`minilm`, needs FERRY_MINILM_DIR). Prints one JSON line
//! per measurement. `benches/inference.sh` runs it beside the reference implementations
//! (HF transformers / sentence-transformers on PyTorch) on the same models and inputs and
//! prints the table for docs/BENCHMARKS.md.
//!
//! `cargo bench -p ferry-benches --bench inference -- [llama|minilm] [--models DIR]`

use std::time::Instant;

use ferry_core::input::TextGenerationParams;
use ferry_executor::models::bert::BertEmbedder;
use ferry_executor::models::llama;
use ferry_executor::models::{NoProgress, Placement, RunOutcome};
use ferry_executor::tiny::{TinyConfig, write_llama};

/// The shapes measured: (name, config). Vocabulary is the tiny tokenizer's (331).
pub fn shapes() -> Vec<(&'static str, TinyConfig)> {
    let shape = |h, i, l, heads, kv| TinyConfig {
        hidden_size: h,
        intermediate_size: i,
        num_hidden_layers: l,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        max_position_embeddings: 512,
    };
    vec![
        ("tiny-h64-l2", shape(64, 128, 2, 4, 2)),
        ("small-h512-l8", shape(512, 1376, 8, 8, 4)),
        ("base-h768-l12", shape(768, 2048, 12, 12, 4)),
    ]
}

const PROMPT: &str = "once upon a time the ferry crossed the river with people and their boat";
const NEW_TOKENS: u32 = 64;
const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn llama(models: &std::path::Path) {
    let placement = Placement::parse("cpu", Some("f32")).unwrap();
    for (name, cfg) in shapes() {
        let dir = models.join(name);
        if !dir.join("model.safetensors").exists() {
            write_llama(&dir, 1, cfg).expect("writing the model");
        }
        let model = llama::load(&dir, &placement).expect("loading");
        let params = TextGenerationParams { max_new_tokens: Some(NEW_TOKENS), ..Default::default() };
        let mut decode = Vec::new();
        for run in 0..=RUNS {
            let started = Instant::now();
            let RunOutcome::Done(out) =
                model.generate(PROMPT, &params, std::sync::Arc::new(NoProgress)).expect("generating")
            else {
                panic!("stopped")
            };
            let total = started.elapsed().as_secs_f64();
            let n = out["details"]["generated_tokens"].as_f64().unwrap();
            let ttft = out["details"]["time_to_first_token_ms"].as_f64().unwrap() / 1000.0;
            if run > 0 {
                // Decode only: the tokens after the first over the time after the first.
                decode.push((n - 1.0) / (total - ttft));
            }
        }
        println!(
            r#"{{"bench":"llama_decode","impl":"ferry-candle","model":"{name}","tokens_per_s":{:.1}}}"#,
            median(decode)
        );
    }
}

fn minilm() {
    let Ok(dir) = std::env::var("FERRY_MINILM_DIR") else {
        eprintln!("minilm: FERRY_MINILM_DIR is not set; skipped");
        return;
    };
    let placement = Placement::parse("cpu", Some("f32")).unwrap();
    let model = BertEmbedder::load(std::path::Path::new(&dir), &placement).expect("loading MiniLM");
    let sentences = ferry_benches::sentences();
    let only: Option<usize> = std::env::var("FERRY_BENCH_BATCH").ok().and_then(|b| b.parse().ok());
    for batch in [1usize, 32].into_iter().filter(|b| only.is_none_or(|o| o == *b)) {
        let mut rates = Vec::new();
        for run in 0..=RUNS {
            let started = Instant::now();
            // As sentence-transformers' `encode(sentences, batch_size=batch)`: one call, the
            // texts in batches of `batch` (BATCH_SIZE, 32, inside `embed`).
            if batch == 1 {
                for one in sentences.chunks(1) {
                    model.embed(one, &NoProgress).expect("embedding");
                }
            } else {
                assert_eq!(batch, ferry_executor::models::bert::BATCH_SIZE);
                model.embed(&sentences, &NoProgress).expect("embedding");
            }
            if run > 0 {
                rates.push(sentences.len() as f64 / started.elapsed().as_secs_f64());
            }
        }
        println!(
            r#"{{"bench":"minilm","impl":"ferry-candle","batch":{batch},"sentences_per_s":{:.1}}}"#,
            median(rates)
        );
    }
}

fn main() {
    // SAFETY: first thing in main, before any thread.
    unsafe { ferry_executor::models::pin_cpu_threads() };
    let args = ferry_benches::args();
    let models = ferry_benches::models_dir(&args);
    let which: Vec<&str> = args.iter().map(String::as_str).filter(|a| ["llama", "minilm"].contains(a)).collect();
    if which.is_empty() || which.contains(&"llama") {
        llama(&models);
    }
    if which.is_empty() || which.contains(&"minilm") {
        minilm();
    }
}

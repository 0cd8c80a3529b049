//! The engine alone (issue 13), Ferry's side: aggregate decode tokens/s of the continuous
//! batching engine on the 24M-parameter Llama shape (`small-h512-l8` of the inference
//! bench, random weights), with 1, 8 and 32 jobs submitted at once, each 128 greedy
//! tokens from its own prompt; `--max-batch-sequences 1` beside it (batching off, the same
//! build). Prints one JSON line per measurement; `benches/engine.sh` runs it beside HF
//! transformers `generate` with the same prompts in one padded batch
//! (`engine_reference.py`).
//!
//! Tokens are counted as generated: a job that meets the end-of-sequence token stops early
//! (the reference forces 128 with `min_new_tokens`), which only lowers our figure.
//!
//! `cargo bench -p ferry-benches --bench engine -- [--models DIR]`
//!
//! On a GPU (a `--features cuda` build, see benches/gpu.sh): `--device cuda --shape
//! llama-1b --jobs 1,8,32,128` decodes the Llama-3.2-1B layer shape (16 layers, hidden
//! 2048, 32 heads over 8 key/value heads, intermediate 8192; the tiny vocabulary, so about
//! 0.97B parameters) in bf16, batching up to the largest burst, and prints its weight bytes
//! (what one decode step reads) for the roofline.

use std::sync::Arc;
use std::time::Instant;

use ferry_core::input::TextGenerationParams;
use ferry_executor::models::generate::{EngineOptions, Generator};
use ferry_executor::models::{NoProgress, Placement, RunOutcome, llama};
use ferry_executor::tiny::{TinyConfig, write_llama};

const NEW_TOKENS: u32 = 128;
const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// `jobs` generations at once; (generated tokens, seconds from the first submit to the last end).
fn burst(model: &Arc<Generator>, jobs: usize) -> (usize, f64) {
    let params = TextGenerationParams { max_new_tokens: Some(NEW_TOKENS), ..Default::default() };
    let started = Instant::now();
    let handles: Vec<_> = ferry_benches::prompts(jobs)
        .into_iter()
        .map(|p| {
            let (model, params) = (model.clone(), params.clone());
            std::thread::spawn(move || match model.generate(&p, &params, Arc::new(NoProgress)).expect("generating") {
                RunOutcome::Done(out) => out["details"]["generated_tokens"].as_u64().unwrap() as usize,
                RunOutcome::Stopped { .. } => panic!("stopped"),
            })
        })
        .collect();
    let tokens = handles.into_iter().map(|h| h.join().unwrap()).sum();
    (tokens, started.elapsed().as_secs_f64())
}

fn main() {
    // SAFETY: first thing in main, before any thread.
    unsafe { ferry_executor::models::pin_cpu_threads() };
    let args = ferry_benches::args();
    let models = ferry_benches::models_dir(&args);
    let flag = |name: &str| ferry_benches::flag(&args, name);
    let device = flag("--device").unwrap_or_else(|| "cpu".into());
    let shape = flag("--shape").unwrap_or_else(|| "small-h512-l8".into());
    let cfg = match shape.as_str() {
        "small-h512-l8" => ferry_benches::SMALL_H512_L8,
        "llama-1b" => TinyConfig {
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            max_position_embeddings: 1024,
        },
        other => panic!("unknown --shape {other}: small-h512-l8 or llama-1b"),
    };
    let dir = models.join(&shape);
    if !dir.join("model.safetensors").exists() {
        write_llama(&dir, 1, cfg).expect("writing the model");
    }
    let dtype = if device == "cpu" { "f32" } else { "bf16" };
    let placement = Placement::parse(&device, Some(dtype)).expect("the device");
    if device != "cpu" {
        let (h, i, l) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers);
        let kv = h / cfg.num_attention_heads * cfg.num_key_value_heads;
        let params = l * (h * (h + 2 * kv) + h * h + 3 * h * i);
        println!(r#"{{"bench":"engine","shape":"{shape}","layer_params":{params},"bytes_per_step":{}}}"#, params * 2);
    }
    // `--only N`: just N jobs with batching on (for profiling); `--jobs a,b,..`: these bursts
    // with batching up to the largest, and no batching-off run.
    let only: Option<usize> = flag("--only").and_then(|n| n.parse().ok());
    let jobs: Option<Vec<usize>> = flag("--jobs").map(|j| j.split(',').map(|n| n.parse().expect("--jobs")).collect());
    let configs: Vec<(usize, Vec<usize>)> = match (only, jobs) {
        (Some(n), _) => vec![(32, vec![n])],
        (None, Some(j)) => vec![(*j.iter().max().unwrap(), j)],
        (None, None) => vec![(32, vec![1, 8, 32]), (1, vec![1, 8, 32])],
    };
    for (max_sequences, bursts) in configs {
        let options = EngineOptions { max_sequences, ..EngineOptions::for_device(&placement.device) };
        let model = Arc::new(llama::load_with(&dir, &placement, options).expect("loading"));
        burst(&model, 2); // warm up
        for jobs in bursts {
            let rates: Vec<f64> = (0..RUNS)
                .map(|_| {
                    let (tokens, secs) = burst(&model, jobs);
                    tokens as f64 / secs
                })
                .collect();
            println!(
                r#"{{"bench":"engine","impl":"ferry-engine","device":"{device}","shape":"{shape}","max_batch_sequences":{max_sequences},"jobs":{jobs},"tokens_per_s":{:.1}}}"#,
                median(rates)
            );
        }
    }
}

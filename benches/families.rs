//! Issue 14's benchmarks, Ferry's side (`benches/families.sh` runs each beside its peer):
//! - per text-generation family, decode tokens/s through the engine at batch 1 and the
//!   aggregate of 32 jobs at once, on the small shapes `families_reference.py` wrote with HF
//!   transformers (hidden 512, 8 layers, random weights, one directory per family under
//!   `--models`), each job 64 greedy tokens from the same prompt ids the reference uses;
//! - `--gguf FILE...`: GGUF files (the ~60M Llama at Q4_K_M and Q8_0), 1 job of 128 tokens,
//!   with load time and resident memory.
//!
//! Tokens are counted as generated (a random model may meet its end-of-sequence id early,
//! which only lowers our figure). Prints one JSON line per measurement.
//!
//! `cargo bench -p ferry-benches --bench families -- --models DIR [--only FAMILY] [--gguf FILE...]`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ferry_core::catalog::Catalog;
use ferry_core::input::TextGenerationParams;
use ferry_executor::models::generate::{EngineOptions, Generator};
use ferry_executor::models::{LoadedModel, NoProgress, Placement, RunOutcome};

const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The prompt ids the reference also reads (`prompt_ids.json` beside the models).
fn prompt_ids(models: &Path) -> Vec<Vec<u32>> {
    let text =
        std::fs::read_to_string(models.join("prompt_ids.json")).expect("families_reference.py wrote prompt_ids.json");
    serde_json::from_str(&text).expect("a list of id lists")
}

/// `jobs` generations of `new_tokens` at once; (generated tokens, seconds).
fn burst(model: &Arc<Generator>, prompts: &[Vec<u32>], jobs: usize, new_tokens: u32) -> (usize, f64) {
    let params =
        TextGenerationParams { max_new_tokens: Some(new_tokens), temperature: Some(0.0), ..Default::default() };
    let started = Instant::now();
    let handles: Vec<_> = (0..jobs)
        .map(|i| {
            let (model, params, ids) = (model.clone(), params.clone(), prompts[i % prompts.len()].clone());
            std::thread::spawn(move || {
                match model.generate_ids(ids, &params, Arc::new(NoProgress)).expect("generating") {
                    RunOutcome::Done(out) => out["token_ids"].as_array().unwrap().len(),
                    RunOutcome::Stopped { .. } => panic!("stopped"),
                }
            })
        })
        .collect();
    let tokens = handles.into_iter().map(|h| h.join().unwrap()).sum();
    (tokens, started.elapsed().as_secs_f64())
}

fn load(path: &Path, max_sequences: usize) -> (Arc<Generator>, f64) {
    let started = Instant::now();
    let spec = Catalog::spec_from_dir("bench", path).expect("a model the catalog serves");
    let placement = Placement::parse("cpu", Some("f32")).unwrap();
    let options = EngineOptions { max_sequences, ..EngineOptions::for_device(&placement.device) };
    match LoadedModel::load(&spec, path, &placement, options).expect("loading") {
        LoadedModel::Text(g) => (Arc::new(g), started.elapsed().as_secs_f64()),
        _ => panic!("not a text model"),
    }
}

fn rate(model: &Arc<Generator>, prompts: &[Vec<u32>], jobs: usize, new_tokens: u32) -> f64 {
    burst(model, prompts, jobs.min(2), 8); // warm up
    median(
        (0..RUNS)
            .map(|_| {
                let (tokens, secs) = burst(model, prompts, jobs, new_tokens);
                tokens as f64 / secs
            })
            .collect(),
    )
}

fn main() {
    // SAFETY: first thing in main, before any thread.
    unsafe { ferry_executor::models::pin_cpu_threads() };
    let args = ferry_benches::args();
    let models = ferry_benches::models_dir(&args);
    let only = ferry_benches::flag(&args, "--only");
    let ggufs: Vec<PathBuf> = match args.iter().position(|a| a == "--gguf") {
        Some(i) => args[i + 1..].iter().take_while(|a| !a.starts_with("--")).map(PathBuf::from).collect(),
        None => Vec::new(),
    };
    if !ggufs.is_empty() {
        let prompts = prompt_ids(&models);
        for file in ggufs {
            let (model, load_s) = load(&file, 1);
            let rss = ferry_executor::models::resident_bytes().unwrap_or(0);
            let tps = rate(&model, &prompts, 1, 128);
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            println!(
                r#"{{"bench":"gguf","impl":"ferry-engine","file":"{name}","jobs":1,"tokens_per_s":{tps:.1},"load_s":{load_s:.3},"resident_mib":{}}}"#,
                rss >> 20
            );
        }
        return;
    }
    let prompts = prompt_ids(&models);
    for family in ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"] {
        if only.as_deref().is_some_and(|o| o != family) {
            continue;
        }
        let dir = models.join(format!("family-{family}"));
        let (model, _) = load(&dir, 32);
        for jobs in [1, 32] {
            let tps = rate(&model, &prompts, jobs, 64);
            println!(
                r#"{{"bench":"family","impl":"ferry-engine","family":"{family}","jobs":{jobs},"tokens_per_s":{tps:.1}}}"#
            );
        }
    }
}

//! Issue 16's CLIP benchmark, Ferry's side (`benches/clip.sh` runs it beside
//! `clip_reference.py`): image embeddings per second through the engine, from the JPEG bytes
//! (as `data:` URIs in a job's input) to normalized vectors, on the ViT-B/32-shaped model
//! and 32 images `clip_reference.py write` made:
//! - batch 1: one job of one image at a time, 32 times;
//! - batch 32: one job of the 32 images (one forward pass);
//! - 32 jobs of one image at once (the engine packs them into shared passes);
//! - and, for the split, decoding and preprocessing the 32 images alone (no model).
//!
//! Median of 3 runs after a warm-up; one JSON line each.
//!
//! `cargo bench -p ferry-benches --bench clip -- --models DIR`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use ferry_core::catalog::ModelSpec;
use ferry_core::input::{ImageEmbeddingsInput, JobInput};
use ferry_core::job::Task;
use ferry_executor::models::generate::EngineOptions;
use ferry_executor::models::{LoadedModel, NoProgress, Placement, RunOutcome};

const IMAGES: usize = 32;
const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn job(images: &[String]) -> JobInput {
    JobInput::ImageEmbeddings { input: ImageEmbeddingsInput { images: images.to_vec(), texts: vec![] } }
}

fn run(model: &LoadedModel, images: &[String]) {
    match model.run(&job(images), Arc::new(NoProgress)).expect("embedding") {
        RunOutcome::Done(out) => assert_eq!(out["embeddings"].as_array().unwrap().len(), images.len()),
        RunOutcome::Stopped { .. } => panic!("stopped"),
    }
}

fn images_per_s(mut once: impl FnMut()) -> (f64, Vec<f64>) {
    once(); // warm-up
    let runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            once();
            IMAGES as f64 / started.elapsed().as_secs_f64()
        })
        .collect();
    (median(runs.clone()), runs)
}

fn main() {
    // SAFETY: first in main, before any thread starts.
    unsafe { ferry_executor::models::pin_cpu_threads() };
    let args: Vec<String> = std::env::args().collect();
    let models = args.iter().position(|a| a == "--models").map(|i| PathBuf::from(&args[i + 1])).expect("--models DIR");
    let dir = models.join("clip-images");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("clip_reference.py write").map(|e| e.unwrap().path()).collect();
    files.sort();
    let images: Vec<String> = files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
        })
        .collect();
    assert_eq!(images.len(), IMAGES);
    let spec = ModelSpec::new("clip-b32", Task::ImageEmbeddings);
    let placement = Placement::parse("cpu", Some("f32")).unwrap();
    let model = Arc::new(
        LoadedModel::load(&spec, &models.join("clip-b32"), &placement, EngineOptions::for_device(&placement.device))
            .expect("loading"),
    );
    let report = |name: &str, batch: usize, (rate, runs): (f64, Vec<f64>)| {
        let runs: Vec<f64> = runs.iter().map(|r| (r * 100.0).round() / 100.0).collect();
        println!(
            "{}",
            serde_json::json!({"bench": "clip", "impl": "ferry", "mode": name, "batch": batch,
                "images_per_s": (rate * 100.0).round() / 100.0, "runs": runs})
        );
    };
    // The share of the work before the model: decoding and preprocessing the 32 images.
    if let LoadedModel::Clip(engine) = model.as_ref() {
        let input = ImageEmbeddingsInput { images: images.clone(), texts: vec![] };
        report(
            "decode and preprocess only",
            IMAGES,
            images_per_s(|| assert_eq!(engine.model().prepare(&input).unwrap().len(), IMAGES)),
        );
    }
    report("one job per image", 1, images_per_s(|| images.iter().for_each(|i| run(&model, std::slice::from_ref(i)))));
    report("one job of 32", IMAGES, images_per_s(|| run(&model, &images)));
    report(
        "32 jobs at once",
        IMAGES,
        images_per_s(|| {
            let handles: Vec<_> = images
                .iter()
                .map(|i| {
                    let (model, image) = (model.clone(), i.clone());
                    std::thread::spawn(move || run(&model, &[image]))
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
        }),
    );
}

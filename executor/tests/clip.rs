//! CLIP (`image-embeddings`) against HF transformers on a tiny random CLIPModel made by
//! `fixtures/clip/make_clip.py` (model, images, and transformers' outputs under both of
//! CLIPImageProcessor's backends): preprocessing pixel for pixel, image and text
//! embeddings by cosine, the engine's job path, and the refusals (bad images, configs this
//! implementation does not compute).
//!
//! Run with `--nocapture` to see the measured agreement per image.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use candle_core::{DType, Device};
use ferry_core::catalog::ModelSpec;
use ferry_core::input::{ImageEmbeddingsInput, JobInput};
use ferry_core::job::Task;
use ferry_executor::models::clip::{ClipEmbedder, ClipItem};
use ferry_executor::models::embed::PassModel;
use ferry_executor::models::generate::EngineOptions;
use ferry_executor::models::image::{Preprocessor, RgbImage, decode, encode_png};
use ferry_executor::models::{LoadedModel, ModelError, NoProgress, Placement, RunOutcome};
use ferry_executor::testing::ScratchDir;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

fn cpu() -> Placement {
    Placement { device: Device::Cpu, dtype: DType::F32 }
}

fn model() -> ClipEmbedder {
    ClipEmbedder::load(&fixtures().join("model"), &cpu()).unwrap_or_else(|e| panic!("load: {e}"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn data_uri(bytes: &[u8]) -> String {
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn image_input(images: Vec<String>, texts: Vec<&str>) -> ImageEmbeddingsInput {
    ImageEmbeddingsInput { images, texts: texts.into_iter().map(String::from).collect() }
}

fn embed(model: &ClipEmbedder, input: &ImageEmbeddingsInput) -> Result<Vec<Vec<f32>>, ModelError> {
    let items = model.prepare(input)?;
    model.embed_batch(&items.iter().collect::<Vec<_>>())
}

/// The images' files with their reference entries.
fn images() -> Vec<(Value, Vec<u8>)> {
    let r = reference();
    r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e.clone(), std::fs::read(fixtures().join("images").join(e["file"].as_str().unwrap())).unwrap()))
        .collect()
}

#[test]
fn preprocessing_matches_the_pillow_backend_pixel_for_pixel() {
    let pre = Preprocessor::load(&fixtures().join("model")).unwrap();
    let pixels = candle_core::safetensors::load(fixtures().join("pixels.safetensors"), &Device::Cpu).unwrap();
    for (entry, bytes) in images() {
        let file = entry["file"].as_str().unwrap();
        let ours = pre.pixels(&decode(&bytes, "input.images[0]").unwrap());
        for backend in ["pil", "torchvision"] {
            let theirs: Vec<f32> = pixels[&format!("{file}/{backend}")].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(ours.len(), theirs.len(), "{file}");
            let max = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            // One 8-bit level is 1/255/std, about 0.015.
            let levels = max * 0.27 * 255.0;
            eprintln!("{file:<28} {backend:<12} max |pixel difference| {max:.2e} (~{levels:.1} levels)");
            // The decoders give Pillow's pixels and Pillow's resampling is reproduced
            // exactly, so against its backend every pixel is equal.
            if backend == "pil" {
                assert!(max < 1e-5, "{file}: {max}");
            }
        }
    }
}

#[test]
fn image_embeddings_match_transformers() {
    let model = model();
    assert_eq!(model.dimensions(), reference()["dimensions"].as_u64().unwrap() as usize);
    let mut worst_at_size: f64 = 1.0;
    let mut worst_resized: f64 = 1.0;
    for (entry, bytes) in images() {
        let file = entry["file"].as_str().unwrap();
        let ours = embed(&model, &image_input(vec![data_uri(&bytes)], vec![])).unwrap().remove(0);
        let norm: f32 = ours.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{file}: not normalized ({norm})");
        for backend in ["pil", "torchvision"] {
            let c = cosine(&ours, &floats(&entry["embedding"][backend]));
            eprintln!("{file:<28} {backend:<12} cosine {c:.7}");
            if entry["resized"].as_bool().unwrap() {
                worst_resized = worst_resized.min(c);
                // Pillow's resampling is reproduced exactly; torch's differs from it.
                let least = if backend == "pil" { 0.99999 } else { 0.99 };
                assert!(c >= least, "{file} ({backend}): cosine {c}");
            } else {
                worst_at_size = worst_at_size.min(c);
                assert!(c >= 0.9999, "{file} ({backend}): cosine {c}");
            }
        }
    }
    eprintln!("worst cosine: {worst_at_size:.7} at the model's size, {worst_resized:.7} resized");
}

#[test]
fn a_vector_does_not_depend_on_its_batch_mates() {
    let model = model();
    let all: Vec<String> = images().iter().map(|(_, b)| data_uri(b)).collect();
    let together = embed(&model, &image_input(all.clone(), vec!["a photo of a cat"])).unwrap();
    assert_eq!(together.len(), all.len() + 1);
    for (i, uri) in all.iter().enumerate().step_by(5) {
        let alone = embed(&model, &image_input(vec![uri.clone()], vec![])).unwrap().remove(0);
        assert!(cosine(&alone, &together[i]) > 0.999999, "image {i}");
    }
}

#[test]
fn text_embeddings_match_transformers_pooled_at_the_first_end_of_text() {
    let model = model();
    assert!(model.has_text());
    for t in reference()["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let items = model.prepare(&image_input(vec![], vec![text])).unwrap();
        let ClipItem::Text(ids) = &items[0] else { panic!("not a text") };
        let expected: Vec<u32> = t["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, &expected, "{text}");
        let ours = model.embed_batch(&[&items[0]]).unwrap().remove(0);
        let c = cosine(&ours, &floats(&t["embedding"]));
        eprintln!("{text:<44} cosine {c:.7}");
        assert!(c >= 0.9999, "{text}: cosine {c}");
    }
}

#[test]
fn a_job_runs_through_the_engine_with_images_then_texts_in_order() {
    let spec = ModelSpec::new("clip-tiny", Task::ImageEmbeddings);
    let loaded =
        LoadedModel::load(&spec, &fixtures().join("model"), &cpu(), EngineOptions::for_device(&Device::Cpu)).unwrap();
    let imgs = images();
    let input = JobInput::ImageEmbeddings {
        input: image_input(vec![data_uri(&imgs[0].1), data_uri(&imgs[11].1)], vec!["ships"]),
    };
    let RunOutcome::Done(out) = loaded.run(&input, Arc::new(NoProgress)).unwrap() else { panic!("stopped") };
    assert_eq!(out["dimensions"], 16);
    let vectors = out["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 3);
    assert!(cosine(&floats(&vectors[0]), &floats(&imgs[0].0["embedding"]["pil"])) >= 0.9999);
    assert!(cosine(&floats(&vectors[1]), &floats(&imgs[11].0["embedding"]["pil"])) >= 0.99);
    let ships = &reference()["texts"][2];
    assert_eq!(ships["text"], "ships");
    assert!(cosine(&floats(&vectors[2]), &floats(&ships["embedding"])) >= 0.9999);
}

fn invalid(result: Result<Vec<Vec<f32>>, ModelError>) -> (String, String) {
    match result {
        Err(ModelError::InvalidInput { field, message }) => (field, message),
        other => panic!("expected invalid input, got {other:?}"),
    }
}

#[test]
fn bad_images_are_invalid_input_naming_the_image() {
    let model = model();
    let good = encode_png(&RgbImage { width: 8, height: 8, data: vec![90; 8 * 8 * 3] });
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 20);
    let mut corrupt = good.clone();
    let n = corrupt.len();
    corrupt[n / 2..n - 12].iter_mut().for_each(|b| *b ^= 0x5A);
    let jpeg_header_only = [0xFF, 0xD8, 0xFF, 0xC0, 0, 11, 8, 0, 16, 0, 16, 3, 0, 0, 0, 0, 0];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (truncated, "cannot decode"),
        (corrupt, "cannot decode"),
        (b"GIF89a....".to_vec(), "not a PNG, JPEG or WebP"),
        (jpeg_header_only.to_vec(), "cannot decode"),
        (Vec::new(), "empty"),
    ];
    for (bytes, says) in cases {
        let (field, message) = invalid(embed(&model, &image_input(vec![data_uri(&good), data_uri(&bytes)], vec![])));
        assert_eq!(field, "input.images[1]");
        assert!(message.contains(says), "{message:?} does not say {says:?}");
    }
    let (field, _) = invalid(embed(&model, &image_input(vec!["https://example.com/a.png".into()], vec![])));
    assert_eq!(field, "input.images[0]");
    let long = "ship ".repeat(40);
    let (field, message) = invalid(embed(&model, &image_input(vec![], vec![long.as_str()])));
    assert!(field == "input.texts[0]" && message.contains("over the model's 24"), "{field}: {message}");
    // Still serving after all of that.
    assert_eq!(embed(&model, &image_input(vec![data_uri(&good)], vec![])).unwrap().len(), 1);
}

/// A copy of the fixture model with `edit` applied to its JSON file `name`.
fn edited(name: &str, edit: impl Fn(&mut Value)) -> ScratchDir {
    let dir = ScratchDir::new("clip-test").unwrap();
    for f in std::fs::read_dir(fixtures().join("model")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join(name);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    dir
}

#[test]
fn what_is_not_implemented_is_refused_at_load() {
    let refused = |dir: &ScratchDir, says: &str| match ClipEmbedder::load(dir.path(), &cpu()) {
        Err(ModelError::Load(m)) => assert!(m.contains(says), "{m:?} does not say {says:?}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("loaded; expected a refusal saying {says:?}"),
    };
    refused(&edited("config.json", |c| c["vision_config"]["hidden_act"] = "gelu".into()), "quick_gelu");
    refused(&edited("config.json", |c| c["text_config"]["layer_norm_eps"] = 1e-6.into()), "1e-5");
    refused(&edited("preprocessor_config.json", |c| c["crop_size"]["height"] = 28.into()), "32x32");
    refused(&edited("preprocessor_config.json", |c| c["resample"] = 1.into()), "resample 1");
    refused(
        &edited("preprocessor_config.json", |c| c["image_processor_type"] = "SiglipImageProcessor".into()),
        "not CLIP",
    );
    // Without a tokenizer, images are served and texts refused.
    let images_only = edited("config.json", |_| {});
    std::fs::remove_file(images_only.path().join("tokenizer.json")).unwrap();
    let model = ClipEmbedder::load(images_only.path(), &cpu()).unwrap();
    let (field, _) = invalid(embed(&model, &image_input(vec![], vec!["a cat"])));
    assert_eq!(field, "input.texts");
}

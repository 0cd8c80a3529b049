//! GGUF models against llama.cpp and HF transformers: the files of `fixtures/gguf/` (tiny
//! Llama, Mistral, Qwen2 and Qwen3 models quantized by llama.cpp itself, by `make_gguf.py`,
//! which also wrote the references), registered as `ferry dev --model ID=FILE.gguf` registers
//! them and loaded by the executor's loader:
//! - every file (Q8_0, Q4_K_M, and Llama's Q4_0, Q5_K_M, Q6_K) gives llama.cpp's greedy ids
//!   on the same file and prompt ids, up to the first near-tie of llama.cpp's logits; alone and
//!   batched in the engine with the other prompts;
//! - Q8_0 gives transformers' greedy ids on the file's weights dequantized (the fixtures'
//!   logit margins are at least 1.0, against logits of standard deviation about 25, so 8-bit activations cannot flip a choice);
//! - Q4_K_M stays close to the unquantized model: teacher-forced on its greedy ids, the
//!   tokens' log-probabilities within [`Q4_K_M_MEAN_LOGPROB_BOUND`] of transformers' in f32 on
//!   average (and [`Q4_K_M_MAX_LOGPROB_BOUND`] at most).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use ferry_core::catalog::{Catalog, CatalogError};
use ferry_core::input::{InputLimits, JobInput, TextGenerationParams};
use ferry_core::job::Task;
use ferry_executor::models::generate::{EngineOptions, Generator};
use ferry_executor::models::{LoadedModel, NoProgress, Placement, RunOutcome};
use serde_json::{Value, json};

/// llama.cpp's top-1/top-2 logit gap under which its choice is a near-tie: from there on the
/// two implementations' rounding may pick either, and the rest of the sequence is not compared.
/// 2% of the fixtures' logit spread (standard deviation about 25): both quantize activations
/// to 8 bits before the integer dot products, but not always alike (on Q5_K, Ferry's logits
/// are exactly those of Q8_K activations, emulated in PyTorch by the fixture's author, and
/// llama.cpp's are up to 0.3 from them; on Q4_K and Q8_0 the two agree to 1e-4).
const NEAR_TIE: f64 = 0.5;

/// How far Q4_K_M's log-probabilities of the f32 model's greedy ids may be from the f32
/// model's own (nats), teacher-forced: on average over every token of every family, and at
/// most. The fixtures' logits are spread wide (standard deviation about 25) for the Q8_0 test,
/// so their distributions are peaked: the f32 model gives its choices about -0.05, and where 4
/// bits move another token to the top, its choice drops by ~15. Measured on this suite's
/// fixtures: mean 0.80, largest 15.2 (Mistral, a choice Q4_K_M flips; Qwen2 and Qwen3 within
/// 1e-4, Llama 0.57 on average).
const Q4_K_M_MEAN_LOGPROB_BOUND: f64 = 1.5;
const Q4_K_M_MAX_LOGPROB_BOUND: f64 = 20.0;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
}

fn cpu() -> Placement {
    Placement { device: Device::Cpu, dtype: DType::F32 }
}

fn prompts() -> Vec<Vec<u32>> {
    reference()["prompts"].as_array().unwrap().iter().map(ids).collect()
}

/// Every file of the fixtures: (family, quantization, its reference entry, its catalog architecture).
fn files() -> Vec<(String, String, Value, String)> {
    let r = reference();
    let mut out = Vec::new();
    for (family, m) in r["models"].as_object().unwrap() {
        for (kind, entry) in m["files"].as_object().unwrap() {
            out.push((family.clone(), kind.clone(), entry.clone(), m["architecture"].as_str().unwrap().to_string()));
        }
    }
    out
}

/// A file registered as `ferry dev --model ID=FILE` does (a Mistral file says `llama`: its
/// catalog entry names the family), then loaded by the executor's loader.
fn load(entry: &Value, architecture: &str, max_sequences: usize) -> (LoadedModel, PathBuf) {
    let file = fixtures().join(entry["file"].as_str().unwrap());
    let mut spec = Catalog::spec_from_arg(&format!("m={}", file.display())).unwrap();
    assert_eq!(spec.task, Task::TextGeneration);
    spec.architecture = Some(architecture.to_string());
    let spec = Catalog::new(vec![spec]).unwrap().models.remove(0);
    let options = EngineOptions { max_sequences, ..EngineOptions::for_device(&Device::Cpu) };
    let model = LoadedModel::load(&spec, spec.path.as_ref().unwrap(), &cpu(), options).unwrap();
    (model, file)
}

fn generator(model: &LoadedModel) -> &Generator {
    match model {
        LoadedModel::Text(g) => g,
        _ => panic!("not a text model"),
    }
}

/// How many leading ids of `got` must equal llama.cpp's: up to (and including) the first step
/// whose llama.cpp margin is a near-tie.
fn compared(reference: &Value) -> usize {
    let margins: Vec<f64> = reference["margins"].as_array().unwrap().iter().map(|m| m.as_f64().unwrap()).collect();
    margins.iter().position(|&m| m < NEAR_TIE).map_or(margins.len(), |i| i + 1)
}

/// Asserts `got` equals llama.cpp's ids up to the first near-tie; returns how many ids were held
/// to llama.cpp's.
fn assert_llama_cpp_ids(got: &[u32], reference: &Value, what: &str) -> usize {
    let want = ids(&reference["ids"]);
    let n = compared(reference);
    // At a near-tie either choice is right; before it, none may differ.
    let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
    assert!(agree >= n - 1, "{what}: ids {got:?}, llama.cpp's {want:?} (compared up to {n})");
    if agree == n - 1 {
        assert!(n < want.len() || reference["margins"][n - 1].as_f64().unwrap() < NEAR_TIE, "{what}");
    }
    n
}

#[test]
fn every_gguf_file_gives_llama_cpps_greedy_ids() {
    let prompts = prompts();
    let mut kinds = std::collections::BTreeSet::new();
    let (mut held, mut all) = (0, 0);
    for (family, kind, entry, arch) in files() {
        let (model, _) = load(&entry, &arch, 1);
        let g = generator(&model);
        for (p, r) in prompts.iter().zip(entry["llama_cpp"].as_array().unwrap()) {
            let n = r["ids"].as_array().unwrap().len();
            let (got, _) = g.greedy_with_logits(p, n).unwrap();
            held += assert_llama_cpp_ids(&got, r, &format!("{family} {kind}"));
            all += n;
        }
        kinds.insert(kind);
    }
    eprintln!("{held} of {all} ids held to llama.cpp's (the rest follow a near-tie)");
    assert!(held * 4 >= all * 3, "near-ties leave most ids compared: {held} of {all}");
    let want: std::collections::BTreeSet<String> =
        ["Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"].iter().map(|s| s.to_string()).collect();
    assert_eq!(kinds, want, "every quantization the issue names is covered");
}

#[test]
fn gguf_files_batched_in_the_engine_give_llama_cpps_ids() {
    let prompts = prompts();
    for (family, kind, entry, arch) in files().into_iter().filter(|(_, k, _, _)| k == "Q4_K_M" || k == "Q8_0") {
        let (model, _) = load(&entry, &arch, 8);
        let g = generator(&model);
        let caps = InputLimits { max_new_tokens: u32::MAX, max_texts: u32::MAX };
        let refs = entry["llama_cpp"].as_array().unwrap();
        let outputs = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .flat_map(|_| prompts.iter().zip(refs))
                .map(|(p, r)| {
                    let n = r["ids"].as_array().unwrap().len();
                    let params = json!({"max_new_tokens": n, "temperature": 0});
                    let params = TextGenerationParams::parse(params.as_object().unwrap(), &caps).unwrap();
                    s.spawn(move || (g.generate_ids(p.clone(), &params, Arc::new(NoProgress)).unwrap(), r))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        });
        for (outcome, r) in outputs {
            let RunOutcome::Done(out) = outcome else { panic!("{family} {kind}: {outcome:?}") };
            let got = ids(&out["token_ids"]);
            let eos = g.eos_token_ids();
            // A job ends at eos: compare what it produced up to there.
            let want = ids(&r["ids"]);
            let upto = want.iter().position(|id| eos.contains(id)).map_or(want.len(), |i| i + 1);
            let mut trimmed = r.clone();
            trimmed["ids"] = json!(want[..upto]);
            trimmed["margins"] = json!(r["margins"].as_array().unwrap()[..upto]);
            if upto >= 4 {
                assert_llama_cpp_ids(&got, &trimmed, &format!("{family} {kind}, batched"));
            }
        }
        assert!(g.stats().peak_batch > 1, "{family} {kind}: the jobs were batched");
    }
}

#[test]
fn q8_0_gives_transformers_ids_on_its_dequantized_weights() {
    let prompts = prompts();
    let min_margin = reference()["min_margin"].as_f64().unwrap();
    for (family, _, entry, arch) in files().into_iter().filter(|(_, k, _, _)| k == "Q8_0") {
        let (model, _) = load(&entry, &arch, 1);
        let g = generator(&model);
        for (p, r) in prompts.iter().zip(entry["dequantized"].as_array().unwrap()) {
            assert!(r["min_margin"].as_f64().unwrap() >= min_margin, "{family}: the fixture's margins are large");
            let want = ids(&r["ids"]);
            let (got, _) = g.greedy_with_logits(p, want.len()).unwrap();
            assert_eq!(got, want, "{family} Q8_0");
        }
    }
}

fn log_softmax_at(logits: &[f32], id: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[id as usize] as f64 - max - sum.ln()
}

#[test]
fn q4_k_m_stays_close_to_the_f32_model() {
    let prompts = prompts();
    let (mut worst, mut sum, mut count) = (0f64, 0f64, 0usize);
    for (family, _, entry, arch) in files().into_iter().filter(|(_, k, _, _)| k == "Q4_K_M") {
        let (model, _) = load(&entry, &arch, 1);
        let g = generator(&model);
        for (p, r) in prompts.iter().zip(entry["f32"].as_array().unwrap()) {
            let want = ids(&r["ids"]);
            let mut seq = p.clone();
            for (k, &id) in want.iter().enumerate() {
                let logits = g.next_token_logits(&seq).unwrap();
                let diff = (log_softmax_at(&logits, id) - r["logprobs"][k].as_f64().unwrap()).abs();
                assert!(diff <= Q4_K_M_MAX_LOGPROB_BOUND, "{family} Q4_K_M token {k}: logprob off by {diff}");
                worst = worst.max(diff);
                (sum, count) = (sum + diff, count + 1);
                seq.push(id);
            }
        }
    }
    let mean = sum / count as f64;
    eprintln!("Q4_K_M against f32: logprob difference {mean:.3} on average, {worst:.3} at most");
    assert!(mean <= Q4_K_M_MEAN_LOGPROB_BOUND, "Q4_K_M is {mean} nats from f32 on average");
    assert!(worst > 0.0, "the quantized model is not the f32 one");
}

/// The catalog reads a GGUF file's family and its chat template (from the file: there is no
/// tokenizer_config.json beside it), messages render with it, and the executor agrees.
#[test]
fn a_gguf_files_catalog_entry_and_chat_template_come_from_the_file() {
    let r = reference();
    let entry = &r["models"]["qwen2"]["files"]["Q4_K_M"];
    let file = fixtures().join(entry["file"].as_str().unwrap());
    assert!(!file.parent().unwrap().join("tokenizer_config.json").exists());
    let spec = Catalog::spec_from_dir("q", &file).unwrap();
    assert_eq!(spec.architecture.as_deref(), Some("Qwen2ForCausalLM"));
    let chat = spec.chat_template.as_ref().expect("the file's tokenizer.chat_template");
    assert!(chat.template.contains("<|im_start|>"));
    assert_eq!(chat.special_tokens.get("eos_token").map(String::as_str), Some("</s>"));
    let (model, _) = load(entry, "Qwen2ForCausalLM", 1);
    let caps = InputLimits { max_new_tokens: u32::MAX, max_texts: u32::MAX };
    let input = JobInput::parse(
        Task::TextGeneration,
        &json!({"messages": [{"role": "user", "content": "What is the capital of France?"}]}),
        json!({"max_new_tokens": 3}).as_object().unwrap(),
        &caps,
    )
    .unwrap();
    let messages = [ferry_core::chat::ChatMessage {
        role: ferry_core::chat::Role::User,
        content: "What is the capital of France?".into(),
    }];
    let g = generator(&model);
    let prompt = g.encode_chat(&messages).unwrap();
    let text = g.tokenizer().decode(&prompt, false).unwrap();
    assert!(
        text.contains("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n")
            && text.ends_with("<|im_start|>assistant\n"),
        "Qwen2's template, from the file: {text}"
    );
    let RunOutcome::Done(out) = model.run(&input, Arc::new(NoProgress)).unwrap() else { panic!() };
    assert!(!out["token_ids"].as_array().unwrap().is_empty());
}

/// What cannot be served from GGUF is refused where the catalog loads, and a file that does
/// not fit its entry where the executor loads it: never served by the wrong code.
#[test]
fn gguf_refusals() {
    let r = reference();
    let llama = fixtures().join(r["models"]["llama"]["files"]["Q8_0"]["file"].as_str().unwrap());
    // A family the GGUF loader does not implement, named by the catalog.
    let mut spec = Catalog::spec_from_dir("x", &llama).unwrap();
    spec.architecture = Some("Gemma2ForCausalLM".into());
    let err = Catalog::new(vec![spec.clone()]).unwrap_err();
    assert!(matches!(err, CatalogError::GgufArchitecture { .. }), "{err}");
    assert!(err.to_string().contains("Qwen3ForCausalLM"), "the supported list: {err}");
    // A llama file served as Qwen2: the executor refuses at load.
    spec.architecture = Some("Qwen2ForCausalLM".into());
    let options = EngineOptions::for_device(&Device::Cpu);
    let Err(err) = LoadedModel::load(&spec, &llama, &cpu(), options.clone()) else { panic!("loaded as Qwen2") };
    assert!(err.to_string().contains("\"llama\"") && err.to_string().contains("Qwen2ForCausalLM"), "{err}");
    // A truncated file, and one without its tokenizer: load errors naming the problem.
    let dir = ferry_executor::testing::ScratchDir::new("ferry-gguf-bad").unwrap();
    let bytes = std::fs::read(&llama).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::copy(fixtures().join("llama/tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    spec.architecture = Some("LlamaForCausalLM".into());
    let Err(err) = LoadedModel::load(&spec, &cut, &cpu(), options.clone()) else { panic!("a truncated file loaded") };
    assert_eq!(err.kind(), "model_load_failed");
    assert!(err.to_string().contains("cut.gguf"), "{err}");
    let alone = ferry_executor::testing::ScratchDir::new("ferry-gguf-alone").unwrap();
    let copy = alone.path().join("m.gguf");
    std::fs::copy(&llama, &copy).unwrap();
    let Err(err) = LoadedModel::load(&spec, &copy, &cpu(), options.clone()) else { panic!("loaded without tokenizer") };
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    // A directory holding one GGUF file (an S3 model's cache) is that file.
    std::fs::copy(fixtures().join("llama/tokenizer.json"), alone.path().join("tokenizer.json")).unwrap();
    let model = LoadedModel::load(&spec, alone.path(), &cpu(), options).unwrap();
    assert_eq!(generator(&model).vocab_size(), 384);
}

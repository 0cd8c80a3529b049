//! Every text-generation family against HF transformers: the tiny random-weight models of
//! `fixtures/families/` (made by `make_families.py`, which also wrote transformers' greedy
//! ids for three prompts each, with the smallest logit margin along the way), loaded the way
//! the executor loads a catalog entry, give transformers' greedy ids token for token: one
//! sequence at a time, and all prompts of all families at once through the batching engine
//! (prefills and decode steps mixed in one pass, sliding windows, soft caps, QK norms, LongRoPE
//! and partial rotary in the batched kernels).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use ferry_core::catalog::Catalog;
use ferry_core::input::{InputLimits, JobInput, TextGenerationParams};
use ferry_core::job::Task;
use ferry_executor::models::generate::EngineOptions;
use ferry_executor::models::{LoadedModel, NoProgress, Placement, RunOutcome};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/families")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

fn cpu() -> Placement {
    Placement { device: Device::Cpu, dtype: DType::F32 }
}

struct Case {
    family: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()
}

fn cases() -> Vec<Case> {
    let r = reference();
    let mut out = Vec::new();
    for (family, f) in r["families"].as_object().unwrap() {
        for c in f["cases"].as_array().unwrap() {
            out.push(Case {
                family: family.clone(),
                prompt_ids: ids(&c["prompt_ids"]),
                greedy_ids: ids(&c["greedy_ids"]),
            });
        }
    }
    out
}

/// A family's fixture loaded as the executor loads a catalog entry: the spec read from the
/// directory (its architecture from `config.json`), then the registry's loader.
fn load(family: &str, max_sequences: usize) -> (LoadedModel, String) {
    let dir = fixtures().join(family);
    let spec = Catalog::spec_from_dir(family, &dir).unwrap();
    let arch = spec.architecture.clone().unwrap();
    let options = EngineOptions { max_sequences, ..EngineOptions::for_device(&Device::Cpu) };
    (LoadedModel::load(&spec, &dir, &cpu(), options).unwrap(), arch)
}

fn greedy_params(n: usize) -> TextGenerationParams {
    let caps = InputLimits { max_new_tokens: u32::MAX, max_texts: u32::MAX };
    TextGenerationParams::parse(json!({"max_new_tokens": n, "temperature": 0}).as_object().unwrap(), &caps).unwrap()
}

#[test]
fn the_fixtures_cover_every_text_family() {
    let r = reference();
    let mut archs: Vec<&str> =
        r["families"].as_object().unwrap().values().map(|f| f["architecture"].as_str().unwrap()).collect();
    archs.sort_unstable();
    let mut served: Vec<&str> = ferry_executor::models::TEXT_FAMILIES.iter().map(|f| f.architecture).collect();
    served.sort_unstable();
    assert_eq!(archs, served, "one fixture per family the executor serves");
}

#[test]
fn each_family_alone_gives_transformers_greedy_ids() {
    for case in cases() {
        let (model, arch) = load(&case.family, 1);
        let LoadedModel::Text(generator) = &model else { panic!("{arch} is not a text model") };
        let (got, _) = generator.greedy_with_logits(&case.prompt_ids, case.greedy_ids.len()).unwrap();
        assert_eq!(got, case.greedy_ids, "{arch}, prompt of {} ids", case.prompt_ids.len());
    }
}

#[test]
fn every_family_batched_in_its_engine_gives_transformers_greedy_ids() {
    let reference = reference();
    let n = reference["new_tokens"].as_u64().unwrap() as usize;
    let all = cases();
    for family in reference["families"].as_object().unwrap().keys() {
        let (model, arch) = load(family, 32);
        let model = Arc::new(model);
        let LoadedModel::Text(generator) = model.as_ref() else { panic!("{arch} is not a text model") };
        let eos = generator.eos_token_ids().to_vec();
        // Each prompt three times, all at once: prefills and decodes share passes.
        let mine: Vec<&Case> = all.iter().filter(|c| &c.family == family).collect();
        let outputs = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .flat_map(|_| mine.iter())
                .map(|case| {
                    assert!(
                        !case.greedy_ids.iter().any(|id| eos.contains(id)),
                        "{arch}: the reference never ends early"
                    );
                    s.spawn(move || {
                        let params = greedy_params(n);
                        generator.generate_ids(case.prompt_ids.clone(), &params, Arc::new(NoProgress)).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        });
        for (outcome, case) in outputs.iter().zip((0..3).flat_map(|_| mine.iter())) {
            let RunOutcome::Done(out) = outcome else { panic!("{arch}: {outcome:?}") };
            assert_eq!(ids(&out["token_ids"]), case.greedy_ids, "{arch}, prompt of {} ids", case.prompt_ids.len());
        }
        assert!(generator.stats().peak_batch > 1, "{arch}: the jobs were batched");
        // The job door works the same for every family.
        let caps = InputLimits { max_new_tokens: u32::MAX, max_texts: u32::MAX };
        let prompt = json!({"prompt": "The capital of France is"});
        let params = json!({"max_new_tokens": 4});
        let input = JobInput::parse(Task::TextGeneration, &prompt, params.as_object().unwrap(), &caps).unwrap();
        assert!(matches!(model.run(&input, Arc::new(NoProgress)).unwrap(), RunOutcome::Done(_)), "{arch}");
    }
}

/// What each family adds to Llama is needed: the same weights served by the Llama code give
/// other ids (so the fixtures test the differences, and a family registered under the wrong
/// architecture would be caught).
#[test]
fn the_llama_code_would_get_the_other_families_wrong() {
    for case in cases().into_iter().filter(|c| c.family != "llama") {
        let dir = fixtures().join(&case.family);
        let spec = Catalog::spec_from_dir(&case.family, &dir).unwrap();
        // Loaded through the Llama family (bypassing the architecture check): where the
        // checkpoint has the tensors Llama wants, the tokens differ.
        let family = &ferry_executor::models::TEXT_FAMILIES[0];
        assert_eq!(family.architecture, "LlamaForCausalLM");
        let Ok(generator) =
            ferry_executor::models::decoder::load(&dir, &cpu(), EngineOptions::for_device(&Device::Cpu), family)
        else {
            continue; // Phi-3's fused tensors: Llama cannot even load it.
        };
        let (got, _) = generator.greedy_with_logits(&case.prompt_ids, case.greedy_ids.len()).unwrap();
        assert_ne!(got, case.greedy_ids, "{:?} through the Llama code", spec.architecture);
    }
}

/// Chat messages through the job door: rendered with the model's own template (Llama's
/// from `tokenizer_config.json`, Qwen2's from `chat_template.jinja`) to transformers' prompt
/// ids (`fixtures/chat/chat_reference.json`), then generated from exactly those ids; a
/// conversation the template refuses is an `input.messages` error; a model without a
/// template refuses messages.
#[test]
fn chat_messages_are_rendered_with_the_models_own_template() {
    let chat: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("../chat/chat_reference.json")).unwrap())
            .unwrap();
    let caps = InputLimits { max_new_tokens: u32::MAX, max_texts: u32::MAX };
    let params = json!({"max_new_tokens": 6});
    for (family, template) in [("llama", "llama3"), ("qwen2", "qwen2")] {
        let (model, arch) = load(family, 4);
        let LoadedModel::Text(generator) = &model else { panic!("{arch}") };
        for conv in ["one_user", "system_user", "no_system_multi_turn"] {
            let messages = &chat["conversations"][conv];
            let input = JobInput::parse(
                Task::TextGeneration,
                &json!({"messages": messages}),
                params.as_object().unwrap(),
                &caps,
            )
            .unwrap();
            let prompt_ids = ids(&chat["templates"][template]["cases"][conv]["ids"]);
            let messages_typed: Vec<ferry_core::chat::ChatMessage> = serde_json::from_value(messages.clone()).unwrap();
            assert_eq!(
                generator.encode_chat(&messages_typed).unwrap(),
                prompt_ids,
                "{arch}/{conv}: transformers' prompt ids"
            );
            let (mut want, _) = generator.greedy_with_logits(&prompt_ids, 6).unwrap();
            if let Some(end) = want.iter().position(|id| generator.eos_token_ids().contains(id)) {
                want.truncate(end + 1); // the job ends at eos
            }
            let RunOutcome::Done(out) = model.run(&input, Arc::new(NoProgress)).unwrap() else { panic!() };
            assert_eq!(ids(&out["token_ids"]), want, "{arch}/{conv}");
        }
    }
    // Gemma 2's template refuses a system message.
    let (gemma, _) = load("gemma2", 1);
    let LoadedModel::Text(g) = &gemma else { panic!() };
    let messages: Vec<ferry_core::chat::ChatMessage> =
        serde_json::from_value(chat["conversations"]["system_user"].clone()).unwrap();
    assert!(g.encode_chat(&messages).unwrap_err().to_string().contains("input.messages"), "no template at all");
    let dir = ferry_executor::testing::ScratchDir::new("ferry-gemma-chat").unwrap();
    for entry in std::fs::read_dir(fixtures().join("gemma2")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::copy(fixtures().join("../chat/gemma2.jinja"), dir.path().join("chat_template.jinja")).unwrap();
    let spec = Catalog::spec_from_dir("gemma", dir.path()).unwrap();
    assert!(spec.chat_template.is_some(), "the catalog reads the template too");
    let LoadedModel::Text(g) =
        LoadedModel::load(&spec, dir.path(), &cpu(), EngineOptions::for_device(&Device::Cpu)).unwrap()
    else {
        panic!()
    };
    let e = g.encode_chat(&messages).unwrap_err();
    assert_eq!(e.kind(), "invalid_input");
    assert!(e.to_string().contains("input.messages") && e.to_string().contains("System role not supported"), "{e}");
}

//! Text generation on a tiny random Llama written by `ferry_executor::testing`, loaded
//! through the real loader: KV-cache correctness, greedy and sampled decoding, token events,
//! stopping, input checks, load failures and BOS handling.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device};
use ferry_core::input::{InputLimits, JobInput, TextGenerationParams};
use std::sync::Arc;

use ferry_executor::models::generate::{EngineOptions, Generator, PREFILL_CHUNK};
use ferry_executor::models::llama;
use ferry_executor::models::{
    LoadedModel, ModelError, NoProgress, Placement, Progress, RunOutcome, StopReason, TokenOut,
};
use ferry_executor::testing::{
    ScratchDir, TINY_BOS_ID, TINY_CONTEXT, TINY_EOS_ID, write_tiny_llama, write_tiny_llama_no_bos,
};
use serde_json::{Value, json};

const PROMPT: &str = "once upon a time the ferry";

fn cpu() -> Placement {
    Placement { device: Device::Cpu, dtype: DType::F32 }
}

fn tiny(seed: u64) -> (ScratchDir, Generator) {
    let dir = ScratchDir::new("ferry-llama-test").unwrap();
    write_tiny_llama(dir.path(), seed).unwrap();
    let model = llama::load(dir.path(), &cpu()).unwrap();
    (dir, model)
}

/// Records token events; asks to stop once it has seen `stop_after` tokens.
#[derive(Default)]
struct Recorder {
    tokens: Mutex<Vec<TokenOut>>,
    stop_after: Option<(usize, StopReason)>,
}

impl Recorder {
    fn stopping_after(n: usize, reason: StopReason) -> Self {
        Recorder { tokens: Mutex::default(), stop_after: Some((n, reason)) }
    }
    fn tokens(&self) -> Vec<TokenOut> {
        self.tokens.lock().unwrap().clone()
    }
}

impl Progress for Recorder {
    fn token(&self, token: TokenOut) {
        self.tokens.lock().unwrap().push(token);
    }
    fn percentage(&self, _: f32, _: Option<String>) {}
    fn stop_requested(&self) -> Option<StopReason> {
        let (n, reason) = self.stop_after?;
        (self.tokens.lock().unwrap().len() >= n).then_some(reason)
    }
}

fn done(outcome: RunOutcome) -> Value {
    match outcome {
        RunOutcome::Done(v) => v,
        other => panic!("expected Done, got {other:?}"),
    }
}

fn ids(out: &Value) -> Vec<u32> {
    out["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn text(out: &Value) -> &str {
    out["text"].as_str().unwrap()
}

fn finish(out: &Value) -> &str {
    out["details"]["finish_reason"].as_str().unwrap()
}

/// The deployment's bounds are the API's to apply; here only the type's own matter.
const NO_CAP: InputLimits = InputLimits { max_new_tokens: u32::MAX, max_texts: u32::MAX };

/// Params as the API reads them.
fn parse_params(v: &Value) -> Result<TextGenerationParams, ferry_core::error::ApiError> {
    TextGenerationParams::parse(v.as_object().expect("params are an object"), &NO_CAP)
}

fn gen_params(v: Value) -> TextGenerationParams {
    parse_params(&v).unwrap()
}

/// A text-generation job's input as the executor reads it back from the job record.
fn stored(input: Value, params: Value) -> JobInput {
    serde_json::from_value(json!({"task": "text-generation", "input": input, "params": params})).unwrap()
}

fn generate(model: &Generator, prompt: &str, params: Value) -> Value {
    done(model.generate(prompt, &gen_params(params), Arc::new(NoProgress)).unwrap())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    v.iter().map(|&x| x as f64 - lse).collect()
}

fn invalid_field(e: ModelError) -> (String, String) {
    match e {
        ModelError::InvalidInput { field, message } => (field, message),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

fn load_message(dir: &Path) -> String {
    match llama::load(dir, &cpu()) {
        Err(ModelError::Load(m)) => m,
        other => panic!("expected a Load error, got {other:?}"),
    }
}

#[test]
fn the_tiny_tokenizer_round_trips_text() {
    let (_dir, model) = tiny(1);
    let tok = model.tokenizer();
    let enc = tok.encode("hello world, the ferry river café", false).unwrap();
    assert!(!enc.get_ids().contains(&0), "every piece is in the vocabulary: {:?}", enc.get_tokens());
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hello world, the ferry river café");
    // Words in the vocabulary are single tokens.
    assert_eq!(tok.encode("the", false).unwrap().get_tokens(), ["▁the"]);
    // Unknown characters become <unk>.
    assert!(tok.encode("the ✓", false).unwrap().get_ids().contains(&0));
}

#[test]
fn kv_cache_decoding_matches_full_recomputation() {
    let (_dir, model) = tiny(11);
    let prompt = model.encode_prompt(PROMPT).unwrap();
    let steps = 8;
    let (generated, cached) = model.greedy_with_logits(&prompt, steps).unwrap();
    assert_eq!(generated.len(), steps);
    assert_eq!(cached.len(), steps);
    for step in 0..steps {
        let mut seq = prompt.clone();
        seq.extend(&generated[..step]);
        let full = model.next_token_logits(&seq).unwrap();
        assert_eq!(full.len(), model.vocab_size());
        let diff = max_abs_diff(&cached[step], &full);
        assert!(diff <= 1e-4, "step {step}: cached and recomputed logits differ by {diff}");
        assert_eq!(argmax(&cached[step]), argmax(&full), "step {step}");
        assert_eq!(generated[step], argmax(&full), "step {step}");
    }

    // The comparison is sensitive: the logits depend on the context, position included,
    // far beyond the tolerance (a cache at the wrong position or missing a layer's keys
    // would show).
    let mut shifted = vec![prompt[0]];
    shifted.extend(&prompt);
    shifted.extend(&generated[..steps - 1]);
    let mut reference = prompt.clone();
    reference.extend(&generated[..steps - 1]);
    let moved =
        max_abs_diff(&model.next_token_logits(&reference).unwrap(), &model.next_token_logits(&shifted).unwrap());
    assert!(moved > 1e-2, "logits barely depend on the context ({moved}): the check above would prove nothing");

    // generate's greedy path is the cached one.
    let out = generate(&model, PROMPT, json!({"max_new_tokens": steps}));
    assert_eq!(ids(&out), generated);
}

#[test]
fn greedy_is_deterministic_and_the_default() {
    let (_dir, model) = tiny(12);
    let a = generate(&model, PROMPT, json!({"max_new_tokens": 24}));
    let b = generate(&model, PROMPT, json!({"max_new_tokens": 24}));
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(text(&a), text(&b));
    assert_eq!(ids(&a).len(), 24);
    assert_eq!(a["details"]["seed"], Value::Null);
    let zero = generate(&model, PROMPT, json!({"max_new_tokens": 24, "temperature": 0}));
    assert_eq!(ids(&zero), ids(&a));
    // Sampling options are ignored at temperature 0.
    let ignored = generate(&model, PROMPT, json!({"max_new_tokens": 24, "temperature": 0.0, "top_k": 3, "seed": 9}));
    assert_eq!(ids(&ignored), ids(&a));
    assert_eq!(ignored["details"]["seed"], Value::Null);
}

#[test]
fn sampling_is_reproducible_for_a_seed() {
    let (_dir, model) = tiny(13);
    let sampled = |seed: u64| generate(&model, PROMPT, json!({"max_new_tokens": 24, "temperature": 1.5, "seed": seed}));
    let a = sampled(7);
    let b = sampled(7);
    let c = sampled(8);
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(text(&a), text(&b));
    assert_ne!(ids(&a), ids(&c), "two seeds gave the same 24 tokens");
    assert_eq!(a["details"]["seed"], json!(7));
    let greedy = generate(&model, PROMPT, json!({"max_new_tokens": 24}));
    assert_ne!(ids(&a), ids(&greedy), "sampling at temperature 1.5 gave the greedy output");

    // Without a seed, the one used is reported and replays the run.
    let free = generate(&model, PROMPT, json!({"max_new_tokens": 24, "temperature": 1.5}));
    let seed = free["details"]["seed"].as_u64().expect("a sampled run reports its seed");
    assert_eq!(ids(&sampled(seed)), ids(&free));

    // top_k 1 and a tiny top_p keep only the most likely token: greedy again.
    let k1 = generate(&model, PROMPT, json!({"max_new_tokens": 24, "temperature": 1.5, "top_k": 1, "seed": 3}));
    assert_eq!(ids(&k1), ids(&greedy));
    let p0 = generate(&model, PROMPT, json!({"max_new_tokens": 24, "temperature": 1.5, "top_p": 1e-6, "seed": 3}));
    assert_eq!(ids(&p0), ids(&greedy));
    // top_k and top_p together, reproducibly.
    let kp = |seed| {
        ids(&generate(
            &model,
            PROMPT,
            json!({"max_new_tokens": 24, "temperature": 1.2, "top_k": 20, "top_p": 0.9, "seed": seed}),
        ))
    };
    assert_eq!(kp(5), kp(5));
}

#[test]
fn repetition_penalty_discourages_seen_tokens() {
    let (_dir, model) = tiny(14);
    let prompt = model.encode_prompt(PROMPT).unwrap();
    let plain = ids(&generate(&model, PROMPT, json!({"max_new_tokens": 40})));
    let unique: HashSet<u32> = plain.iter().copied().collect();
    assert!(unique.len() < plain.len(), "greedy decoding of the tiny model repeats itself: {plain:?}");

    let penalized = ids(&generate(&model, PROMPT, json!({"max_new_tokens": 40, "repetition_penalty": 10.0})));
    let unique: HashSet<u32> = penalized.iter().copied().collect();
    assert_eq!(unique.len(), penalized.len(), "a strong penalty still repeated a token: {penalized:?}");
    assert!(penalized.iter().all(|id| !prompt.contains(id)), "the penalty covers the prompt too");
    // A penalty of 1 is none.
    assert_eq!(ids(&generate(&model, PROMPT, json!({"max_new_tokens": 40, "repetition_penalty": 1.0}))), plain);
}

fn check_events(model: &Generator, out: &Value, events: &[TokenOut], greedy: bool) {
    let prompt = model.encode_prompt(PROMPT).unwrap();
    let out_ids = ids(out);
    assert_eq!(events.len(), out_ids.len());
    assert_eq!(out["details"]["generated_tokens"], json!(out_ids.len()));
    assert_eq!(events.iter().map(|t| t.id).collect::<Vec<_>>(), out_ids);
    assert_eq!(events.iter().map(|t| t.text.as_str()).collect::<String>(), text(out));
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.index as usize, i);
        let logprob = event.logprob.expect("every token has a logprob");
        assert!(logprob.is_finite() && logprob <= 0.0, "token {i}: logprob {logprob}");
        let mut seq = prompt.clone();
        seq.extend(&out_ids[..i]);
        let expected = log_softmax(&model.next_token_logits(&seq).unwrap());
        let want = expected[event.id as usize];
        assert!((logprob as f64 - want).abs() < 1e-4, "token {i}: logprob {logprob}, expected {want}");
        if greedy {
            let max = expected.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert!((logprob as f64 - max).abs() < 1e-4, "token {i}: greedy logprob {logprob} is not the max {max}");
        }
    }
}

#[test]
fn token_events_add_up_to_the_output() {
    let (_dir, model) = tiny(15);
    let rec = Arc::new(Recorder::default());
    let out = done(model.generate(PROMPT, &gen_params(json!({"max_new_tokens": 20})), rec.clone()).unwrap());
    assert!(!text(&out).is_empty());
    check_events(&model, &out, &rec.tokens(), true);
    let details = &out["details"];
    assert_eq!(details["prompt_tokens"], json!(model.encode_prompt(PROMPT).unwrap().len()));
    assert!(details["time_to_first_token_ms"].as_f64().unwrap() >= 0.0);
    assert!(details["tokens_per_s"].as_f64().unwrap() > 0.0);

    let rec = Arc::new(Recorder::default());
    let params = gen_params(json!({"max_new_tokens": 20, "temperature": 1.5, "seed": 1}));
    let out = done(model.generate(PROMPT, &params, rec.clone()).unwrap());
    check_events(&model, &out, &rec.tokens(), false);
}

#[test]
fn stop_sequences_cut_the_text() {
    let (_dir, model) = tiny(16);
    let full = generate(&model, PROMPT, json!({"max_new_tokens": 40}));
    let full_text = text(&full).to_string();
    let full_ids = ids(&full);
    // A stop string from the middle of the greedy output: three characters from a
    // character boundary around a third of the way.
    let chars: Vec<(usize, char)> = full_text.char_indices().collect();
    assert!(chars.len() > 12, "greedy output too short: {full_text:?}");
    let (begin, _) = chars[chars.len() / 3];
    let end = chars.get(chars.len() / 3 + 3).map_or(full_text.len(), |c| c.0);
    let stop = full_text[begin..end].to_string();
    let cut = full_text.find(&stop).unwrap();

    let rec = Arc::new(Recorder::default());
    let params = gen_params(json!({"max_new_tokens": 40, "stop": ["never-in-this-output", stop.clone()]}));
    let out = done(model.generate(PROMPT, &params, rec.clone()).unwrap());
    assert_eq!(finish(&out), "stop_sequence");
    assert_eq!(text(&out), &full_text[..cut], "stop {stop:?}");
    let n = ids(&out).len();
    assert_eq!(ids(&out), full_ids[..n]);
    // Generation stopped at the token that completed the stop sequence, not later.
    let decode = |k: usize| model.tokenizer().decode(&full_ids[..k], true).unwrap();
    assert!(decode(n).contains(&stop));
    assert!(!decode(n - 1).contains(&stop));
    // The streamed text never contains the stop sequence, and adds up to the output.
    let events = rec.tokens();
    assert_eq!(events.iter().map(|t| t.text.as_str()).collect::<String>(), text(&out));

    // A single string works too.
    let single = generate(&model, PROMPT, json!({"max_new_tokens": 40, "stop": stop}));
    assert_eq!(ids(&single), ids(&out));
}

#[test]
fn max_new_tokens_and_the_default_length() {
    let (_dir, model) = tiny(17);
    for n in [1, 5, 13] {
        let out = generate(&model, PROMPT, json!({"max_new_tokens": n}));
        assert_eq!(finish(&out), "length");
        assert_eq!(ids(&out).len(), n);
        assert_eq!(out["details"]["generated_tokens"], json!(n));
    }
    // Without max_new_tokens: 256, cut to what fits the 128-token context.
    let prompt_tokens = model.encode_prompt(PROMPT).unwrap().len();
    let out = generate(&model, PROMPT, json!({}));
    assert_eq!(finish(&out), "length");
    assert_eq!(ids(&out).len(), TINY_CONTEXT - prompt_tokens);
    // Exactly filling the context is allowed.
    let out = generate(&model, PROMPT, json!({"max_new_tokens": TINY_CONTEXT - prompt_tokens}));
    assert_eq!(ids(&out).len(), TINY_CONTEXT - prompt_tokens);
}

#[test]
fn a_stop_request_returns_the_partial_output() {
    let (_dir, model) = tiny(18);
    let rec = Arc::new(Recorder::stopping_after(3, StopReason::Cancelled));
    let outcome = model.generate(PROMPT, &gen_params(json!({"max_new_tokens": 20})), rec.clone()).unwrap();
    let RunOutcome::Stopped { reason, partial } = outcome else { panic!("expected Stopped, got {outcome:?}") };
    assert_eq!(reason, StopReason::Cancelled);
    assert_eq!(ids(&partial).len(), 3);
    assert_eq!(rec.tokens().len(), 3);
    assert_eq!(partial["details"]["finish_reason"], "cancelled");
    assert_eq!(partial["details"]["generated_tokens"], json!(3));
    let full = generate(&model, PROMPT, json!({"max_new_tokens": 20}));
    assert_eq!(ids(&partial), ids(&full)[..3]);
    assert_eq!(text(&partial), model.tokenizer().decode(&ids(&partial), true).unwrap());

    // Asked before the first forward pass: nothing generated.
    let rec = Arc::new(Recorder::stopping_after(0, StopReason::TimedOut));
    match model.generate(PROMPT, &TextGenerationParams::default(), rec.clone()).unwrap() {
        RunOutcome::Stopped { reason: StopReason::TimedOut, partial } => {
            assert_eq!(ids(&partial), Vec::<u32>::new());
            assert_eq!(partial["text"], "");
            assert_eq!(partial["details"]["finish_reason"], "timed_out");
            assert_eq!(partial["details"]["time_to_first_token_ms"], Value::Null);
        }
        other => panic!("expected Stopped(TimedOut), got {other:?}"),
    }
}

#[test]
fn eos_tokens_stop_generation() {
    let dir = ScratchDir::new("ferry-llama-eos").unwrap();
    write_tiny_llama(dir.path(), 19).unwrap();
    let model = llama::load(dir.path(), &cpu()).unwrap();
    assert_eq!(model.eos_token_ids(), [TINY_EOS_ID]);
    let reference = ids(&generate(&model, PROMPT, json!({"max_new_tokens": 12})));
    // The first token not seen before, past the first one.
    let at = (1..reference.len()).find(|&i| !reference[..i].contains(&reference[i])).unwrap();
    let eos = reference[at];

    // generation_config.json's eos_token_id (a list) adds to config.json's.
    std::fs::write(dir.path().join("generation_config.json"), json!({"eos_token_id": [eos]}).to_string()).unwrap();
    let model = llama::load(dir.path(), &cpu()).unwrap();
    assert_eq!(model.eos_token_ids(), {
        let mut v = vec![TINY_EOS_ID, eos];
        v.sort();
        v
    });
    let rec = Arc::new(Recorder::default());
    let out = done(model.generate(PROMPT, &gen_params(json!({"max_new_tokens": 12})), rec.clone()).unwrap());
    assert_eq!(finish(&out), "eos_token");
    assert_eq!(ids(&out), reference[..=at], "the EOS token ends the output and is part of it");
    assert_eq!(rec.tokens().len(), at + 1);
    assert_eq!(text(&out), model.tokenizer().decode(&reference[..=at], true).unwrap());

    // config.json's eos_token_id as a list.
    std::fs::remove_file(dir.path().join("generation_config.json")).unwrap();
    let config_path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["eos_token_id"] = json!([TINY_EOS_ID, eos]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = llama::load(dir.path(), &cpu()).unwrap();
    let out = generate(&model, PROMPT, json!({"max_new_tokens": 12}));
    assert_eq!(finish(&out), "eos_token");
    assert_eq!(ids(&out).len(), at + 1);
}

#[test]
fn bad_input_is_refused_with_the_field() {
    let (_dir, model) = tiny(20);
    let refuse = |prompt: &str, params: Value| {
        invalid_field(model.generate(prompt, &gen_params(params), Arc::new(NoProgress)).unwrap_err())
    };

    assert_eq!(refuse("", json!({})).0, "input.prompt");
    assert_eq!(refuse("  \n ", json!({})).0, "input.prompt");
    let (field, message) = refuse("bell \u{7} here", json!({}));
    assert_eq!(field, "input.prompt");
    assert!(message.contains("U+0007"), "{message}");
    assert_eq!(refuse("nul \0", json!({})).0, "input.prompt");
    assert_eq!(refuse("del \u{7f}", json!({})).0, "input.prompt");
    assert_eq!(refuse("c1 \u{85}", json!({})).0, "input.prompt");
    // Tabs and newlines are fine.
    generate(&model, "the\tferry\r\nriver", json!({"max_new_tokens": 2}));

    // A prompt that does not fit the context.
    let long = "the ".repeat(200);
    let n = model.tokenizer().encode(long.as_str(), true).unwrap().len();
    let (field, message) = refuse(&long, json!({"max_new_tokens": 1}));
    assert_eq!(field, "input.prompt");
    assert!(message.contains(&n.to_string()) && message.contains("128"), "{message}");
    // Exactly the context is still too long (no room for one token).
    let exact = "the ".repeat(TINY_CONTEXT - 1);
    assert_eq!(refuse(&exact, json!({})).0, "input.prompt");

    // max_new_tokens beyond what fits beside the prompt.
    let prompt_tokens = model.encode_prompt(PROMPT).unwrap().len();
    let (field, message) = refuse(PROMPT, json!({"max_new_tokens": TINY_CONTEXT - prompt_tokens + 1}));
    assert_eq!(field, "params.max_new_tokens");
    assert!(message.contains(&(TINY_CONTEXT - prompt_tokens).to_string()) && message.contains("128"), "{message}");

    // Params checked again here, whoever built them.
    for (params, want) in [
        (TextGenerationParams { max_new_tokens: Some(0), ..Default::default() }, "params.max_new_tokens"),
        (TextGenerationParams { temperature: Some(-1.0), ..Default::default() }, "params.temperature"),
        (TextGenerationParams { temperature: Some(f64::NAN), ..Default::default() }, "params.temperature"),
        (TextGenerationParams { top_p: Some(0.0), ..Default::default() }, "params.top_p"),
        (TextGenerationParams { top_p: Some(1.01), ..Default::default() }, "params.top_p"),
        (TextGenerationParams { top_k: Some(0), ..Default::default() }, "params.top_k"),
        (TextGenerationParams { repetition_penalty: Some(0.0), ..Default::default() }, "params.repetition_penalty"),
        (TextGenerationParams { repetition_penalty: Some(-2.0), ..Default::default() }, "params.repetition_penalty"),
    ] {
        let (field, _) = invalid_field(model.generate(PROMPT, &params, Arc::new(NoProgress)).unwrap_err());
        assert_eq!(field, want, "{params:?}");
    }
    for (params, want) in [
        (json!({"max_new_tokens": 0}), "params.max_new_tokens"),
        (json!({"temperature": -0.1}), "params.temperature"),
        (json!({"top_p": 0}), "params.top_p"),
        (json!({"top_k": 0}), "params.top_k"),
        (json!({"repetition_penalty": 0}), "params.repetition_penalty"),
    ] {
        assert_eq!(parse_params(&params).unwrap_err().field.as_deref(), Some(want), "{params}");
    }
}

#[test]
fn the_loaded_model_runs_jobs_as_stored() {
    let dir = ScratchDir::new("ferry-llama-loaded").unwrap();
    write_tiny_llama(dir.path(), 21).unwrap();
    let model = LoadedModel::Text(llama::load(dir.path(), &cpu()).unwrap());
    let out = match model
        .run(&stored(json!({"prompt": PROMPT}), json!({"max_new_tokens": 4, "stop": null})), Arc::new(NoProgress))
    {
        Ok(RunOutcome::Done(v)) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(ids(&out).len(), 4);
    let details = out["details"].as_object().unwrap();
    let mut keys: Vec<&str> = details.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["finish_reason", "generated_tokens", "prompt_tokens", "seed", "time_to_first_token_ms", "tokens_per_s"]
    );
    let e = model.run(&stored(json!({"prompt": PROMPT}), json!({"top_k": 0})), Arc::new(NoProgress)).unwrap_err();
    assert_eq!(invalid_field(e).0, "params.top_k");
    let e = model.run(&stored(json!({"prompt": ""}), json!({})), Arc::new(NoProgress)).unwrap_err();
    assert_eq!(e.kind(), "invalid_input");
    assert!(!e.is_retryable());
}

#[test]
fn one_model_serves_concurrent_jobs() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Generator>();
    let (_dir, model) = tiny(22);
    let greedy = json!({"max_new_tokens": 16});
    let sampled = json!({"max_new_tokens": 16, "temperature": 1.0, "seed": 4});
    let alone =
        (ids(&generate(&model, PROMPT, greedy.clone())), ids(&generate(&model, "hello world", sampled.clone())));
    let together = std::thread::scope(|s| {
        let a = s.spawn(|| ids(&generate(&model, PROMPT, greedy.clone())));
        let b = s.spawn(|| ids(&generate(&model, "hello world", sampled.clone())));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(alone, together);
}

#[test]
fn missing_or_corrupt_files_are_load_errors() {
    let base = ScratchDir::new("ferry-llama-load").unwrap();

    let missing = base.path().join("does-not-exist");
    assert!(load_message(&missing).contains("does-not-exist"));

    let fresh = |name: &str| {
        let dir = base.path().join(name);
        write_tiny_llama(&dir, 23).unwrap();
        dir
    };

    let dir = fresh("truncated");
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let m = load_message(&dir);
    assert!(m.contains("model.safetensors"), "{m}");

    let dir = fresh("garbage");
    std::fs::write(dir.join("model.safetensors"), b"not a safetensors file").unwrap();
    assert!(load_message(&dir).contains("model.safetensors"));

    let dir = fresh("no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(load_message(&dir).contains("safetensors"));

    let dir = fresh("no-tokenizer");
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert!(load_message(&dir).contains("tokenizer.json"));

    let dir = fresh("bad-tokenizer");
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    assert!(load_message(&dir).contains("tokenizer.json"));

    let dir = fresh("no-config");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(load_message(&dir).contains("config.json"));

    let dir = fresh("bad-config");
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 64").unwrap();
    assert!(load_message(&dir).contains("config.json"));

    let dir = fresh("bad-generation-config");
    std::fs::write(dir.join("generation_config.json"), "{\"eos_token_id\": \"x\"}").unwrap();
    assert!(load_message(&dir).contains("generation_config.json"));

    // Weights that do not match the config: a missing tensor, a wrong shape.
    let dir = fresh("missing-tensor");
    let weights = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    tensors.remove("model.layers.1.mlp.up_proj.weight").unwrap();
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let m = load_message(&dir);
    assert!(m.contains("model.layers.1.mlp.up_proj.weight"), "{m}");

    let dir = fresh("wrong-shape");
    let config_path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["intermediate_size"] = json!(96);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let m = load_message(&dir);
    assert!(m.contains("mlp") && m.contains("shape"), "{m}");

    let dir = fresh("bad-heads");
    let config_path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["num_key_value_heads"] = json!(3);
    std::fs::write(&config_path, config.to_string()).unwrap();
    assert!(load_message(&dir).contains("num_key_value_heads"));
}

#[test]
fn bos_comes_from_the_tokenizer_only() {
    let (_dir, with_bos) = tiny(24);
    let no_bos_dir = ScratchDir::new("ferry-llama-nobos").unwrap();
    write_tiny_llama_no_bos(no_bos_dir.path(), 24).unwrap();
    let no_bos = llama::load(no_bos_dir.path(), &cpu()).unwrap();

    let plain = with_bos.tokenizer().encode(PROMPT, false).unwrap().get_ids().to_vec();
    assert!(!plain.contains(&TINY_BOS_ID));

    let ids_bos = with_bos.encode_prompt(PROMPT).unwrap();
    assert_eq!(ids_bos[0], TINY_BOS_ID);
    assert_eq!(ids_bos[1..], plain);
    let out = generate(&with_bos, PROMPT, json!({"max_new_tokens": 2}));
    assert_eq!(out["details"]["prompt_tokens"], json!(plain.len() + 1));

    let ids_plain = no_bos.encode_prompt(PROMPT).unwrap();
    assert_eq!(ids_plain, plain, "no BOS is prepended when the tokenizer adds none");
    let out = generate(&no_bos, PROMPT, json!({"max_new_tokens": 2}));
    assert_eq!(out["details"]["prompt_tokens"], json!(plain.len()));
    // Same weights: the generation differs only by the BOS in the context.
    let (_, cached) = no_bos.greedy_with_logits(&ids_plain, 1).unwrap();
    assert_eq!(ids(&out)[0], argmax(&cached[0]));
}

#[test]
fn sharded_weights_load_through_the_index() {
    let (dir, model) = tiny(25);
    let reference = ids(&generate(&model, PROMPT, json!({"max_new_tokens": 8})));
    drop(model);

    // Split the weights in two shards named by an index, as large checkpoints are.
    let weights = dir.path().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    std::fs::remove_file(&weights).unwrap();
    let (mut first, mut second) = (std::collections::HashMap::new(), std::collections::HashMap::new());
    let mut weight_map = serde_json::Map::new();
    for (name, tensor) in tensors {
        let (shard, file) = if name.starts_with("model.layers.1.") {
            (&mut second, "model-00002-of-00002.safetensors")
        } else {
            (&mut first, "model-00001-of-00002.safetensors")
        };
        weight_map.insert(name.clone(), json!(file));
        shard.insert(name, tensor);
    }
    candle_core::safetensors::save(&first, dir.path().join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&second, dir.path().join("model-00002-of-00002.safetensors")).unwrap();

    // Without an index, every *.safetensors file is read.
    let model = llama::load(dir.path(), &cpu()).unwrap();
    assert_eq!(ids(&generate(&model, PROMPT, json!({"max_new_tokens": 8}))), reference);

    // With an index, only the files it names: a stray file beside them is not read.
    let index = json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.path().join("consolidated.safetensors"), b"not read").unwrap();
    let model = llama::load(dir.path(), &cpu()).unwrap();
    assert_eq!(ids(&generate(&model, PROMPT, json!({"max_new_tokens": 8}))), reference);

    // An index naming a missing shard fails, naming it.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    assert!(load_message(dir.path()).contains("model-00002-of-00002.safetensors"));
}

/// A directory is only served by its own family's code: a catalog entry whose directory's
/// `config.json` names another architecture (a Mistral checkpoint registered as a Llama, or
/// with no architecture at all) is refused at load, not run through the Llama code.
#[test]
fn a_directory_of_another_family_is_refused_at_load() {
    let dir = ScratchDir::new("ferry-llama-family").unwrap();
    write_tiny_llama(dir.path(), 23).unwrap();
    let spec = |arch: Option<&str>| ferry_core::catalog::ModelSpec {
        architecture: arch.map(String::from),
        ..ferry_core::catalog::Catalog::demo().get("tiny-llama").unwrap().clone()
    };
    assert!(
        LoadedModel::load(&spec(None), dir.path(), &cpu(), EngineOptions::for_device(&Device::Cpu)).is_ok(),
        "no architecture: the task's default"
    );
    let config_path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["architectures"] = json!(["MistralForCausalLM"]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    for arch in [None, Some("LlamaForCausalLM")] {
        let Err(e) = LoadedModel::load(&spec(arch), dir.path(), &cpu(), EngineOptions::for_device(&Device::Cpu)) else {
            panic!("{arch:?}: loaded")
        };
        assert_eq!(e.kind(), "model_load_failed", "{e}");
        assert!(e.to_string().contains("MistralForCausalLM") && e.to_string().contains("LlamaForCausalLM"), "{e}");
        assert!(!e.is_retryable());
    }
}

/// Every architecture the catalog accepts is one the executor loads.
#[test]
fn every_catalog_architecture_has_a_loader() {
    for (arch, task) in ferry_core::catalog::ARCHITECTURES {
        let spec = ferry_core::catalog::ModelSpec {
            architecture: Some(arch.to_string()),
            task: *task,
            ..ferry_core::catalog::Catalog::demo().get("tiny-llama").unwrap().clone()
        };
        // An empty directory: the family's own loader is reached and reports its missing files.
        let dir = ScratchDir::new("ferry-arch").unwrap();
        let Err(e) = LoadedModel::load(&spec, dir.path(), &cpu(), EngineOptions::for_device(&Device::Cpu)) else {
            panic!("{arch}: loaded nothing")
        };
        assert!(!e.to_string().contains("is not implemented"), "{arch}: {e}");
    }
}

/// A tiny Llama with room for prompts longer than one prefill chunk.
fn long_context(seed: u64) -> (ScratchDir, Generator) {
    let dir = ScratchDir::new("ferry-llama-long").unwrap();
    let cfg = ferry_executor::tiny::TinyConfig { max_position_embeddings: 1024, ..ferry_executor::tiny::TINY_CONFIG };
    ferry_executor::tiny::write_llama(dir.path(), seed, cfg).unwrap();
    let model = llama::load(dir.path(), &cpu()).unwrap();
    (dir, model)
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_with_the_same_logits_and_stops_between_them() {
    let (_dir, model) = long_context(5);
    let prompt = PROMPT.repeat(60);
    let ids_in = model.encode_prompt(&prompt).unwrap();
    assert!(ids_in.len() > 2 * PREFILL_CHUNK && ids_in.len() < 1000, "{} tokens", ids_in.len());
    // The chunked prefill gives the logits of one pass over the whole prompt.
    let full = model.next_token_logits(&ids_in).unwrap();
    let progress = Arc::new(Recorder::default());
    let out = done(model.generate(&prompt, &gen_params(json!({"max_new_tokens": 1})), progress.clone()).unwrap());
    assert_eq!(ids(&out), vec![argmax(&full)]);
    let logprob = progress.tokens()[0].logprob.unwrap() as f64;
    let want = log_softmax(&full)[argmax(&full) as usize];
    assert!((logprob - want).abs() < 1e-4, "{logprob} vs {want}");

    // A stop asked for during the prefill is seen at the next chunk, before any token.
    struct StopsAfterFirstCheck(std::sync::atomic::AtomicUsize);
    impl Progress for StopsAfterFirstCheck {
        fn token(&self, _: TokenOut) {
            panic!("no token: the prefill was stopped");
        }
        fn percentage(&self, _: f32, _: Option<String>) {}
        fn stop_requested(&self) -> Option<StopReason> {
            let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (n >= 1).then_some(StopReason::TimedOut)
        }
    }
    let stopper = Arc::new(StopsAfterFirstCheck(Default::default()));
    match model.generate(&prompt, &gen_params(json!({"max_new_tokens": 4})), stopper.clone()).unwrap() {
        RunOutcome::Stopped { reason: StopReason::TimedOut, partial } => {
            assert_eq!(partial["details"]["finish_reason"], "timed_out");
            assert_eq!(partial["token_ids"], json!([]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stopper.0.load(std::sync::atomic::Ordering::SeqCst), 2, "checked once before, once after chunk 1");
}

#[test]
fn logprobs_are_in_the_output_when_asked() {
    let (_dir, model) = tiny(21);
    let rec = Arc::new(Recorder::default());
    let out = done(
        model.generate(PROMPT, &gen_params(json!({"max_new_tokens": 12, "logprobs": true})), rec.clone()).unwrap(),
    );
    let logprobs: Vec<f32> = out["logprobs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(logprobs.len(), ids(&out).len());
    let events: Vec<f32> = rec.tokens().iter().map(|t| t.logprob.unwrap()).collect();
    assert_eq!(logprobs, events, "the output's logprobs are the token events'");
    assert!(logprobs.iter().all(|&l| l <= 0.0 && l.is_finite()));
    // Greedy: each is the log-softmax maximum of the logits after its prefix.
    let prompt_ids = model.encode_prompt(PROMPT).unwrap();
    let mut context = prompt_ids.clone();
    for (i, &id) in ids(&out).iter().enumerate().take(3) {
        let want = log_softmax(&model.next_token_logits(&context).unwrap())[id as usize];
        assert!((f64::from(logprobs[i]) - want).abs() < 1e-4, "token {i}: {} vs {want}", logprobs[i]);
        context.push(id);
    }
    // Not asked (or false): no logprobs in the output; a non-boolean is a 400 naming the field.
    let plain = generate(&model, PROMPT, json!({"max_new_tokens": 3}));
    assert!(plain.get("logprobs").is_none());
    assert!(generate(&model, PROMPT, json!({"max_new_tokens": 3, "logprobs": false})).get("logprobs").is_none());
    let err = parse_params(&json!({"logprobs": "yes"})).unwrap_err();
    assert_eq!(err.status.as_u16(), 400);
    assert_eq!(err.field.as_deref(), Some("params.logprobs"));
}

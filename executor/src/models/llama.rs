//! Text generation for the Llama family, on candle.
//!
//! [`LlamaModel::load`] reads a Hugging Face Llama directory: `config.json` (candle's
//! [`LlamaConfig`]), the weights (`*.safetensors`, memory-mapped; the files named by
//! `model.safetensors.index.json` when there is one, else every `*.safetensors` file in
//! the directory, in name order), `tokenizer.json`, and `generation_config.json` if present.
//! Every missing or malformed file is a [`ModelError::Load`] naming the file; the weights are
//! checked tensor by tensor (names and shapes) against the config before candle builds the
//! model, so a broken checkpoint is reported, not a panic. Weights are held in the
//! placement's dtype; logits, probabilities and sampling are always computed in f32.
//!
//! [`LlamaModel::generate`] runs one job. The model is shared between jobs (`&self`): each
//! call builds its own KV cache, so nothing of one job survives into the next.
//!
//! Choices:
//!
//! - **Prompt**: encoded with `tokenizer.encode(prompt, true)`, so the tokenizer's own
//!   post-processor adds a BOS token if and only if it is configured to (Llama 2 and 3
//!   tokenizers are); this code never adds one. It is checked for emptiness, control
//!   characters (Unicode `Cc` other than tab, LF and CR) and length against the context
//!   (`max_position_embeddings`). A `truncation` or `padding` set in `tokenizer.json` is
//!   switched off, so a long prompt is refused rather than silently cut.
//! - **Decoding**: greedy when `temperature` is absent or 0 (`top_p`, `top_k` and `seed`
//!   are then ignored, and the output's `seed` is null); otherwise sampling with candle's
//!   [`LogitsProcessor`] (temperature, then top-k, then top-p), seeded with `seed`, or with a
//!   random seed that the output reports so the run can be replayed. A
//!   `repetition_penalty` other than 1 applies, as in Hugging Face `transformers`, to every
//!   distinct token of the prompt and of the output so far, in greedy decoding too.
//! - **Length**: at most `max_new_tokens` tokens (default [`DEFAULT_MAX_NEW_TOKENS`], cut to
//!   what fits the context); an explicit `max_new_tokens` that does not fit beside the
//!   prompt is refused.
//! - **Stopping**: on an end-of-sequence token (the ids of `config.json`'s `eos_token_id`
//!   and of `generation_config.json`'s, a number or a list; if neither names one, `</s>` or
//!   `<|end_of_text|>` when the tokenizer has it), which is part of the output's
//!   `token_ids` and reported as a token with empty text; when the output text contains one
//!   of the `stop` strings, the text then ending right before the earliest one; or at
//!   `max_new_tokens`. [`Progress::stop_requested`] is asked before every forward pass and
//!   between the [`PREFILL_CHUNK`]-token chunks a long prompt is prefilled in; a stop
//!   request returns [`RunOutcome::Stopped`] with the output so far.
//! - **Token events**: each generated token is reported with the text it adds, found by
//!   decoding all the generated ids (skipping special tokens) and taking the new suffix.
//!   Text is held back while it ends in an incomplete character (the decoder's U+FFFD), so
//!   a multi-byte character comes out whole on the token that completes it, and while it
//!   ends in what could be the start of a stop sequence, so no part of a stop sequence is
//!   ever streamed. Whatever is held back comes out with the last token. The texts of the
//!   events of a finished run therefore add up to the output `text`, as long as the
//!   tokenizer's decoder never rewrites text it has already produced (byte-fallback
//!   tokenizers do when invalid UTF-8 byte runs grow; the output `text` is the authority).
//!   A stopped run's partial `text` is everything decoded so far, held-back text included.
//!   `logprob` is the log-softmax of the raw logits (before penalty and temperature) at
//!   the chosen token.
//!
//! Output (`RunOutcome::Done`):
//!
//! ```json
//! {"text": "...", "token_ids": [..generated ids only..],
//!  "details": {"finish_reason": "length" | "eos_token" | "stop_sequence",
//!              "generated_tokens": 12, "prompt_tokens": 5,
//!              "time_to_first_token_ms": 3.2, "tokens_per_s": 410.0, "seed": 42 | null}}
//! ```
//!
//! A stopped run's partial output has the same shape, with `finish_reason` `cancelled`,
//! `timed_out` or `shutdown` (and `time_to_first_token_ms` null when no token was made).
//! `time_to_first_token_ms` counts from the start of [`LlamaModel::generate`] (prompt
//! encoding and the prefill included); `tokens_per_s` is the generated tokens over the
//! whole call's time.

use std::collections::BTreeSet;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use candle_transformers::models::llama::{Cache, Config, Llama, LlamaConfig, LlamaEosToks};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::{ModelError, Placement, Progress, RunOutcome, StopReason, TokenOut};

use ferry_core::input::{TextGenerationParams, check_text};

/// `max_new_tokens` when a job names none (cut to what fits the context).
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 256;
/// A loaded Llama model with its tokenizer, ready to serve jobs one after another (or
/// concurrently: [`generate`](LlamaModel::generate) only reads it).
pub struct LlamaModel {
    model: Llama,
    config: Config,
    tokenizer: Tokenizer,
    eos_ids: Vec<u32>,
    device: Device,
    dtype: DType,
    /// An empty KV cache with the RoPE tables computed once; each job clones it (the tables
    /// are shared, not copied).
    cache_template: Cache,
}

impl fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlamaModel")
            .field("layers", &self.config.num_hidden_layers)
            .field("hidden_size", &self.config.hidden_size)
            .field("vocab_size", &self.config.vocab_size)
            .field("context_length", &self.config.max_position_embeddings)
            .field("eos_ids", &self.eos_ids)
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .finish()
    }
}

fn load_err(file: &Path, message: impl fmt::Display) -> ModelError {
    ModelError::Load(format!("{}: {message}", file.display()))
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| load_err(path, format!("cannot read it: {e}")))?;
    serde_json::from_str(&text).map_err(|e| load_err(path, format!("not valid JSON: {e}")))
}

/// Token ids from an `eos_token_id` value: a number or a list of numbers.
fn eos_ids_from_json(v: &Value) -> Option<Vec<u32>> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).map(|n| vec![n]),
        Value::Array(items) => {
            items.iter().map(|i| i.as_u64().and_then(|n| u32::try_from(n).ok())).collect::<Option<Vec<_>>>()
        }
        _ => None,
    }
}

/// The weight files: those `model.safetensors.index.json` names, else every `*.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| load_err(&index, "has no weight_map object"))?;
        let names = map
            .values()
            .map(|f| f.as_str().map(str::to_string))
            .collect::<Option<BTreeSet<String>>>()
            .ok_or_else(|| load_err(&index, "weight_map values must be file names"))?;
        names.into_iter().map(|n| dir.join(n)).collect()
    } else {
        let entries = std::fs::read_dir(dir).map_err(|e| load_err(dir, format!("cannot list the directory: {e}")))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| load_err(dir, format!("cannot list the directory: {e}")))?.path();
            if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
                files.push(path);
            }
        }
        files
    };
    files.sort();
    if files.is_empty() {
        return Err(load_err(dir, "no *.safetensors weight files"));
    }
    Ok(files)
}

/// Rejects configurations candle would panic on or silently mis-handle.
fn check_config(c: &Config, path: &Path) -> Result<(), ModelError> {
    let bad = |m: String| Err(load_err(path, m));
    if c.hidden_size == 0 || c.num_attention_heads == 0 || c.num_key_value_heads == 0 || c.num_hidden_layers == 0 {
        return bad(
            "hidden_size, num_attention_heads, num_key_value_heads and num_hidden_layers must be positive".into()
        );
    }
    if c.vocab_size == 0 || c.max_position_embeddings == 0 || c.intermediate_size == 0 {
        return bad("vocab_size, max_position_embeddings and intermediate_size must be positive".into());
    }
    if c.hidden_size % c.num_attention_heads != 0 || (c.hidden_size / c.num_attention_heads) % 2 != 0 {
        return bad(format!(
            "hidden_size {} must be num_attention_heads {} times an even head size",
            c.hidden_size, c.num_attention_heads
        ));
    }
    if c.num_attention_heads % c.num_key_value_heads != 0 {
        return bad(format!(
            "num_attention_heads {} must be a multiple of num_key_value_heads {}",
            c.num_attention_heads, c.num_key_value_heads
        ));
    }
    Ok(())
}

/// The tensors candle's Llama reads, with their shapes.
fn expected_tensors(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let head_dim = h / c.num_attention_heads;
    let (q, kv) = (head_dim * c.num_attention_heads, head_dim * c.num_key_value_heads);
    let mut out =
        vec![("model.embed_tokens.weight".to_string(), vec![v, h]), ("model.norm.weight".to_string(), vec![h])];
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.extend([
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
        ]);
    }
    out
}

fn check_tensors(st: &MmapedSafetensors, c: &Config, dir: &Path) -> Result<(), ModelError> {
    let mut missing = Vec::new();
    for (name, shape) in expected_tensors(c) {
        match st.get(&name) {
            Err(_) => missing.push(name),
            Ok(view) if view.shape() != shape.as_slice() => {
                return Err(load_err(
                    dir,
                    format!("tensor {name} has shape {:?}; config.json implies {shape:?}", view.shape()),
                ));
            }
            Ok(_) => {}
        }
    }
    if !missing.is_empty() {
        let shown = missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let more = if missing.len() > 5 { format!(" and {} more", missing.len() - 5) } else { String::new() };
        return Err(load_err(dir, format!("the safetensors files lack {} tensor(s): {shown}{more}", missing.len())));
    }
    Ok(())
}

impl LlamaModel {
    /// Loads a Hugging Face Llama directory onto `placement` (see the module docs).
    pub fn load(dir: &Path, placement: &Placement) -> Result<LlamaModel, ModelError> {
        if !dir.is_dir() {
            return Err(load_err(dir, "no such model directory"));
        }

        let config_path = dir.join("config.json");
        let config_json = read_json(&config_path)?;
        let llama_config: LlamaConfig = serde_json::from_value(config_json)
            .map_err(|e| load_err(&config_path, format!("not a Llama config: {e}")))?;
        let config = llama_config.into_config(false);
        check_config(&config, &config_path)?;

        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(load_err(&tokenizer_path, "missing"));
        }
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| load_err(&tokenizer_path, format!("not a valid tokenizer: {e}")))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| load_err(&tokenizer_path, format!("cannot switch truncation off: {e}")))?;
        tokenizer.with_padding(None);

        let mut eos_ids: Vec<u32> = match &config.eos_token_id {
            Some(LlamaEosToks::Single(id)) => vec![*id],
            Some(LlamaEosToks::Multiple(ids)) => ids.clone(),
            None => Vec::new(),
        };
        let gen_config_path = dir.join("generation_config.json");
        if gen_config_path.exists() {
            let v = read_json(&gen_config_path)?;
            if let Some(eos) = v.get("eos_token_id").filter(|v| !v.is_null()) {
                let ids = eos_ids_from_json(eos)
                    .ok_or_else(|| load_err(&gen_config_path, "eos_token_id must be a token id or a list of them"))?;
                eos_ids.extend(ids);
            }
        }
        if eos_ids.is_empty() {
            eos_ids.extend(["</s>", "<|end_of_text|>"].iter().filter_map(|t| tokenizer.token_to_id(t)));
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();

        let files = weight_files(dir)?;
        // SAFETY: the files are memory-mapped read-only; like every loader of mmaped
        // weights we rely on nobody truncating them while the model is loaded.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| ModelError::Load(format!("cannot read the weights: {e}")))?;
        check_tensors(&st, &config, dir)?;
        let vb = VarBuilder::from_backend(Box::new(st), placement.dtype, placement.device.clone());
        // candle's loader unwraps some errors inside; the checks above should leave none, and
        // a panic that slips through is still a load failure, not a crashed executor.
        let model = catch_unwind(AssertUnwindSafe(|| Llama::load(vb, &config)))
            .map_err(|_| ModelError::Load(format!("{}: the weights do not fit config.json", dir.display())))?
            .map_err(|e| ModelError::Load(format!("{}: cannot build the model: {e}", dir.display())))?;
        let cache_template = Cache::new(true, placement.dtype, &config, &placement.device)
            .map_err(|e| ModelError::Load(format!("cannot build the KV cache: {e}")))?;

        Ok(LlamaModel {
            model,
            config,
            tokenizer,
            eos_ids,
            device: placement.device.clone(),
            dtype: placement.dtype,
            cache_template,
        })
    }

    /// The context length in tokens (`max_position_embeddings`): prompt plus output.
    pub fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// The model's vocabulary size (the length of a logits vector).
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// The end-of-sequence token ids generation stops on.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Checks a prompt and encodes it as `generate` does (special tokens as the tokenizer
    /// adds them). Errors name `input.prompt`.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>, ModelError> {
        const FIELD: &str = "input.prompt";
        check_text(prompt, FIELD)?;
        let encoding = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| ModelError::invalid(FIELD, format!("cannot tokenize: {e}")))?;
        let ids = encoding.get_ids().to_vec();
        if ids.is_empty() {
            return Err(ModelError::invalid(FIELD, "encodes to no tokens"));
        }
        let ctx = self.context_length();
        if ids.len() >= ctx {
            return Err(ModelError::invalid(
                FIELD,
                format!(
                    "the prompt is {} tokens; the model's context is {ctx} tokens, prompt and output together, \
                     so the prompt must be at most {} tokens",
                    ids.len(),
                    ctx - 1
                ),
            ));
        }
        self.check_ids(&ids, FIELD)?;
        Ok(ids)
    }

    fn check_ids(&self, ids: &[u32], field: &str) -> Result<(), ModelError> {
        if let Some(id) = ids.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(ModelError::invalid(
                field,
                format!("token id {id} is outside the model's vocabulary of {}", self.config.vocab_size),
            ));
        }
        Ok(())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer.decode(ids, true).map_err(|e| ModelError::Runtime(format!("cannot decode the output: {e}")))
    }

    /// Generates a continuation of `prompt` (see the module docs for the behaviour and the
    /// output).
    pub fn generate(
        &self,
        prompt: &str,
        params: &TextGenerationParams,
        progress: &dyn Progress,
    ) -> Result<RunOutcome, ModelError> {
        let start = Instant::now();
        // The type's own bounds (the same check the API made), for params built in code.
        params.check().map_err(ModelError::from)?;
        let prompt_ids = self.encode_prompt(prompt)?;
        let ctx = self.context_length();
        let room = ctx - prompt_ids.len();
        let max_new = match params.max_new_tokens {
            Some(n) if n as usize > room => {
                return Err(ModelError::invalid(
                    "params.max_new_tokens",
                    format!(
                        "{n} new tokens do not fit: the prompt is {} tokens and the context {ctx}, so at most {room}",
                        prompt_ids.len()
                    ),
                ));
            }
            Some(n) => n as usize,
            None => room.min(DEFAULT_MAX_NEW_TOKENS as usize),
        };

        let seed = if params.is_greedy() {
            None
        } else {
            Some(params.seed.unwrap_or_else(|| RandomState::new().hash_one(Instant::now())))
        };
        let mut sampler = Sampler::new(params, seed);
        let mut session = Session::new(self);
        let mut stream = TextStream::new(params.stop());
        let mut run = RunState {
            start,
            prompt_tokens: prompt_ids.len(),
            seed,
            generated: Vec::with_capacity(max_new),
            first_token: None,
        };
        // Prompt and output, for the repetition penalty.
        let mut context = prompt_ids.clone();
        let mut input = prompt_ids;

        loop {
            if let Some(reason) = progress.stop_requested() {
                let text = self.decode(&run.generated)?;
                return Ok(RunOutcome::Stopped { reason, partial: run.output(text, stop_reason_name(reason)) });
            }
            let logits = match session.feed_checked(&input, progress)? {
                Ok(logits) => logits,
                Err(reason) => {
                    let text = self.decode(&run.generated)?;
                    return Ok(RunOutcome::Stopped { reason, partial: run.output(text, stop_reason_name(reason)) });
                }
            };
            let id = sampler.choose(&logits, &context)?;
            let logprob = log_softmax_at(&logits, id);
            run.first_token.get_or_insert_with(|| start.elapsed());
            run.generated.push(id);
            context.push(id);

            let full = self.decode(&run.generated)?;
            let is_eos = self.eos_ids.contains(&id);
            let at_length = run.generated.len() >= max_new;
            let step = stream.advance(&full, is_eos || at_length);
            let finish = match step.stop_at {
                Some(_) => Some("stop_sequence"),
                None if is_eos => Some("eos_token"),
                None if at_length => Some("length"),
                None => None,
            };
            progress.token(TokenOut {
                index: (run.generated.len() - 1) as u32,
                id,
                text: step.delta,
                logprob: Some(logprob),
            });
            if let Some(finish) = finish {
                let text = match step.stop_at {
                    Some(at) => full.get(..at).unwrap_or(&full).to_string(),
                    None => full,
                };
                return Ok(RunOutcome::Done(run.output(text, finish)));
            }
            input = vec![id];
        }
    }

    /// The logits for the token after `ids`, computed from scratch: no KV cache, the whole
    /// sequence in one forward pass from position 0. For checking the cached path.
    pub fn next_token_logits(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        if ids.is_empty() || ids.len() > self.context_length() {
            return Err(ModelError::invalid(
                "ids",
                format!("need 1 to {} token ids, got {}", self.context_length(), ids.len()),
            ));
        }
        self.check_ids(ids, "ids")?;
        let mut cache = self.cache_template.clone();
        cache.use_kv_cache = false;
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&input, 0, &mut cache)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    /// Greedy decoding (raw argmax, no penalty) through the KV-cached path `generate`
    /// uses: the prompt in one pass, then one token per step. Returns the `steps` chosen ids
    /// and, for each, the logits it was chosen from. For tests.
    pub fn greedy_with_logits(
        &self,
        prompt_ids: &[u32],
        steps: usize,
    ) -> Result<(Vec<u32>, Vec<Vec<f32>>), ModelError> {
        if prompt_ids.is_empty() || prompt_ids.len() + steps > self.context_length() {
            return Err(ModelError::invalid(
                "ids",
                format!(
                    "{} prompt ids and {steps} steps do not fit the context of {}",
                    prompt_ids.len(),
                    self.context_length()
                ),
            ));
        }
        self.check_ids(prompt_ids, "ids")?;
        let mut session = Session::new(self);
        let (mut ids, mut all_logits) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
        let mut input = prompt_ids.to_vec();
        for _ in 0..steps {
            let logits = session.feed(&input)?;
            let id = argmax(&logits);
            ids.push(id);
            all_logits.push(logits);
            input = vec![id];
        }
        Ok((ids, all_logits))
    }
}

/// Prompt tokens per forward pass of a prefill: between two chunks the job's stop request
/// is checked, so a long prompt cannot hold off a cancel or a timeout.
pub const PREFILL_CHUNK: usize = 256;

/// One job's pass over the model: a KV cache and the position it has reached.
struct Session<'m> {
    model: &'m LlamaModel,
    cache: Cache,
    pos: usize,
}

impl<'m> Session<'m> {
    fn new(model: &'m LlamaModel) -> Self {
        Session { model, cache: model.cache_template.clone(), pos: 0 }
    }

    /// [`Session::feed`], a long prompt in chunks of [`PREFILL_CHUNK`] tokens with a stop
    /// check between them, so a cancel or a timeout is seen during a long prefill too.
    fn feed_checked(
        &mut self,
        ids: &[u32],
        progress: &dyn Progress,
    ) -> Result<Result<Vec<f32>, StopReason>, ModelError> {
        let mut chunks = ids.chunks(PREFILL_CHUNK).peekable();
        while let Some(chunk) = chunks.next() {
            let logits = self.feed(chunk)?;
            if chunks.peek().is_none() {
                return Ok(Ok(logits));
            }
            if let Some(reason) = progress.stop_requested() {
                return Ok(Err(reason));
            }
        }
        Err(ModelError::invalid("input.prompt", "the prompt is empty"))
    }

    /// Runs `ids` (the prompt, then one token at a time) and returns the f32 logits for the
    /// next token.
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        if self.pos + ids.len() > self.model.context_length() {
            return Err(ModelError::Runtime(format!(
                "position {} is past the context of {}",
                self.pos + ids.len(),
                self.model.context_length()
            )));
        }
        let input = Tensor::new(ids, &self.model.device)?.unsqueeze(0)?;
        let logits = self.model.model.forward(&input, self.pos, &mut self.cache)?;
        self.pos += ids.len();
        let logits = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if logits.iter().any(|x| x.is_nan()) {
            return Err(ModelError::Runtime("the model produced NaN logits".into()));
        }
        Ok(logits)
    }
}

/// What a run has produced so far, and how to report it.
struct RunState {
    start: Instant,
    prompt_tokens: usize,
    seed: Option<u64>,
    generated: Vec<u32>,
    first_token: Option<Duration>,
}

impl RunState {
    fn output(&self, text: String, finish_reason: &str) -> Value {
        let elapsed = self.start.elapsed().as_secs_f64();
        let tokens_per_s = if elapsed > 0.0 { self.generated.len() as f64 / elapsed } else { 0.0 };
        json!({
            "text": text,
            "token_ids": self.generated,
            "details": {
                "finish_reason": finish_reason,
                "generated_tokens": self.generated.len(),
                "prompt_tokens": self.prompt_tokens,
                "time_to_first_token_ms": self.first_token.map(|d| d.as_secs_f64() * 1000.0),
                "tokens_per_s": tokens_per_s,
                "seed": self.seed,
            }
        })
    }
}

fn stop_reason_name(reason: StopReason) -> &'static str {
    match reason {
        StopReason::Cancelled => "cancelled",
        StopReason::TimedOut => "timed_out",
        StopReason::Shutdown => "shutdown",
    }
}

/// Picks the next token from raw logits.
enum Sampler {
    Greedy { penalty: f32 },
    Sample { penalty: f32, processor: LogitsProcessor },
}

impl Sampler {
    fn new(params: &TextGenerationParams, seed: Option<u64>) -> Sampler {
        let penalty = params.repetition_penalty() as f32;
        match seed {
            Some(seed) if !params.is_greedy() => {
                let temperature = params.temperature();
                // top_p = 1 keeps every token: the same as no top_p.
                let top_p = params.top_p.filter(|p| *p < 1.0);
                let sampling = match (params.top_k.map(|k| k as usize), top_p) {
                    (None, None) => Sampling::All { temperature },
                    (Some(k), None) => Sampling::TopK { k, temperature },
                    (None, Some(p)) => Sampling::TopP { p, temperature },
                    (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
                };
                Sampler::Sample { penalty, processor: LogitsProcessor::from_sampling(seed, sampling) }
            }
            _ => Sampler::Greedy { penalty },
        }
    }

    /// `context`: the prompt and the tokens generated so far (for the penalty).
    fn choose(&mut self, logits: &[f32], context: &[u32]) -> Result<u32, ModelError> {
        let penalty = match self {
            Sampler::Greedy { penalty } | Sampler::Sample { penalty, .. } => *penalty,
        };
        let penalized;
        let logits = if penalty == 1.0 {
            logits
        } else {
            penalized = apply_repetition_penalty(logits, penalty, context);
            &penalized[..]
        };
        match self {
            Sampler::Greedy { .. } => Ok(argmax(logits)),
            Sampler::Sample { processor, .. } => {
                let t = Tensor::from_slice(logits, logits.len(), &Device::Cpu)?;
                Ok(processor.sample(&t)?)
            }
        }
    }
}

/// Hugging Face's repetition penalty: each distinct token of `context` has its logit
/// divided by `penalty` when positive, multiplied when negative.
fn apply_repetition_penalty(logits: &[f32], penalty: f32, context: &[u32]) -> Vec<f32> {
    let mut out = logits.to_vec();
    let mut seen = vec![false; out.len()];
    for &id in context {
        let i = id as usize;
        if i < out.len() && !seen[i] {
            seen[i] = true;
            out[i] = if out[i] >= 0.0 { out[i] / penalty } else { out[i] * penalty };
        }
    }
    out
}

/// Index of the largest logit (the first one on ties).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// `log_softmax(logits)[id]`, computed stably in f64.
fn log_softmax_at(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
    let x = logits.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY) as f64;
    (x - max - sum.ln()) as f32
}

/// What one generated token adds to the streamed text.
#[derive(Debug, PartialEq)]
struct StreamStep {
    /// Text to report with the token.
    delta: String,
    /// Byte offset in the decoded text where a stop sequence begins, if one appeared: the
    /// output text ends there.
    stop_at: Option<usize>,
}

/// Turns the decoded text of the output so far (after each token) into the increments
/// to stream, holding back incomplete characters and possible starts of stop sequences.
struct TextStream<'s> {
    stops: &'s [String],
    /// Length of the longest stop sequence, in bytes.
    max_stop: usize,
    /// The text streamed so far.
    emitted: String,
}

impl<'s> TextStream<'s> {
    fn new(stops: &'s [String]) -> Self {
        let max_stop = stops.iter().map(String::len).max().unwrap_or(0);
        TextStream { stops, max_stop, emitted: String::new() }
    }

    /// `full`: the decoded output after the latest token; `last`: no token will follow.
    fn advance(&mut self, full: &str, last: bool) -> StreamStep {
        // A stop sequence can only begin in text not streamed yet, bar decoders rewriting
        // earlier text: look back one stop sequence's length to be safe.
        let mut from = self.emitted.len().saturating_sub(self.max_stop).min(full.len());
        while !full.is_char_boundary(from) {
            from -= 1;
        }
        let stop_at = self.stops.iter().filter_map(|s| full[from..].find(s.as_str()).map(|at| from + at)).min();
        let limit = match stop_at {
            Some(at) => at,
            None if last => full.len(),
            None => self.safe_len(full),
        };
        let delta = match full.get(..limit) {
            Some(text) if text.starts_with(&self.emitted) => text[self.emitted.len()..].to_string(),
            _ => String::new(),
        };
        self.emitted.push_str(&delta);
        StreamStep { delta, stop_at }
    }

    /// How much of `full` can be streamed now.
    fn safe_len(&self, full: &str) -> usize {
        // An incomplete character at the end decodes as U+FFFD: wait for the rest.
        let text = full.trim_end_matches('\u{FFFD}');
        // The longest end of `text` that is a proper beginning of a stop sequence.
        let held = self
            .stops
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
            .filter(|prefix| text.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        text.len() - held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_and_argmax() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        assert_eq!(argmax(&logits), 1);
        let total: f64 = (0..4).map(|i| (log_softmax_at(&logits, i) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let lse = logits.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((log_softmax_at(&logits, 2) as f64 - (2.0 - lse)).abs() < 1e-6);
        // Large logits must not overflow.
        assert!(log_softmax_at(&[1000.0, 0.0], 0).abs() < 1e-6);
    }

    #[test]
    fn repetition_penalty_like_transformers() {
        let out = apply_repetition_penalty(&[2.0, -2.0, 1.0], 2.0, &[0, 1, 1, 0, 7]);
        assert_eq!(out, vec![1.0, -4.0, 1.0]);
    }

    fn run_stream(stops: &[&str], texts: &[&str]) -> (Vec<String>, Option<usize>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut stream = TextStream::new(&stops);
        let mut deltas = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let step = stream.advance(t, i + 1 == texts.len());
            deltas.push(step.delta);
            if step.stop_at.is_some() {
                return (deltas, step.stop_at);
            }
        }
        (deltas, None)
    }

    #[test]
    fn stream_holds_back_incomplete_characters() {
        let (deltas, stop) = run_stream(&[], &["a", "a\u{FFFD}", "aé", "aé\u{FFFD}\u{FFFD}", "aé日"]);
        assert_eq!(deltas, ["a", "", "é", "", "日"]);
        assert_eq!(stop, None);
        // The last token flushes everything, even a genuine replacement character.
        let (deltas, _) = run_stream(&[], &["a", "a\u{FFFD}"]);
        assert_eq!(deltas.concat(), "a\u{FFFD}");
    }

    #[test]
    fn stream_holds_back_possible_stop_sequences() {
        let (deltas, stop) = run_stream(&["END"], &["ab", "ab E", "ab EN", "ab ENX", "ab ENXEN", "ab ENXEND"]);
        assert_eq!(deltas, ["ab", " ", "", "ENX", "", ""]);
        assert_eq!(stop, Some(6));
        // A stop sequence spanning tokens is never streamed, and the cut is before it.
        let (deltas, stop) = run_stream(&["\n\n", "é!"], &["hi", "hi\n", "hi\nthere é", "hi\nthere é!x"]);
        assert_eq!(deltas.concat(), "hi\nthere ");
        assert_eq!(stop, Some("hi\nthere ".len()));
        // The earliest of several stop sequences wins.
        let (_, stop) = run_stream(&["b", "a"], &["xxab"]);
        assert_eq!(stop, Some(2));
        // Held-back text comes out at the end when no stop sequence completes.
        let (deltas, stop) = run_stream(&["END"], &["x E", "x EN"]);
        assert_eq!(deltas, ["x ", "EN"]);
        assert_eq!(stop, None);
    }

    /// The real decoder of a byte-fallback tokenizer gives U+FFFD for a partial character,
    /// and the stream holds it back until the character is complete.
    #[test]
    fn stream_with_a_byte_fallback_tokenizer() {
        let tokenizer: Tokenizer = serde_json::from_value(json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": {"<unk>": 0, "<0xC3>": 1, "<0xA9>": 2, "a": 3, "<0xE6>": 4, "<0x97>": 5, "<0xA5>": 6},
                      "merges": []}
        }))
        .unwrap();
        let ids = [3u32, 1, 2, 4, 5, 6, 3];
        let mut stream = TextStream::new(&[]);
        let mut deltas = Vec::new();
        for n in 1..=ids.len() {
            let full = tokenizer.decode(&ids[..n], true).unwrap();
            deltas.push(stream.advance(&full, n == ids.len()).delta);
        }
        assert_eq!(deltas, ["a", "", "é", "", "", "日", "a"]);
    }
}

//! Text generation for every causal family: the tokenizer side ([`TextSpec`]), the engine
//! that serves every job of a loaded model from one thread with continuous batching
//! ([`Generator`]), and the per-sequence pieces (sampling, streamed text).
//!
//! ## The engine (issue 13)
//!
//! One thread owns the model ([`CausalLm`]) and its [`KvCache`]; jobs reach it over a
//! channel ([`Generator::generate`] blocks its caller, the job's blocking thread, until the
//! job ends) and tokens leave it through each job's [`Progress`]. The thread loops:
//!
//! 1. takes every request that arrived (blocking only when it has nothing to do);
//! 2. ends the requests and running sequences whose [`Progress::stop_requested`] says so
//!    (cancel, timeout, shutdown), with their output so far;
//! 3. admits waiting requests, first come first served, while fewer than
//!    [`EngineOptions::max_sequences`] run and the cache, reserved for every running
//!    sequence's whole length (prompt plus `max_new_tokens`), stays within
//!    [`EngineOptions::kv_cache_bytes`] (a request that fits alone is always admitted when
//!    nothing runs);
//! 4. runs one forward pass: every sequence past its prompt brings its last token, and
//!    sequences still in their prompt bring chunks of it, first come first served, up to
//!    [`EngineOptions::prefill_chunk`] prompt tokens per pass in all: a long prompt delays
//!    the others' next token by at most one chunk;
//! 5. samples each sequence's next token with its own sampler (its own seeded RNG: the
//!    same tokens whatever runs beside it), reports it, and ends the sequences that are done
//!    (EOS, a stop sequence, `max_new_tokens`). An ended sequence's slot is filled by the last
//!    one's, so running sequences always hold slots `0..n`.
//!
//! A forward pass that fails ends every sequence in it with [`ModelError::Runtime`]
//! (retryable); NaN logits end only their sequence.
//!
//! ## Choices (as the batch-1 path had them)
//!
//! - **Prompt**: encoded with `tokenizer.encode(prompt, true)`, so the tokenizer's own
//!   post-processor adds a BOS token if and only if it is configured to; this code never adds
//!   one. Checked for emptiness, control characters (Unicode `Cc` other than tab, LF and CR)
//!   and length against the context. A `truncation` or `padding` set in `tokenizer.json` is
//!   switched off, so a long prompt is refused rather than silently cut.
//! - **Decoding**: greedy when `temperature` is absent or 0 (`top_p`, `top_k` and `seed` are
//!   then ignored, and the output's `seed` is null); otherwise sampling with candle's
//!   `LogitsProcessor` (temperature, then top-k, then top-p), seeded with `seed`, or with a
//!   random seed that the output reports so the run can be replayed. A `repetition_penalty`
//!   other than 1 applies, as in transformers, to every distinct token of the prompt and of
//!   the output so far, in greedy decoding too.
//! - **Length**: at most `max_new_tokens` (default [`DEFAULT_MAX_NEW_TOKENS`], cut to what
//!   fits the context); an explicit `max_new_tokens` that does not fit is refused.
//! - **Stopping**: on an end-of-sequence token (part of the output's `token_ids`, reported
//!   with empty text); when the output text contains a `stop` string, the text then ending
//!   right before the earliest one; or at `max_new_tokens`.
//! - **Token events**: each token's text is found incrementally, by decoding a window of the
//!   last few ids (the way TGI does), not the whole output again: text is held back while it
//!   ends in an incomplete character (the decoder's U+FFFD) and while it ends in what could be
//!   the start of a stop sequence, and comes out whole on the token that completes it. The
//!   texts of a run's events add up to its output `text`. `logprob` is the log-softmax of the
//!   raw logits (before penalty and temperature) at the chosen token.
//!
//! Output (`RunOutcome::Done`):
//!
//! ```json
//! {"text": "...", "token_ids": [..generated ids only..],
//!  "logprobs": [..one per token id, only with params.logprobs true..],
//!  "details": {"finish_reason": "length" | "eos_token" | "stop_sequence",
//!              "generated_tokens": 12, "prompt_tokens": 5,
//!              "time_to_first_token_ms": 3.2, "tokens_per_s": 410.0, "seed": 42 | null}}
//! ```
//!
//! A stopped run's partial output has the same shape, with `finish_reason` `cancelled`,
//! `timed_out` or `shutdown`. `time_to_first_token_ms` counts from the call to
//! [`Generator::generate`] (prompt encoding, the wait for a free sequence slot and the
//! prefill included); `tokens_per_s` is the generated tokens over the whole call's time.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use ferry_core::chat::{ChatMessage, ChatTemplate};
use ferry_core::input::{TextGenerationParams, check_text};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::batch::{CausalLm, KvCache, StepSeq};
use super::{ModelError, Progress, RunOutcome, StopReason, TokenOut, load_err};

/// `max_new_tokens` when a job names none (cut to what fits the context).
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 256;

/// Prompt tokens per forward pass (all prefilling sequences together), by default.
pub const PREFILL_CHUNK: usize = 256;

/// How an engine batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Sequences decoded together in one forward pass at most (`--max-batch-sequences`).
    pub max_sequences: usize,
    /// Prompt tokens per forward pass at most.
    pub prefill_chunk: usize,
    /// The most the KV cache may take, in bytes.
    pub kv_cache_bytes: usize,
}

impl EngineOptions {
    /// Sequences per pass when nothing says otherwise: 32 on CPU, 64 on CUDA.
    pub fn default_sequences(device: &Device) -> usize {
        if device.is_cuda() { 64 } else { 32 }
    }

    /// The defaults for `device`: [`EngineOptions::default_sequences`], a [`PREFILL_CHUNK`]
    /// budget, and a KV cache of at most a quarter of the memory available now (CPU), or
    /// 16 GiB (CUDA, until free device memory is read).
    pub fn for_device(device: &Device) -> EngineOptions {
        let kv_cache_bytes =
            if device.is_cuda() { 16 << 30 } else { (available_memory().unwrap_or(4 << 30) / 4).max(64 << 20) };
        EngineOptions { max_sequences: Self::default_sequences(device), prefill_chunk: PREFILL_CHUNK, kv_cache_bytes }
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn read_json(path: &Path) -> Result<Value, ModelError> {
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

/// The tokenizer side of a causal model directory: `tokenizer.json` and the ids generation
/// ends on.
pub struct TextSpec {
    pub tokenizer: Tokenizer,
    /// The model's chat template, if it has one ([`ferry_core::chat`]).
    pub chat: Option<ChatTemplate>,
    /// Sorted, distinct.
    pub eos_ids: Vec<u32>,
}

impl TextSpec {
    /// Reads `tokenizer.json` (truncation and padding switched off) and the end-of-sequence
    /// ids: `config.json`'s `eos_token_id` and `generation_config.json`'s (a number or a
    /// list); if neither names one, `</s>` or `<|end_of_text|>` when the tokenizer has it.
    pub fn load(dir: &Path, config: &Value) -> Result<TextSpec, ModelError> {
        let chat = ChatTemplate::from_dir(dir).map_err(|e| ModelError::Load(e.to_string()))?;
        TextSpec::load_with_chat(dir, config, chat)
    }

    /// [`TextSpec::load`] with the chat template given (a GGUF model's may be in the file).
    pub fn load_with_chat(dir: &Path, config: &Value, chat: Option<ChatTemplate>) -> Result<TextSpec, ModelError> {
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

        let config_path = dir.join("config.json");
        let mut eos_ids = match config.get("eos_token_id").filter(|v| !v.is_null()) {
            Some(v) => eos_ids_from_json(v)
                .ok_or_else(|| load_err(&config_path, "eos_token_id must be a token id or a list of them"))?,
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
        Ok(TextSpec { tokenizer, chat, eos_ids })
    }
}

/// A loaded causal model serving jobs through its engine thread. Dropping the last handle
/// stops the thread once the jobs it runs have ended.
pub struct Generator {
    lm: Arc<dyn CausalLm>,
    text: Arc<TextSpec>,
    options: EngineOptions,
    requests: mpsc::Sender<Request>,
    counters: Arc<Counters>,
}

/// What an engine has done since it started (see [`Generator::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Forward passes run.
    pub passes: u64,
    /// Sequences in those passes, summed (over `passes`: the mean batch).
    pub sequence_rows: u64,
    /// The most sequences one pass has carried.
    pub peak_batch: u64,
    /// Tokens generated.
    pub tokens: u64,
}

#[derive(Default)]
struct Counters {
    passes: AtomicU64,
    sequence_rows: AtomicU64,
    peak_batch: AtomicU64,
    tokens: AtomicU64,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("context_length", &self.lm.context_length())
            .field("vocab_size", &self.lm.vocab_size())
            .field("eos_ids", &self.text.eos_ids)
            .field("options", &self.options)
            .finish()
    }
}

impl Generator {
    /// Starts the engine thread for `lm`.
    pub fn start(lm: Arc<dyn CausalLm>, text: TextSpec, options: EngineOptions) -> Result<Generator, ModelError> {
        let text = Arc::new(text);
        let (requests, inbox) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let engine = Engine::new(lm.clone(), text.clone(), options.clone(), inbox, counters.clone());
        std::thread::Builder::new()
            .name("ferry-engine".into())
            .spawn(move || engine.run())
            .map_err(|e| ModelError::Load(format!("cannot start the engine thread: {e}")))?;
        Ok(Generator { lm, text, options, requests, counters })
    }

    /// The engine's counters so far.
    pub fn stats(&self) -> EngineStats {
        let c = &self.counters;
        EngineStats {
            passes: c.passes.load(Ordering::Relaxed),
            sequence_rows: c.sequence_rows.load(Ordering::Relaxed),
            peak_batch: c.peak_batch.load(Ordering::Relaxed),
            tokens: c.tokens.load(Ordering::Relaxed),
        }
    }

    /// The context length in tokens: prompt plus output.
    pub fn context_length(&self) -> usize {
        self.lm.context_length()
    }

    /// The vocabulary size (the length of a logits vector).
    pub fn vocab_size(&self) -> usize {
        self.lm.vocab_size()
    }

    /// The end-of-sequence token ids generation stops on.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.text.eos_ids
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.text.tokenizer
    }

    /// Sequences the engine runs at once.
    pub fn capacity(&self) -> usize {
        self.options.max_sequences
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Checks a prompt and encodes it as `generate` does. Errors name `input.prompt`.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>, ModelError> {
        const FIELD: &str = "input.prompt";
        check_text(prompt, FIELD)?;
        let encoding = self
            .text
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| ModelError::invalid(FIELD, format!("cannot tokenize: {e}")))?;
        let ids = encoding.get_ids().to_vec();
        self.check_prompt_ids(&ids, FIELD)?;
        Ok(ids)
    }

    /// A prompt's ids: at least one, room left for an output, each in the vocabulary.
    fn check_prompt_ids(&self, ids: &[u32], field: &str) -> Result<(), ModelError> {
        if ids.is_empty() {
            return Err(ModelError::invalid(field, "encodes to no tokens"));
        }
        let ctx = self.context_length();
        if ids.len() >= ctx {
            return Err(ModelError::invalid(
                field,
                format!(
                    "the prompt is {} tokens; the model's context is {ctx} tokens, prompt and output together, \
                     so the prompt must be at most {} tokens",
                    ids.len(),
                    ctx - 1
                ),
            ));
        }
        self.check_ids(ids, field)
    }

    fn check_ids(&self, ids: &[u32], field: &str) -> Result<(), ModelError> {
        if let Some(id) = ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            return Err(ModelError::invalid(
                field,
                format!("token id {id} is outside the model's vocabulary of {}", self.vocab_size()),
            ));
        }
        Ok(())
    }

    /// Generates a continuation of `prompt` (see the module docs): queues it for the engine
    /// and waits for its end. `progress` gets its tokens and is asked between passes whether
    /// to stop.
    pub fn generate(
        &self,
        prompt: &str,
        params: &TextGenerationParams,
        progress: Arc<dyn Progress>,
    ) -> Result<RunOutcome, ModelError> {
        params.check().map_err(ModelError::from)?;
        let prompt_ids = self.encode_prompt(prompt)?;
        self.generate_ids(prompt_ids, params, progress)
    }

    /// [`Generator::generate`] for chat messages: rendered with the model's chat template
    /// and tokenized without adding special tokens (the template writes them), as
    /// transformers' `apply_chat_template` does. Errors name `input.messages`.
    pub fn generate_chat(
        &self,
        messages: &[ChatMessage],
        params: &TextGenerationParams,
        progress: Arc<dyn Progress>,
    ) -> Result<RunOutcome, ModelError> {
        params.check().map_err(ModelError::from)?;
        let prompt_ids = self.encode_chat(messages)?;
        self.generate_ids(prompt_ids, params, progress)
    }

    /// The prompt ids of a chat (see [`Generator::generate_chat`]).
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ModelError> {
        const FIELD: &str = "input.messages";
        let chat = self
            .text
            .chat
            .as_ref()
            .ok_or_else(|| ModelError::invalid(FIELD, "the model has no chat template; send a prompt instead"))?;
        let text = chat.render(messages).map_err(|e| ModelError::invalid(FIELD, e.to_string()))?;
        let encoding = self
            .text
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| ModelError::invalid(FIELD, format!("cannot tokenize the rendered chat: {e}")))?;
        let ids = encoding.get_ids().to_vec();
        self.check_prompt_ids(&ids, FIELD)?;
        Ok(ids)
    }

    /// [`Generator::generate`] from prompt ids already encoded (a rendered chat, a test's
    /// reference ids). Errors name `input.prompt` for the prompt's length and ids.
    pub fn generate_ids(
        &self,
        prompt_ids: Vec<u32>,
        params: &TextGenerationParams,
        progress: Arc<dyn Progress>,
    ) -> Result<RunOutcome, ModelError> {
        let start = Instant::now();
        params.check().map_err(ModelError::from)?;
        self.check_prompt_ids(&prompt_ids, "input.prompt")?;
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
        let (reply, outcome) = mpsc::channel();
        let request = Request { prompt_ids, max_new, params: params.clone(), seed, progress, start, reply };
        self.requests.send(request).map_err(|_| ModelError::Runtime("the engine has stopped".into()))?;
        outcome.recv().map_err(|_| ModelError::Runtime("the engine stopped during the job".into()))?
    }

    /// The logits for the token after `ids`, in one forward pass from position 0 on a cache
    /// of its own, on the calling thread (not the engine's). For checking the engine.
    pub fn next_token_logits(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        if ids.is_empty() || ids.len() > self.context_length() {
            return Err(ModelError::invalid(
                "ids",
                format!("need 1 to {} token ids, got {}", self.context_length(), ids.len()),
            ));
        }
        self.check_ids(ids, "ids")?;
        let mut cache = self.lm.new_cache();
        cache.reserve(1, ids.len())?;
        let mut out = self.lm.step(&mut cache, &[StepSeq { slot: 0, pos: 0, ids, logits: true }])?;
        out.pop().flatten().ok_or_else(|| ModelError::Runtime("no logits".into()))
    }

    /// Greedy decoding (raw argmax, no penalty), the prompt in one pass and then one token
    /// per pass, on a cache of its own on the calling thread: the `steps` chosen ids and the
    /// logits each was chosen from. For tests.
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
        let mut cache = self.lm.new_cache();
        cache.reserve(1, prompt_ids.len() + steps)?;
        let (mut ids, mut all) = (Vec::with_capacity(steps), Vec::with_capacity(steps));
        let mut input = prompt_ids.to_vec();
        let mut pos = 0;
        for _ in 0..steps {
            let logits = self
                .lm
                .step(&mut cache, &[StepSeq { slot: 0, pos, ids: &input, logits: true }])?
                .pop()
                .flatten()
                .ok_or_else(|| ModelError::Runtime("no logits".into()))?;
            pos += input.len();
            let id = argmax(&logits);
            ids.push(id);
            all.push(logits);
            input = vec![id];
        }
        Ok((ids, all))
    }
}

/// A job handed to the engine.
struct Request {
    prompt_ids: Vec<u32>,
    max_new: usize,
    params: TextGenerationParams,
    seed: Option<u64>,
    progress: Arc<dyn Progress>,
    start: Instant,
    reply: mpsc::Sender<Result<RunOutcome, ModelError>>,
}

impl Request {
    /// Positions the sequence needs in the cache: its prompt and every token it may make.
    fn length(&self) -> usize {
        self.prompt_ids.len() + self.max_new
    }
}

/// A running sequence.
struct Seq {
    request: Request,
    slot: usize,
    /// Positions in the cache.
    pos: usize,
    /// Prompt ids not fed yet.
    prompt_fed: usize,
    /// The token to feed next (the last generated), once the prompt is in.
    next: Option<u32>,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stream: TextStream,
    /// The output text so far (what the decoder produced).
    text: String,
    generated: Vec<u32>,
    /// Each generated token's log-probability.
    logprobs: Vec<f32>,
    /// Prompt and output, for the repetition penalty.
    context: Vec<u32>,
    first_token: Option<Duration>,
}

impl Seq {
    fn output(&self, text: &str, finish_reason: &str) -> Value {
        let elapsed = self.request.start.elapsed().as_secs_f64();
        let tokens_per_s = if elapsed > 0.0 { self.generated.len() as f64 / elapsed } else { 0.0 };
        let mut out = json!({
            "text": text,
            "token_ids": self.generated,
            "details": {
                "finish_reason": finish_reason,
                "generated_tokens": self.generated.len(),
                "prompt_tokens": self.request.prompt_ids.len(),
                "time_to_first_token_ms": self.first_token.map(|d| d.as_secs_f64() * 1000.0),
                "tokens_per_s": tokens_per_s,
                "seed": self.request.seed,
            }
        });
        if self.request.params.logprobs == Some(true) {
            out["logprobs"] = json!(self.logprobs);
        }
        out
    }

    fn in_prompt(&self) -> bool {
        self.prompt_fed < self.request.prompt_ids.len()
    }
}

/// The engine thread's state (see the module docs).
struct Engine {
    lm: Arc<dyn CausalLm>,
    text: Arc<TextSpec>,
    options: EngineOptions,
    inbox: mpsc::Receiver<Request>,
    cache: KvCache,
    waiting: VecDeque<Request>,
    running: Vec<Seq>,
    counters: Arc<Counters>,
}

/// How a sequence ended.
enum End {
    Done(&'static str, Option<usize>),
    Stopped(StopReason),
    Failed(ModelError),
}

impl Engine {
    fn new(
        lm: Arc<dyn CausalLm>,
        text: Arc<TextSpec>,
        options: EngineOptions,
        inbox: mpsc::Receiver<Request>,
        counters: Arc<Counters>,
    ) -> Self {
        let cache = lm.new_cache();
        Engine { lm, text, options, inbox, cache, waiting: VecDeque::new(), running: Vec::new(), counters }
    }

    fn run(mut self) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match self.inbox.recv() {
                    Ok(r) => self.waiting.push_back(r),
                    Err(_) => return,
                }
            }
            while let Ok(r) = self.inbox.try_recv() {
                self.waiting.push_back(r);
            }
            self.honour_stops();
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    /// Ends what was asked to stop: waiting requests (nothing generated) and running
    /// sequences (their output so far).
    fn honour_stops(&mut self) {
        self.waiting.retain(|r| match r.progress.stop_requested() {
            Some(reason) => {
                let mut partial = json!({
                    "text": "", "token_ids": [],
                    "details": {"finish_reason": stop_reason_name(reason), "generated_tokens": 0,
                                "prompt_tokens": r.prompt_ids.len(), "time_to_first_token_ms": null,
                                "tokens_per_s": 0.0, "seed": r.seed}
                });
                if r.params.logprobs == Some(true) {
                    partial["logprobs"] = json!([]);
                }
                let _ = r.reply.send(Ok(RunOutcome::Stopped { reason, partial }));
                false
            }
            None => true,
        });
        let stopped: Vec<(usize, StopReason)> = self
            .running
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.request.progress.stop_requested().map(|r| (i, r)))
            .collect();
        self.end_all(stopped.into_iter().map(|(i, r)| (i, End::Stopped(r))).collect());
    }

    /// Moves waiting requests into free slots while the cache budget allows.
    fn admit(&mut self) {
        while self.running.len() < self.options.max_sequences.max(1) {
            let Some(front) = self.waiting.front() else { return };
            let length = self.running.iter().map(|s| s.request.length()).chain([front.length()]).max().unwrap_or(1);
            let slots = self.running.len() + 1;
            if !self.running.is_empty() && self.cache.bytes_for(slots, length) > self.options.kv_cache_bytes {
                return;
            }
            let request = self.waiting.pop_front().expect("front exists");
            if let Err(e) = self.cache.reserve(slots, length) {
                let _ = request.reply.send(Err(e));
                continue;
            }
            let sampler = Sampler::new(&request.params, request.seed);
            let stream = TextStream::new(request.params.stop().to_vec());
            let context = request.prompt_ids.clone();
            self.running.push(Seq {
                slot: self.running.len(),
                pos: 0,
                prompt_fed: 0,
                next: None,
                sampler,
                decoder: IncrementalDecoder::default(),
                stream,
                text: String::new(),
                generated: Vec::with_capacity(request.max_new),
                logprobs: Vec::with_capacity(request.max_new),
                context,
                first_token: None,
                request,
            });
        }
    }

    /// One forward pass over the running sequences, then sampling and ends.
    fn step(&mut self) {
        let mut budget = self.options.prefill_chunk.max(1);
        // (index in running, ids, wants logits)
        let mut parts: Vec<(usize, Vec<u32>, bool)> = Vec::with_capacity(self.running.len());
        for (i, s) in self.running.iter().enumerate() {
            if let Some(id) = s.next {
                parts.push((i, vec![id], true));
            } else if s.in_prompt() && budget > 0 {
                let rest = &s.request.prompt_ids[s.prompt_fed..];
                let take = rest.len().min(budget);
                budget -= take;
                parts.push((i, rest[..take].to_vec(), take == rest.len()));
            }
        }
        let seqs: Vec<StepSeq> = parts
            .iter()
            .map(|(i, ids, logits)| StepSeq {
                slot: self.running[*i].slot,
                pos: self.running[*i].pos,
                ids,
                logits: *logits,
            })
            .collect();
        let rows = seqs.len() as u64;
        self.counters.passes.fetch_add(1, Ordering::Relaxed);
        self.counters.sequence_rows.fetch_add(rows, Ordering::Relaxed);
        self.counters.peak_batch.fetch_max(rows, Ordering::Relaxed);
        let result = catch_unwind(AssertUnwindSafe(|| self.lm.step(&mut self.cache, &seqs)))
            .unwrap_or_else(|_| Err(ModelError::Runtime("the model panicked in a forward pass".into())));
        drop(seqs);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, sequences = parts.len(), "a batched forward pass failed");
                let failed = parts.iter().map(|(i, ..)| (*i, End::Failed(ModelError::Runtime(e.to_string()))));
                self.end_all(failed.collect());
                return;
            }
        };
        let mut ends = Vec::new();
        for ((i, ids, _), logits) in parts.iter().zip(logits) {
            let s = &mut self.running[*i];
            s.pos += ids.len();
            if s.next.take().is_none() {
                s.prompt_fed += ids.len();
            }
            if let Some(logits) = logits
                && let Some(end) = self.advance(*i, &logits)
            {
                ends.push((*i, end));
            }
        }
        self.end_all(ends);
    }

    /// Samples sequence `i`'s next token from `logits` and reports it; how it ended, if it did.
    fn advance(&mut self, i: usize, logits: &[f32]) -> Option<End> {
        if logits.iter().any(|x| x.is_nan()) {
            return Some(End::Failed(ModelError::Runtime("the model produced NaN logits".into())));
        }
        let tokenizer = &self.text.tokenizer;
        let is_eos_id = |id: u32| self.text.eos_ids.contains(&id);
        let s = &mut self.running[i];
        let id = match s.sampler.choose(logits, &s.context) {
            Ok(id) => id,
            Err(e) => return Some(End::Failed(e)),
        };
        let logprob = log_softmax_at(logits, id);
        s.first_token.get_or_insert_with(|| s.request.start.elapsed());
        self.counters.tokens.fetch_add(1, Ordering::Relaxed);
        s.generated.push(id);
        s.logprobs.push(logprob);
        s.context.push(id);
        let is_eos = is_eos_id(id);
        let at_length = s.generated.len() >= s.request.max_new;
        let last = is_eos || at_length;
        match s.decoder.next(tokenizer, &s.generated, last) {
            Ok(delta) => s.text.push_str(&delta),
            Err(e) => return Some(End::Failed(e)),
        }
        let step = s.stream.advance(&s.text, last);
        let finish = match step.stop_at {
            Some(_) => Some("stop_sequence"),
            None if is_eos => Some("eos_token"),
            None if at_length => Some("length"),
            None => None,
        };
        s.request.progress.token(TokenOut {
            index: (s.generated.len() - 1) as u32,
            id,
            text: step.delta,
            logprob: Some(logprob),
        });
        match finish {
            Some(reason) => Some(End::Done(reason, step.stop_at)),
            None => {
                s.next = Some(id);
                None
            }
        }
    }

    /// Ends the sequences at the given indices of `running`, replies to their jobs, and
    /// keeps the others in slots `0..n`.
    fn end_all(&mut self, mut ends: Vec<(usize, End)>) {
        if ends.is_empty() {
            return;
        }
        // Highest index first, so removing one does not move another still to remove.
        ends.sort_by_key(|e| std::cmp::Reverse(e.0));
        ends.dedup_by_key(|e| e.0);
        for (i, end) in ends {
            let mut seq = self.running.swap_remove(i);
            if i < self.running.len() {
                // The former last sequence now sits at index i: give it the freed slot.
                let moved = &mut self.running[i];
                if let Err(e) = self.cache.move_slot(moved.slot, seq.slot, moved.pos) {
                    tracing::error!(error = %e, "could not compact the KV cache");
                }
                moved.slot = seq.slot;
            }
            let outcome = self.outcome(&mut seq, end);
            let _ = seq.request.reply.send(outcome);
        }
    }

    fn outcome(&self, seq: &mut Seq, end: End) -> Result<RunOutcome, ModelError> {
        match end {
            End::Done(reason, stop_at) => {
                let text = match stop_at {
                    Some(at) => seq.text.get(..at).unwrap_or(&seq.text).to_string(),
                    None => seq.text.clone(),
                };
                Ok(RunOutcome::Done(seq.output(&text, reason)))
            }
            End::Stopped(reason) => {
                // Everything decoded so far, held-back text included.
                let rest = seq.decoder.flush(&self.text.tokenizer, &seq.generated).unwrap_or_default();
                let text = format!("{}{rest}", seq.text);
                Ok(RunOutcome::Stopped { reason, partial: seq.output(&text, stop_reason_name(reason)) })
            }
            End::Failed(e) => Err(e),
        }
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
    Sample { penalty: f32, processor: Box<LogitsProcessor> },
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
                Sampler::Sample { penalty, processor: Box::new(LogitsProcessor::from_sampling(seed, sampling)) }
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
pub(crate) fn argmax(logits: &[f32]) -> u32 {
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

/// The text each new token adds, from decoding a short window of the latest ids instead of
/// the whole output: `prefix..read` is what was decoded last time, `prefix..` now, and the
/// difference is the new text (held back while it ends in an incomplete character).
#[derive(Debug, Default)]
struct IncrementalDecoder {
    prefix: usize,
    read: usize,
}

impl IncrementalDecoder {
    /// The text `ids` (the output so far, its newest id last) adds; `last`: no id follows,
    /// so an incomplete character comes out as it is.
    fn next(&mut self, tokenizer: &Tokenizer, ids: &[u32], last: bool) -> Result<String, ModelError> {
        let decode = |ids: &[u32]| {
            tokenizer.decode(ids, true).map_err(|e| ModelError::Runtime(format!("cannot decode the output: {e}")))
        };
        let before = decode(&ids[self.prefix..self.read])?;
        let now = decode(&ids[self.prefix..])?;
        let complete = last || !now.ends_with('\u{FFFD}');
        if now.len() > before.len() && complete && now.is_char_boundary(before.len()) && now.starts_with(&before) {
            self.prefix = self.read;
            self.read = ids.len();
            return Ok(now[before.len()..].to_string());
        }
        if last && self.read < ids.len() {
            // The window re-renders what came before (a byte-fallback run that is invalid as
            // a whole): the unread ids alone, as they decode.
            let rest = decode(&ids[self.read..])?;
            self.prefix = ids.len();
            self.read = ids.len();
            return Ok(rest);
        }
        Ok(String::new())
    }

    /// What is held back (an incomplete character at the end), as it is.
    fn flush(&mut self, tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, ModelError> {
        if self.read >= ids.len() {
            return Ok(String::new());
        }
        self.next(tokenizer, ids, true)
    }
}

/// What one generated token adds to the streamed text.
#[derive(Debug, PartialEq)]
struct StreamStep {
    /// Text to report with the token.
    delta: String,
    /// Byte offset in the text where a stop sequence begins, if one appeared: the output
    /// text ends there.
    stop_at: Option<usize>,
}

/// Turns the output text so far (after each token) into the increments to stream, holding
/// back possible starts of stop sequences.
struct TextStream {
    stops: Vec<String>,
    /// Length of the longest stop sequence, in bytes.
    max_stop: usize,
    /// Bytes of the text streamed so far.
    emitted: usize,
}

impl TextStream {
    fn new(stops: Vec<String>) -> Self {
        let max_stop = stops.iter().map(String::len).max().unwrap_or(0);
        TextStream { stops, max_stop, emitted: 0 }
    }

    /// `full`: the output text after the latest token (what came before, plus more);
    /// `last`: no token will follow.
    fn advance(&mut self, full: &str, last: bool) -> StreamStep {
        // A stop sequence can only begin in text not streamed yet or, spanning tokens, in the
        // last stop sequence's length of what was.
        let mut from = self.emitted.saturating_sub(self.max_stop).min(full.len());
        while !full.is_char_boundary(from) {
            from -= 1;
        }
        let stop_at = self.stops.iter().filter_map(|s| full[from..].find(s.as_str()).map(|at| from + at)).min();
        let limit = match stop_at {
            Some(at) => at,
            None if last => full.len(),
            None => self.safe_len(full),
        };
        let delta = match full.get(self.emitted..limit.max(self.emitted)) {
            Some(text) => text.to_string(),
            None => String::new(),
        };
        self.emitted += delta.len();
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
        let mut stream = TextStream::new(stops);
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

    fn byte_fallback_tokenizer() -> Tokenizer {
        serde_json::from_value(json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": {"<unk>": 0, "<0xC3>": 1, "<0xA9>": 2, "a": 3, "<0xE6>": 4, "<0x97>": 5, "<0xA5>": 6},
                      "merges": []}
        }))
        .unwrap()
    }

    /// The incremental decoder on a byte-fallback tokenizer (whose decoder gives U+FFFD for a
    /// partial character) holds the character back until it is complete, and its deltas add
    /// up to the whole output decoded at once.
    #[test]
    fn incremental_decoding_with_a_byte_fallback_tokenizer() {
        let tokenizer = byte_fallback_tokenizer();
        let ids = [3u32, 1, 2, 4, 5, 6, 3];
        let mut decoder = IncrementalDecoder::default();
        let mut stream = TextStream::new(vec![]);
        let (mut text, mut deltas) = (String::new(), Vec::new());
        for n in 1..=ids.len() {
            text.push_str(&decoder.next(&tokenizer, &ids[..n], n == ids.len()).unwrap());
            deltas.push(stream.advance(&text, n == ids.len()).delta);
        }
        assert_eq!(deltas, ["a", "", "é", "", "", "日", "a"]);
        assert_eq!(text, tokenizer.decode(&ids, true).unwrap());
        // Stopped inside a character: the flush gives what is held back.
        let mut decoder = IncrementalDecoder::default();
        let mut text = String::new();
        for n in 1..=4 {
            text.push_str(&decoder.next(&tokenizer, &ids[..n], false).unwrap());
        }
        assert_eq!(text, "aé");
        // The flush gives the incomplete character as the decoder renders it; the output
        // keeps the complete "é" (decoding all four ids at once would turn the whole invalid
        // byte run into three U+FFFD).
        text.push_str(&decoder.flush(&tokenizer, &ids[..4]).unwrap());
        assert_eq!(text, "aé\u{FFFD}");
        assert_eq!(decoder.flush(&tokenizer, &ids[..4]).unwrap(), "");
    }
}

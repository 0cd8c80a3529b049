//! Models the executor runs, on candle. A model is loaded once per executor and then serves
//! job after job: [`LoadedModel::run`] takes a job's typed [`JobInput`] (the API's own
//! type, validated when the job was submitted; a model adds only its own limits, such as
//! its context length) and reports progress through a [`Progress`] as it goes.
//!
//! Model code is synchronous (candle is): the worker runs it on a blocking thread, and the
//! [`Progress`] it passes forwards tokens to the job's progress stream and answers
//! [`Progress::stop_requested`] from flags the worker sets (cancel, timeout, shutdown).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device};
use ferry_core::catalog::{ModelSpec, default_architecture};
use ferry_core::input::{JobInput, OutOfBounds, TextGenerationInput};
use serde_json::Value;

pub mod batch;
pub mod bert;
pub mod clip;
pub mod decoder;
pub mod embed;
pub mod encoder;
pub mod gemma2;
pub mod gemma3;
pub mod generate;
pub mod gguf;
pub mod image;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod weights;

/// The text-generation families, by architecture (the catalog's list of text-generation
/// architectures is this one: a test keeps them equal).
pub const TEXT_FAMILIES: &[decoder::Family] =
    &[llama::FAMILY, mistral::FAMILY, qwen2::FAMILY, qwen3::FAMILY, phi3::FAMILY, gemma2::FAMILY, gemma3::FAMILY];

/// Sets `RAYON_NUM_THREADS` to the CPUs this process may use, when it is unset. candle
/// 0.11's CPU matmul asks for its thread count on every call and, without the variable,
/// counts physical cores by reading `/proc/cpuinfo` each time: about 30,000 reads in a 20 s
/// decode benchmark here, 8% of its time.
///
/// # Safety
///
/// It changes the process environment: call it first in `main`, before any other thread
/// has started (no async runtime yet), as `std::env::set_var` requires.
pub unsafe fn pin_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        // SAFETY: the caller guarantees no other thread runs yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

/// A load failure naming the file.
pub(crate) fn load_err(file: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::Load(format!("{}: {message}", file.display()))
}

/// The process's resident memory in bytes (Linux's `VmRSS`; `None` elsewhere): what a model
/// load reports.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Why a model could not run a job.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The job's input or params cannot be served by this model (prompt longer than the
    /// context, `max_new_tokens` over the model's limit, empty input, ...). Not retryable.
    #[error("{field}: {message}")]
    InvalidInput { field: String, message: String },
    /// The model's files are missing or corrupt. Not retryable on this executor.
    #[error("cannot load the model: {0}")]
    Load(String),
    /// The computation failed (out of memory, a device error). Retryable elsewhere.
    #[error("inference failed: {0}")]
    Runtime(String),
    /// A handler's program failed: `message` is what it said (its stderr's last lines, or
    /// its worker's `failed` message); `retryable` when it asked for another attempt (exit
    /// 75, `retryable: true`) or its worker died.
    #[error("the handler failed: {message}")]
    Handler { message: String, retryable: bool },
}

impl ModelError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ModelError::InvalidInput { field: field.into(), message: message.into() }
    }

    /// Whether another attempt (maybe on another executor) could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ModelError::Runtime(_) | ModelError::Handler { retryable: true, .. })
    }

    /// The message recorded on the job, which its tenant reads: the input problem as it
    /// is; for a model that cannot load, only that (the cause names buckets, paths and SDK
    /// errors: it is in the executor's log); for a runtime failure the cause redacted
    /// ([`ferry_core::error::redact`]).
    pub fn public_message(&self) -> String {
        match self {
            ModelError::InvalidInput { .. } => self.to_string(),
            ModelError::Load(_) => "the model could not be loaded on the executor; its log has the cause".into(),
            ModelError::Runtime(cause) => format!("inference failed: {}", ferry_core::error::redact(cause)),
            // The handler's own words: the catalog's program, written for its tenants.
            ModelError::Handler { message, .. } => message.clone(),
        }
    }

    /// The `error.type` recorded on the job.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::InvalidInput { .. } => "invalid_input",
            ModelError::Load(_) => "model_load_failed",
            ModelError::Runtime(_) => "inference_failed",
            ModelError::Handler { .. } => "handler_failed",
        }
    }
}

impl From<OutOfBounds> for ModelError {
    fn from(e: OutOfBounds) -> Self {
        ModelError::InvalidInput { field: e.field, message: e.message }
    }
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Runtime(e.to_string())
    }
}

/// Why a running job must stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    TimedOut,
    /// The executor is shutting down (SIGTERM) and releases the job.
    Shutdown,
}

/// One generated token, as reported to progress.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    /// 0-based position in the generated output.
    pub index: u32,
    pub id: u32,
    /// The text this token adds to the output (decoded incrementally, so multi-byte
    /// characters split across tokens come out whole, on the token that completes them).
    pub text: String,
    /// Natural-log probability of the token under the model's distribution (before
    /// temperature and truncation).
    pub logprob: Option<f32>,
}

/// Where a running model reports to, and asks whether to stop. Called from the model's
/// (blocking) thread; implementations must not block for long.
pub trait Progress: Send + Sync {
    fn token(&self, token: TokenOut);
    fn percentage(&self, percent: f32, message: Option<String>);
    /// A log line for the job's progress (`level`: debug, info, warn, error); handlers
    /// report them, models need not.
    fn log(&self, _level: &str, _message: String) {}
    /// Checked between steps (every token, every batch): `Some` stops the work.
    fn stop_requested(&self) -> Option<StopReason>;
}

/// A [`Progress`] that reports nowhere and never stops (tests, benchmarks).
pub struct NoProgress;

impl Progress for NoProgress {
    fn token(&self, _: TokenOut) {}
    fn percentage(&self, _: f32, _: Option<String>) {}
    fn stop_requested(&self) -> Option<StopReason> {
        None
    }
}

/// What a run produced.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// The job's output.
    Done(Value),
    /// Stopped early; `partial` is the output so far (same shape as a full one).
    Stopped { reason: StopReason, partial: Value },
}

/// Where and how a model runs.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    pub dtype: DType,
}

impl Placement {
    /// `cpu`, `cuda` or `cuda:N`; f32 on CPU, bf16 on CUDA unless `dtype` says otherwise.
    pub fn parse(device: &str, dtype: Option<&str>) -> Result<Placement, ModelError> {
        let device = match device {
            "cpu" => Device::Cpu,
            d if d == "cuda" || d.starts_with("cuda:") => {
                let ordinal = match d.strip_prefix("cuda:") {
                    Some(n) => {
                        n.parse::<usize>().map_err(|_| ModelError::invalid("device", format!("bad device {d}")))?
                    }
                    None => 0,
                };
                Device::new_cuda(ordinal).map_err(|e| ModelError::Load(format!("device {d}: {e}")))?
            }
            d => return Err(ModelError::invalid("device", format!("unknown device {d}: use cpu, cuda or cuda:N"))),
        };
        let dtype = match dtype {
            None if device.is_cuda() => DType::BF16,
            None => DType::F32,
            Some("f32") => DType::F32,
            Some("bf16") => DType::BF16,
            Some("f16") => DType::F16,
            Some(other) => {
                return Err(ModelError::invalid("dtype", format!("unknown dtype {other}: use f32, bf16 or f16")));
            }
        };
        Ok(Placement { device, dtype })
    }
}

/// The job a run is for, as a handler's process is told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub job_id: String,
    pub attempt: u32,
    /// When the job times out, RFC 3339.
    pub deadline: String,
}

/// How long a run may take to answer a stop request (cancel, timeout) with its partial
/// output before the job is ended without it: a model checks between steps.
pub const STOP_WAIT: Duration = Duration::from_secs(1);

/// Something that runs jobs: what [`LoadedModel::Custom`] holds (handlers, scripted models
/// in tests).
pub trait Runner: Send + Sync {
    fn run(&self, input: &JobInput, progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError>;

    /// [`Runner::run`] for `job`: runners that must know the job (handlers) override it.
    fn run_job(&self, _job: &JobRun, input: &JobInput, progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError> {
        self.run(input, progress)
    }

    /// How long it may take to answer a stop request ([`STOP_WAIT`] unless it says more: a
    /// handler is given its grace period to end).
    fn stop_wait(&self) -> Duration {
        STOP_WAIT
    }

    /// Stops what it keeps running between jobs (a handler's idle workers), as the executor
    /// stops.
    fn close(&self) {}
}

/// A model ready to serve jobs.
pub enum LoadedModel {
    /// A text-generation model behind its batching engine.
    Text(generate::Generator),
    /// An embeddings model behind its engine, which packs concurrent jobs' texts together.
    Bert(embed::Embedder),
    /// A CLIP model behind the same engine, which packs concurrent jobs' images together.
    Clip(embed::Embedder<clip::ClipEmbedder>),
    Custom(std::sync::Arc<dyn Runner>),
}

impl LoadedModel {
    /// Loads the model a catalog entry names from its local directory, by its architecture
    /// (the catalog's, or its task's default), after checking the directory's own
    /// `config.json` names the same one: a model is never served by another family's code.
    pub fn load(
        spec: &ModelSpec,
        dir: &Path,
        placement: &Placement,
        engine: generate::EngineOptions,
    ) -> Result<LoadedModel, ModelError> {
        if let Some(file) = ferry_core::gguf::gguf_file(dir) {
            return load_gguf(spec, &file, placement, engine);
        }
        let arch =
            spec.architecture.as_deref().or(default_architecture(spec.task)).ok_or_else(|| {
                ModelError::Load(format!("{}: a {} entry is not a model", spec.id, spec.task.as_str()))
            })?;
        check_architecture(dir, arch)?;
        if let Some(family) = TEXT_FAMILIES.iter().find(|f| f.architecture == arch) {
            return Ok(LoadedModel::Text(decoder::load(dir, placement, engine, family)?));
        }
        match arch {
            "BertModel" | "BertForMaskedLM" => {
                let model = bert::BertEmbedder::load(dir, placement)?;
                Ok(LoadedModel::Bert(embed::Embedder::start(model, embed::EmbedOptions::default())?))
            }
            "CLIPModel" => {
                let model = clip::ClipEmbedder::load(dir, placement)?;
                Ok(LoadedModel::Clip(embed::Embedder::start(model, embed::EmbedOptions::default())?))
            }
            other => Err(ModelError::Load(format!("{}: architecture {other} is not implemented", spec.id))),
        }
    }

    /// Runs one job on its typed input (blocking: a text-generation job waits for the
    /// engine's thread to serve it beside the others).
    pub fn run(&self, input: &JobInput, progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError> {
        match (self, input) {
            (LoadedModel::Custom(r), input) => r.run(input, progress),
            (LoadedModel::Text(m), JobInput::TextGeneration { input, params }) => match input {
                TextGenerationInput::Prompt { prompt } => m.generate(prompt, params, progress),
                TextGenerationInput::Chat { messages } => m.generate_chat(messages, params, progress),
            },
            (LoadedModel::Bert(m), JobInput::Embeddings { input }) => m.embed(&input.texts, progress),
            (LoadedModel::Clip(m), JobInput::ImageEmbeddings { input }) => {
                let items = m.model().prepare(input)?;
                m.embed_items(items, progress)
            }
            (model, input) => Err(ModelError::invalid(
                "model",
                format!("a {} job cannot run on {}", input.task().as_str(), model.family()),
            )),
        }
    }

    /// [`LoadedModel::run`] for `job` (a handler is told which job it runs).
    pub fn run_job(
        &self,
        job: &JobRun,
        input: &JobInput,
        progress: Arc<dyn Progress>,
    ) -> Result<RunOutcome, ModelError> {
        match self {
            LoadedModel::Custom(r) => r.run_job(job, input, progress),
            _ => self.run(input, progress),
        }
    }

    /// Stops what it keeps running between jobs ([`Runner::close`]).
    pub fn close(&self) {
        if let LoadedModel::Custom(r) = self {
            r.close();
        }
    }

    /// How long a run may take to answer a stop request ([`Runner::stop_wait`]).
    pub fn stop_wait(&self) -> Duration {
        match self {
            LoadedModel::Custom(r) => r.stop_wait(),
            _ => STOP_WAIT,
        }
    }

    fn family(&self) -> &'static str {
        match self {
            LoadedModel::Text(_) => "a text-generation model",
            LoadedModel::Bert(_) => "an embeddings model",
            LoadedModel::Clip(_) => "an image-embeddings model",
            LoadedModel::Custom(_) => "a custom runner",
        }
    }
}

/// A GGUF model: as the catalog's architecture when it names one, else as the file's own.
fn load_gguf(
    spec: &ModelSpec,
    file: &Path,
    placement: &Placement,
    engine: generate::EngineOptions,
) -> Result<LoadedModel, ModelError> {
    let arch = match &spec.architecture {
        Some(a) => a.as_str(),
        None => {
            let meta = ferry_core::gguf::GgufMeta::read(file).map_err(|e| ModelError::Load(e.to_string()))?;
            ferry_core::gguf::hf_architecture(file, &meta).map_err(|e| ModelError::Load(e.to_string()))?
        }
    };
    let family = TEXT_FAMILIES
        .iter()
        .find(|f| f.architecture == arch && ferry_core::gguf::serves(arch))
        .ok_or_else(|| ModelError::Load(format!("{}: architecture {arch} is not served from GGUF files", spec.id)))?;
    Ok(LoadedModel::Text(decoder::load_gguf(file, placement, engine, family)?))
}

/// The architectures `config.json` names, when it names any: `arch` must be among them. A
/// sentence-transformers directory keeps its model in a subdirectory; that is the BERT
/// loader's to find, so a directory without a top-level `config.json` passes here.
fn check_architecture(dir: &Path, arch: &str) -> Result<(), ModelError> {
    let path = dir.join("config.json");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let config: Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Load(format!("{}: {e}", path.display())))?;
    let named: Vec<&str> =
        config["architectures"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if named.is_empty() || named.contains(&arch) {
        return Ok(());
    }
    Err(ModelError::Load(format!(
        "{}: the directory's config.json names {named:?}, but the catalog serves it as {arch}; a model is only \
         served by its own family's code",
        path.display()
    )))
}

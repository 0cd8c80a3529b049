//! The model catalog: which models the executors serve, in which pool, for which task.
//! The API validates submissions against it and lists it at `GET /v1/models`; the executor
//! loads models from it. One JSON file (`FERRY_MODELS_FILE`) or inline JSON (`FERRY_MODELS`)
//! shared by both, or models registered from Hugging Face directories by `ferry dev --model`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::job::Task;

/// One servable model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The id clients pass as `model`.
    pub id: String,
    pub task: Task,
    /// The executor pool that serves it (for example `cpu` or `gpu`).
    #[serde(default = "default_pool")]
    pub pool: String,
    /// The model family, e.g. `LlamaForCausalLM` or `BertModel`, from its `config.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// A local Hugging Face directory (config.json, *.safetensors, tokenizer.json), or a
    /// `*.gguf` file with its `tokenizer.json` beside it ([`crate::gguf`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub path: Option<PathBuf>,
    /// An S3 location to fetch the directory from, instead of `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_uri: Option<String>,
    /// `f32`, `bf16` or `f16`; the executor picks when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// `cpu` or `cuda[:N]`; the executor picks when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Upper bound for `params.max_new_tokens` (text generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<u32>,
    /// Upper bound for the number of `input.texts` (embeddings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u32>,
    /// Sequences (text generation) or jobs (embeddings) the executor's engine batches into
    /// one forward pass, overriding its `--max-batch-sequences`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_sequences: Option<u32>,
    /// The model's chat template, which `messages` inputs are rendered with at submit (to
    /// refuse what the template refuses before anything is queued). Read from the model's
    /// directory when the catalog has one ([`ModelSpec::read_chat_template`]); a catalog of
    /// S3 models may give it. Without it the executor renders from the model's own files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub chat_template: Option<crate::chat::ChatTemplate>,
    /// A handler's program and its arguments (`["python3", "/app/agent.py"]`); handlers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// How a handler runs: a process per job (the default) or long-lived workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<HandlerMode>,
    /// A JSON Schema (2020-12) a handler's input must satisfy; the API checks it at submit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<serde_json::Value>,
    /// Environment variables a handler's processes get besides Ferry's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// The timeout of a handler's jobs that name none (bounded by `FERRY_MAX_TIMEOUT_S`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// A handler's jobs one executor runs at once (in worker mode, its worker processes);
    /// default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// How a handler's program is run (docs/HANDLERS.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HandlerMode {
    /// One process per job: the input on stdin, then EOF.
    #[default]
    PerJob,
    /// One long-lived process per slot, taking requests as lines on stdin.
    Worker,
}

/// The most jobs of one handler an executor runs at once (`concurrency`).
pub const MAX_HANDLER_CONCURRENCY: u32 = 256;

/// Environment variables Ferry sets for a handler itself, which `env` may not override.
pub const HANDLER_RESERVED_ENV: &[&str] = &["FERRY_JOB_ID", "FERRY_ATTEMPT", "FERRY_DEADLINE", "FERRY_WORK_DIR"];

impl ModelSpec {
    /// An entry with nothing but its id and task set (the pool `cpu`).
    pub fn new(id: impl Into<String>, task: Task) -> ModelSpec {
        ModelSpec {
            id: id.into(),
            task,
            pool: default_pool(),
            architecture: None,
            path: None,
            s3_uri: None,
            dtype: None,
            device: None,
            max_new_tokens: None,
            max_batch: None,
            max_batch_sequences: None,
            chat_template: None,
            command: None,
            mode: None,
            input_schema: None,
            env: None,
            timeout_s: None,
            concurrency: None,
        }
    }

    /// A per-job handler running `command`.
    pub fn handler(id: impl Into<String>, command: Vec<String>) -> ModelSpec {
        ModelSpec { command: Some(command), ..ModelSpec::new(id, Task::Handler) }
    }

    /// The compiled `input_schema`, when the entry has one (the catalog refused entries
    /// whose schema does not compile).
    pub fn schema(&self) -> Result<Option<crate::schema::Schema>, crate::schema::SchemaError> {
        self.input_schema.as_ref().map(crate::schema::Schema::compile).transpose()
    }

    /// The fields only a handler has, or only a model has, that this entry sets wrongly.
    fn check_handler_fields(&self) -> Result<(), CatalogError> {
        let bad = |message: String| Err(CatalogError::Handler { model: self.id.clone(), message });
        let handler_fields = [
            ("command", self.command.is_some()),
            ("mode", self.mode.is_some()),
            ("input_schema", self.input_schema.is_some()),
            ("env", self.env.is_some()),
            ("timeout_s", self.timeout_s.is_some()),
            ("concurrency", self.concurrency.is_some()),
        ];
        let model_fields = [
            ("architecture", self.architecture.is_some()),
            ("path", self.path.is_some()),
            ("s3_uri", self.s3_uri.is_some()),
            ("dtype", self.dtype.is_some()),
            ("max_new_tokens", self.max_new_tokens.is_some()),
            ("max_batch", self.max_batch.is_some()),
            ("max_batch_sequences", self.max_batch_sequences.is_some()),
            ("chat_template", self.chat_template.is_some()),
        ];
        if self.task != Task::Handler {
            return match handler_fields.iter().find(|(_, set)| *set) {
                Some((field, _)) => {
                    bad(format!("{field} is for handlers (task \"handler\"), not {}", self.task.as_str()))
                }
                None => Ok(()),
            };
        }
        if let Some((field, _)) = model_fields.iter().find(|(_, set)| *set) {
            return bad(format!("{field} is for models; a handler runs its command"));
        }
        match self.command.as_deref() {
            None | Some([]) => return bad("a handler needs a command: [program, args...]".into()),
            Some(argv) if argv.iter().any(|a| a.is_empty() || a.contains('\0')) => {
                return bad("command: every part must be a non-empty string without NUL".into());
            }
            Some(_) => {}
        }
        for key in self.env.iter().flat_map(|e| e.keys()) {
            let plain = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !plain {
                return bad(format!("env: {key:?} is not a variable name (letters, digits and _)"));
            }
            if HANDLER_RESERVED_ENV.contains(&key.as_str()) {
                return bad(format!("env: {key} is set by Ferry for each job"));
            }
        }
        if self.env.iter().flat_map(|e| e.values()).any(|v| v.contains('\0')) {
            return bad("env: values may not contain NUL".into());
        }
        if self.timeout_s == Some(0) {
            return bad("timeout_s must be at least 1".into());
        }
        if self.concurrency.is_some_and(|n| !(1..=MAX_HANDLER_CONCURRENCY).contains(&n)) {
            return bad(format!("concurrency must be 1 to {MAX_HANDLER_CONCURRENCY}"));
        }
        if let Err(e) = self.schema() {
            return bad(e.to_string());
        }
        Ok(())
    }

    /// Reads the chat template of a text-generation model with a local directory (none
    /// when the model has none).
    pub fn read_chat_template(&mut self) -> Result<(), CatalogError> {
        if let (Task::TextGeneration, Some(path), None) = (self.task, &self.path, &self.chat_template) {
            let read = match crate::gguf::gguf_file(path) {
                Some(file) => crate::chat::ChatTemplate::from_gguf(&file),
                None => crate::chat::ChatTemplate::from_dir(path),
            };
            self.chat_template = read.map_err(|e| CatalogError::ChatTemplate(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether `messages` are known to be refused: a local model without a template.
    pub fn lacks_chat_template(&self) -> bool {
        self.chat_template.is_none() && self.path.is_some()
    }
}

/// The most sequences an engine may batch (`max_batch_sequences`, `--max-batch-sequences`).
pub const MAX_BATCH_SEQUENCES: u32 = 1024;

fn default_pool() -> String {
    "cpu".to_string()
}

/// Why a catalog could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid catalog JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid model id {0:?}: use 1 to 128 letters, digits, '.', '_', '-' or '/'")]
    BadId(String),
    #[error("model id {0:?} appears twice")]
    Duplicate(String),
    #[error("{0}: config.json names no architecture Ferry serves ({1}); supported: {list}", list = supported_list())]
    UnknownArchitecture(PathBuf, String),
    #[error("model {model:?}: architecture {architecture:?} is not served by Ferry's executor; supported: {list}", list = supported_list())]
    UnsupportedArchitecture { model: String, architecture: String },
    #[error("model {model:?}: architecture {architecture} serves the task {serves}, not {task}", serves = .serves.as_str(), task = .task.as_str())]
    WrongTask { model: String, architecture: String, serves: Task, task: Task },
    #[error("model {0:?}: max_batch_sequences must be 1 to {MAX_BATCH_SEQUENCES}")]
    BadBatch(String),
    #[error("model {model:?}: architecture {architecture} is not served from GGUF files; GGUF serves {list}", list = gguf_list())]
    GgufArchitecture { model: String, architecture: String },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("--model expects ID=DIR or ID=FILE.gguf, got {0:?}")]
    BadSpec(String),
    #[error("{0}")]
    ChatTemplate(String),
    #[error("model {model:?}: {message}")]
    Handler { model: String, message: String },
    #[error("--handler expects ID=COMMAND, got {0:?}")]
    BadHandlerSpec(String),
}

/// The file format: `{"models": [ModelSpec, ...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub models: Vec<ModelSpec>,
}

impl Catalog {
    /// Checks ids are valid and unique, and that every model's architecture is one the
    /// executor implements for its task: a model served by the wrong code would give wrong
    /// output, so it is refused here, where every process loads the catalog.
    pub fn new(models: Vec<ModelSpec>) -> Result<Self, CatalogError> {
        let mut seen = std::collections::HashSet::new();
        for m in &models {
            if !valid_model_id(&m.id) {
                return Err(CatalogError::BadId(m.id.clone()));
            }
            if !seen.insert(m.id.clone()) {
                return Err(CatalogError::Duplicate(m.id.clone()));
            }
            m.check_handler_fields()?;
            if m.max_batch_sequences.is_some_and(|n| !(1..=MAX_BATCH_SEQUENCES).contains(&n)) {
                return Err(CatalogError::BadBatch(m.id.clone()));
            }
            if let Some(arch) = &m.architecture {
                let unsupported =
                    || CatalogError::UnsupportedArchitecture { model: m.id.clone(), architecture: arch.clone() };
                let serves = task_for_architecture(arch).ok_or_else(unsupported)?;
                if serves != m.task {
                    let (model, architecture) = (m.id.clone(), arch.clone());
                    return Err(CatalogError::WrongTask { model, architecture, serves, task: m.task });
                }
                if m.path.as_deref().is_some_and(is_gguf_path) && !crate::gguf::serves(arch) {
                    let (model, architecture) = (m.id.clone(), arch.clone());
                    return Err(CatalogError::GgufArchitecture { model, architecture });
                }
            }
        }
        Ok(Catalog { models })
    }

    pub fn from_json(text: &str) -> Result<Self, CatalogError> {
        let parsed: Catalog = serde_json::from_str(text)?;
        Catalog::new(parsed.models)
    }

    pub fn from_file(path: &Path) -> Result<Self, CatalogError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| CatalogError::Io { path: path.to_owned(), source })?;
        Catalog::from_json(&text)
    }

    /// `FERRY_MODELS` (inline JSON) or `FERRY_MODELS_FILE`; the demo catalog when neither is set.
    pub fn from_env() -> Result<Self, CatalogError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Catalog::from_env`] over any variable lookup.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CatalogError> {
        if let Some(text) = get("FERRY_MODELS") {
            return Catalog::from_json(&text);
        }
        if let Some(path) = get("FERRY_MODELS_FILE") {
            return Catalog::from_file(Path::new(&path));
        }
        Ok(Catalog::demo())
    }

    /// What `ferry dev` serves with no flags: a small chat model and a sentence embedder.
    pub fn demo() -> Self {
        let spec =
            |id: &str, task, arch: &str| ModelSpec { architecture: Some(arch.into()), ..ModelSpec::new(id, task) };
        Catalog {
            models: vec![
                spec("tiny-llama", Task::TextGeneration, "LlamaForCausalLM"),
                spec("all-minilm-l6-v2", Task::Embeddings, "BertModel"),
            ],
        }
    }

    pub fn get(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == id)
    }

    /// A spec for a Hugging Face directory, the task read from its `config.json`, or for a
    /// GGUF model (text generation, its family from the file's `general.architecture`).
    pub fn spec_from_dir(id: &str, dir: &Path) -> Result<ModelSpec, CatalogError> {
        if !valid_model_id(id) {
            return Err(CatalogError::BadId(id.into()));
        }
        let (task, arch) = match crate::gguf::gguf_file(dir) {
            Some(file) => {
                let meta = crate::gguf::GgufMeta::read(&file)?;
                (Task::TextGeneration, crate::gguf::hf_architecture(&file, &meta)?.to_string())
            }
            None => Self::dir_architecture(dir)?,
        };
        let mut spec = ModelSpec { architecture: Some(arch), path: Some(dir.to_owned()), ..ModelSpec::new(id, task) };
        spec.read_chat_template()?;
        Ok(spec)
    }

    /// The task and architecture a Hugging Face directory's `config.json` names.
    fn dir_architecture(dir: &Path) -> Result<(Task, String), CatalogError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| CatalogError::Io { path: path.clone(), source })?;
        let config: serde_json::Value = serde_json::from_str(&text)?;
        let archs: Vec<String> = config["architectures"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let model_type = config["model_type"].as_str().unwrap_or("");
        let named = if archs.is_empty() { architecture_for_model_type(model_type).map(String::from) } else { None };
        archs.iter().cloned().chain(named).find_map(|a| task_for_architecture(&a).map(|t| (t, a))).ok_or_else(|| {
            CatalogError::UnknownArchitecture(
                dir.to_owned(),
                format!("architectures {archs:?}, model_type {model_type:?}"),
            )
        })
    }

    /// Parses `ID=COMMAND` as given to `ferry dev --handler`: a per-job handler, its
    /// command split as a POSIX shell splits words (quotes and backslashes; no expansion).
    pub fn handler_from_arg(arg: &str) -> Result<ModelSpec, CatalogError> {
        let bad = || CatalogError::BadHandlerSpec(arg.into());
        let (id, command) = arg.split_once('=').ok_or_else(bad)?;
        if !valid_model_id(id) {
            return Err(CatalogError::BadId(id.into()));
        }
        let argv = shlex::split(command).filter(|a| !a.is_empty()).ok_or_else(bad)?;
        let spec = ModelSpec::handler(id, argv);
        spec.check_handler_fields()?;
        Ok(spec)
    }

    /// Parses `ID=DIR` or `ID=FILE.gguf` as given to `ferry dev --model`.
    pub fn spec_from_arg(arg: &str) -> Result<ModelSpec, CatalogError> {
        let (id, dir) = arg.split_once('=').ok_or_else(|| CatalogError::BadSpec(arg.into()))?;
        Catalog::spec_from_dir(id, Path::new(dir))
    }
}

/// The architectures the executor implements (a `config.json`'s `architectures`), with the
/// task each serves. The executor's model registry covers exactly this list (a test there
/// keeps them equal); a family the executor does not implement is refused by the catalog.
pub const ARCHITECTURES: &[(&str, Task)] = &[
    ("LlamaForCausalLM", Task::TextGeneration),
    ("MistralForCausalLM", Task::TextGeneration),
    ("Qwen2ForCausalLM", Task::TextGeneration),
    ("Qwen3ForCausalLM", Task::TextGeneration),
    ("Phi3ForCausalLM", Task::TextGeneration),
    ("Gemma2ForCausalLM", Task::TextGeneration),
    ("Gemma3ForCausalLM", Task::TextGeneration),
    ("BertModel", Task::Embeddings),
    ("BertForMaskedLM", Task::Embeddings),
    ("CLIPModel", Task::ImageEmbeddings),
];

/// The architecture a catalog entry that names none is served by: the one family of its task
/// the executor implemented first (the executor checks the model's own `config.json` agrees).
pub fn default_architecture(task: Task) -> Option<&'static str> {
    match task {
        Task::TextGeneration => Some("LlamaForCausalLM"),
        Task::Embeddings => Some("BertModel"),
        Task::ImageEmbeddings => Some("CLIPModel"),
        Task::Handler => None,
    }
}

/// The task an architecture serves, if the executor implements it.
pub fn task_for_architecture(arch: &str) -> Option<Task> {
    ARCHITECTURES.iter().find(|(a, _)| *a == arch).map(|(_, t)| *t)
}

/// Whether a catalog path names a GGUF file (by its name: the catalog reads no files).
fn is_gguf_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn gguf_list() -> String {
    crate::gguf::ARCHITECTURES.iter().flat_map(|(_, f)| f.iter().copied()).collect::<Vec<_>>().join(", ")
}

fn supported_list() -> String {
    ARCHITECTURES.iter().map(|(a, t)| format!("{a} ({})", t.as_str())).collect::<Vec<_>>().join(", ")
}

/// A `config.json` with no `architectures` names its family by `model_type`.
fn architecture_for_model_type(model_type: &str) -> Option<&'static str> {
    match model_type {
        "llama" => Some("LlamaForCausalLM"),
        "mistral" => Some("MistralForCausalLM"),
        "qwen2" => Some("Qwen2ForCausalLM"),
        "qwen3" => Some("Qwen3ForCausalLM"),
        "phi3" => Some("Phi3ForCausalLM"),
        "gemma2" => Some("Gemma2ForCausalLM"),
        "gemma3_text" => Some("Gemma3ForCausalLM"),
        "clip" => Some("CLIPModel"),
        "bert" => Some("BertModel"),
        _ => None,
    }
}

/// Model ids appear in URLs and logs: keep them plain.
pub fn valid_model_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
}

//! Typed job input: what each task takes, with every bound in one place. The API parses a
//! submit's `input` and `params` into a [`JobInput`] ([`JobInput::parse`]: each problem is
//! a 400 or a 422 naming the field); the job record holds it; the executor reads the same
//! type back from the record and adds only its model's own limits (context length).
//!
//! Adding a param is one change here: a field on its params struct, a line in its `parse`,
//! and, when it has bounds, a line in its `check`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::chat::{ChatMessage, Role};
use crate::error::ApiError;

/// What a model does, which decides the shape of a job's input and params.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Input `{"prompt": string}`; params max_new_tokens, temperature, top_p, top_k, seed,
    /// repetition_penalty, stop.
    TextGeneration,
    /// Input `{"texts": [string, ...]}`; no params.
    Embeddings,
    /// Input `{"images": [data: URI or stored input URL, ...], "texts"?: [string, ...]}`
    /// ([`ImageEmbeddingsInput`]); no params.
    ImageEmbeddings,
    /// The catalog entry's own program ([`crate::catalog::HandlerSpec`]): any JSON input
    /// (checked against the entry's `input_schema` when it has one); no params.
    Handler,
}

impl Task {
    pub fn as_str(&self) -> &'static str {
        match self {
            Task::TextGeneration => "text-generation",
            Task::Embeddings => "embeddings",
            Task::ImageEmbeddings => "image-embeddings",
            Task::Handler => "handler",
        }
    }
}

impl FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text-generation" => Ok(Task::TextGeneration),
            "embeddings" => Ok(Task::Embeddings),
            "image-embeddings" => Ok(Task::ImageEmbeddings),
            "handler" => Ok(Task::Handler),
            other => Err(format!("unknown task {other:?}")),
        }
    }
}

/// What a job runs: its task's input and params, typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredInput", into = "StoredInput")]
pub enum JobInput {
    TextGeneration {
        input: TextGenerationInput,
        params: TextGenerationParams,
    },
    Embeddings {
        input: EmbeddingsInput,
    },
    ImageEmbeddings {
        input: ImageEmbeddingsInput,
    },
    /// A handler's input: any JSON, handed to the program as it was submitted.
    Handler {
        input: Value,
    },
}

/// Input of a `text-generation` job: a raw prompt (tokenized as the model's tokenizer
/// encodes text, its own special tokens added), or chat messages, rendered with the model's
/// chat template ([`crate::chat`]) and tokenized without adding special tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum TextGenerationInput {
    /// `{"prompt": "..."}`
    Prompt { prompt: String },
    /// `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`
    Chat { messages: Vec<ChatMessage> },
}

impl TextGenerationInput {
    /// The most messages one chat may hold.
    pub const MAX_MESSAGES: usize = 1024;

    pub fn prompt(prompt: impl Into<String>) -> Self {
        TextGenerationInput::Prompt { prompt: prompt.into() }
    }

    /// The raw prompt, when the input is one.
    pub fn as_prompt(&self) -> Option<&str> {
        match self {
            TextGenerationInput::Prompt { prompt } => Some(prompt),
            TextGenerationInput::Chat { .. } => None,
        }
    }
}

/// Input of an `embeddings` job: one vector comes back per text, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsInput {
    pub texts: Vec<String>,
}

/// Input of an `image-embeddings` job: one vector per image, then one per text, in order.
/// Each image is a `data:image/png|jpeg|webp;base64,` URI or the URL of an input object
/// stored with `POST /v1/inputs` ([`crate::images`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageEmbeddingsInput {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Texts for the model's text tower (a model without a tokenizer refuses them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub texts: Vec<String>,
}

/// Parameters of a `text-generation` job. All optional; `temperature: 0` means greedy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextGenerationParams {
    /// 1 to the model's `max_new_tokens` (or `FERRY_MAX_NEW_TOKENS`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<u32>,
    /// 0 (greedy) to 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// In (0, 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// 1 to 1000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// In (0, 10]; 1 means none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f64>,
    /// Up to 8 stop sequences of 1 to 128 characters (a single string is accepted and
    /// stored as a list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    /// When true, the output carries `logprobs`: each generated token's natural-log
    /// probability under the model (before temperature and truncation), aligned with
    /// `token_ids`. Token events carry it either way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
}

/// Bounds of the input that come from the deployment or the model, not from the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// The most `params.max_new_tokens` may ask for.
    pub max_new_tokens: u32,
    /// The most texts one embeddings job may hold.
    pub max_texts: u32,
}

/// A value outside its bounds: a 422 at the API, an `invalid_input` job error in the executor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct OutOfBounds {
    /// The offending field as a path (`params.temperature`, `input.texts[2]`).
    pub field: String,
    pub message: String,
}

impl OutOfBounds {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        OutOfBounds { field: field.into(), message: message.into() }
    }
}

impl From<OutOfBounds> for ApiError {
    fn from(e: OutOfBounds) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

impl TextGenerationParams {
    /// The most stop sequences a job may give.
    pub const MAX_STOP: usize = 8;
    /// The longest stop sequence, in characters.
    pub const MAX_STOP_CHARS: usize = 128;
    pub const MAX_TEMPERATURE: f64 = 2.0;
    pub const MAX_TOP_K: u32 = 1000;
    pub const MAX_REPETITION_PENALTY: f64 = 10.0;

    /// Reads `params` as a client sent them (`{}` when absent). Shape problems (unknown
    /// fields, wrong types) are 400s; values out of bounds are 422s.
    pub fn parse(params: &Map<String, Value>, limits: &InputLimits) -> Result<Self, ApiError> {
        let p = Fields::new(params, "params", &field_names::<Self>())?;
        let parsed = TextGenerationParams {
            max_new_tokens: p
                .opt("max_new_tokens", |v, f| Ok(integer(v, f, 1, limits.max_new_tokens.into())? as u32))?,
            temperature: p.opt("temperature", number)?,
            top_p: p.opt("top_p", number)?,
            top_k: p.opt("top_k", |v, f| Ok(integer(v, f, 0, u32::MAX.into())? as u32))?,
            seed: p.opt("seed", |v, f| integer(v, f, 0, u64::MAX))?,
            repetition_penalty: p.opt("repetition_penalty", number)?,
            stop: p.opt("stop", stop_sequences)?,
            logprobs: p.opt("logprobs", boolean)?,
        };
        parsed.check()?;
        Ok(parsed)
    }

    /// The bounds of every param (the model's context is the executor's to check).
    pub fn check(&self) -> Result<(), OutOfBounds> {
        let out = |field: &str, message: String| Err(OutOfBounds::new(format!("params.{field}"), message));
        if self.max_new_tokens == Some(0) {
            return out("max_new_tokens", "must be at least 1".into());
        }
        if let Some(t) = self.temperature
            && !(t.is_finite() && (0.0..=Self::MAX_TEMPERATURE).contains(&t))
        {
            return out("temperature", format!("must be between 0 and {}, got {t}", Self::MAX_TEMPERATURE));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return out("top_p", format!("must be greater than 0 and at most 1, got {p}"));
        }
        if let Some(k) = self.top_k
            && !(1..=Self::MAX_TOP_K).contains(&k)
        {
            return out("top_k", format!("must be an integer from 1 to {}, got {k}", Self::MAX_TOP_K));
        }
        if let Some(r) = self.repetition_penalty
            && !(r.is_finite() && r > 0.0 && r <= Self::MAX_REPETITION_PENALTY)
        {
            let max = Self::MAX_REPETITION_PENALTY;
            return out("repetition_penalty", format!("must be greater than 0 and at most {max}, got {r}"));
        }
        let stop = self.stop.as_deref().unwrap_or_default();
        if stop.len() > Self::MAX_STOP {
            return out("stop", format!("at most {} stop sequences", Self::MAX_STOP));
        }
        for (i, s) in stop.iter().enumerate() {
            if s.is_empty() || s.chars().count() > Self::MAX_STOP_CHARS {
                return out(
                    &format!("stop[{i}]"),
                    format!("stop sequences are 1 to {} characters", Self::MAX_STOP_CHARS),
                );
            }
        }
        Ok(())
    }

    /// The sampling temperature (0, greedy, when not given).
    pub fn temperature(&self) -> f64 {
        self.temperature.unwrap_or(0.0)
    }

    /// Whether decoding is greedy (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature() == 0.0
    }

    /// The repetition penalty (1, none, when not given).
    pub fn repetition_penalty(&self) -> f64 {
        self.repetition_penalty.unwrap_or(1.0)
    }

    /// The stop sequences (none when not given).
    pub fn stop(&self) -> &[String] {
        self.stop.as_deref().unwrap_or_default()
    }
}

impl TextGenerationInput {
    fn parse(input: &Value) -> Result<Self, ApiError> {
        let expected =
            "an object like {\"prompt\": \"...\"} or {\"messages\": [{\"role\": \"user\", \"content\": \"...\"}]}";
        let f = Fields::of(input, "input", expected, &["prompt", "messages"])?;
        let prompt = f.opt("prompt", string)?;
        let messages = f.opt("messages", |v, field| match v {
            Value::Array(items) => Ok(items),
            _ => Err(wrong_type(field, "an array of {\"role\", \"content\"} objects")),
        })?;
        match (prompt, messages) {
            (Some(prompt), None) => {
                check_text(&prompt, "input.prompt")?;
                Ok(TextGenerationInput::Prompt { prompt })
            }
            (None, Some(items)) => Ok(TextGenerationInput::Chat { messages: parse_messages(items)? }),
            (Some(_), Some(_)) => Err(ApiError::invalid("input", "give either prompt or messages, not both")),
            (None, None) => Err(ApiError::bad_request("input", format!("expected {expected}"))),
        }
    }
}

/// Chat messages: 1 to [`TextGenerationInput::MAX_MESSAGES`], each `{"role", "content"}`
/// with a known role and content without control characters (empty content is allowed: an
/// assistant turn may be empty).
fn parse_messages(items: &[Value]) -> Result<Vec<ChatMessage>, ApiError> {
    let max = TextGenerationInput::MAX_MESSAGES;
    if items.is_empty() || items.len() > max {
        return Err(ApiError::invalid("input.messages", format!("must hold 1 to {max} messages, got {}", items.len())));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("input.messages[{i}]");
            let obj = m
                .as_object()
                .ok_or_else(|| wrong_type(&at, "an object like {\"role\": \"user\", \"content\": \"...\"}"))?;
            if let Some(k) = obj.keys().find(|k| !["role", "content"].contains(&k.as_str())) {
                return Err(ApiError::bad_request(&format!("{at}.{k}"), "unknown field; known fields: role, content"));
            }
            let role_field = format!("{at}.role");
            let role = match obj.get("role") {
                Some(Value::String(r)) => match r.as_str() {
                    "system" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => {
                        return Err(ApiError::invalid(
                            &role_field,
                            format!("unknown role {}; use system, user or assistant", quote(other)),
                        ));
                    }
                },
                Some(_) => return Err(wrong_type(&role_field, "a string")),
                None => return Err(ApiError::bad_request(&role_field, "required")),
            };
            let content_field = format!("{at}.content");
            let content = match obj.get("content") {
                Some(v) => string(v, &content_field)?,
                None => return Err(ApiError::bad_request(&content_field, "required")),
            };
            check_controls(&content, &content_field)?;
            Ok(ChatMessage { role, content })
        })
        .collect()
}

impl EmbeddingsInput {
    fn parse(input: &Value, limits: &InputLimits) -> Result<Self, ApiError> {
        let f = Fields::of(input, "input", "an object like {\"texts\": [\"...\"]}", &field_names::<Self>())?;
        let texts = f.required("texts", |v, field| match v {
            Value::Array(items) => Ok(items),
            _ => Err(wrong_type(field, "an array of strings")),
        })?;
        let max = limits.max_texts;
        if texts.is_empty() || texts.len() > max as usize {
            return Err(ApiError::invalid("input.texts", format!("must hold 1 to {max} texts, got {}", texts.len())));
        }
        let texts = checked_texts(&texts)?;
        Ok(EmbeddingsInput { texts })
    }
}

impl ImageEmbeddingsInput {
    /// The shape and every check that needs no store: each image's source parses, and a
    /// `data:` image's header shows a PNG, JPEG or WebP of a size within bounds. Stored
    /// inputs are checked by the service, which reads them ([`Self::stored`]).
    fn parse(input: &Value, limits: &InputLimits) -> Result<Self, ApiError> {
        let expected = "an object like {\"images\": [\"data:image/png;base64,...\"]}";
        let f = Fields::of(input, "input", expected, &field_names::<Self>())?;
        let list = |v: &Value, field: &str| match v {
            Value::Array(items) => Ok(items.clone()),
            _ => Err(wrong_type(field, "an array of strings")),
        };
        let images = f.opt("images", list)?.unwrap_or_default();
        let texts = f.opt("texts", list)?.unwrap_or_default();
        if images.is_empty() && texts.is_empty() {
            return Err(ApiError::invalid("input.images", "give at least one image (or text in input.texts)"));
        }
        let max = crate::images::MAX_IMAGES;
        if images.len() > max {
            return Err(ApiError::invalid(
                "input.images",
                format!("must hold at most {max} images, got {}", images.len()),
            ));
        }
        if texts.len() > limits.max_texts as usize {
            let n = limits.max_texts;
            return Err(ApiError::invalid("input.texts", format!("must hold at most {n} texts, got {}", texts.len())));
        }
        let images = images
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let field = format!("input.images[{i}]");
                let s = string(v, &field)?;
                match crate::images::parse_source(&s).map_err(|m| ApiError::invalid(&field, m))? {
                    crate::images::ImageSource::Data(bytes) => {
                        crate::images::check(&bytes).map_err(|m| ApiError::invalid(&field, m))?;
                    }
                    crate::images::ImageSource::Stored(_) => {}
                }
                Ok(s)
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let texts = checked_texts(&texts)?;
        Ok(ImageEmbeddingsInput { images, texts })
    }

    /// The images that are input objects stored by Ferry: (index in `images`, id).
    pub fn stored(&self) -> Vec<(usize, String)> {
        self.images
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match crate::images::parse_source(s) {
                Ok(crate::images::ImageSource::Stored(id)) => Some((i, id)),
                _ => None,
            })
            .collect()
    }
}

/// `input.texts`' items, each a string of [`check_text`].
fn checked_texts(items: &[Value]) -> Result<Vec<String>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let field = format!("input.texts[{i}]");
            let text = string(t, &field)?;
            check_text(&text, &field)?;
            Ok(text)
        })
        .collect()
}

impl JobInput {
    /// Reads a submit's `input` and `params` for a model of `task`: the API's validation.
    pub fn parse(
        task: Task,
        input: &Value,
        params: &Map<String, Value>,
        limits: &InputLimits,
    ) -> Result<Self, ApiError> {
        match task {
            Task::TextGeneration => {
                let input = TextGenerationInput::parse(input)?;
                Ok(JobInput::TextGeneration { input, params: TextGenerationParams::parse(params, limits)? })
            }
            Task::Embeddings => {
                let input = EmbeddingsInput::parse(input, limits)?;
                Fields::new(params, "params", &[])?;
                Ok(JobInput::Embeddings { input })
            }
            Task::ImageEmbeddings => {
                let input = ImageEmbeddingsInput::parse(input, limits)?;
                Fields::new(params, "params", &[])?;
                Ok(JobInput::ImageEmbeddings { input })
            }
            Task::Handler => {
                Fields::new(params, "params", &[])?;
                Ok(JobInput::Handler { input: input.clone() })
            }
        }
    }

    /// The task this input is for.
    pub fn task(&self) -> Task {
        match self {
            JobInput::TextGeneration { .. } => Task::TextGeneration,
            JobInput::Embeddings { .. } => Task::Embeddings,
            JobInput::ImageEmbeddings { .. } => Task::ImageEmbeddings,
            JobInput::Handler { .. } => Task::Handler,
        }
    }

    /// The `input` object, as stored and shown in the job view.
    pub fn input_json(&self) -> Value {
        let v = match self {
            JobInput::TextGeneration { input, .. } => serde_json::to_value(input),
            JobInput::Embeddings { input } => serde_json::to_value(input),
            JobInput::ImageEmbeddings { input } => serde_json::to_value(input),
            JobInput::Handler { input } => Ok(input.clone()),
        };
        v.unwrap_or_default()
    }

    /// The `params` object, as stored and shown (`{}` for tasks without params).
    pub fn params_json(&self) -> Value {
        match self {
            JobInput::TextGeneration { params, .. } => serde_json::to_value(params).unwrap_or_default(),
            JobInput::Embeddings { .. } | JobInput::ImageEmbeddings { .. } | JobInput::Handler { .. } => {
                Value::Object(Map::new())
            }
        }
    }

    /// A text-generation input with default params (tests, demos).
    pub fn prompt(prompt: impl Into<String>) -> Self {
        JobInput::TextGeneration { input: TextGenerationInput::prompt(prompt), params: TextGenerationParams::default() }
    }

    /// An embeddings input (tests, demos).
    pub fn texts<S: Into<String>>(texts: impl IntoIterator<Item = S>) -> Self {
        JobInput::Embeddings { input: EmbeddingsInput { texts: texts.into_iter().map(Into::into).collect() } }
    }
}

/// A job's input as its record holds it: inline, or, when its `input` object is over
/// [`crate::objects::INLINE_BYTES`], stored as an object, the record keeping the task, the
/// params and where the input is. Only the executor reads a stored input back
/// ([`Input::resolve`]); views show `input: null` and its size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredInput", into = "StoredInput")]
pub enum Input {
    Inline(JobInput),
    Stored { task: Task, params: Value, object: crate::objects::ObjectRef },
}

impl From<JobInput> for Input {
    fn from(j: JobInput) -> Self {
        Input::Inline(j)
    }
}

impl Input {
    pub fn task(&self) -> Task {
        match self {
            Input::Inline(j) => j.task(),
            Input::Stored { task, .. } => *task,
        }
    }

    /// The `input` object as the record shows it (null when stored as an object).
    pub fn input_json(&self) -> Value {
        match self {
            Input::Inline(j) => j.input_json(),
            Input::Stored { .. } => Value::Null,
        }
    }

    pub fn params_json(&self) -> Value {
        match self {
            Input::Inline(j) => j.params_json(),
            Input::Stored { params, .. } => params.clone(),
        }
    }

    /// Where the input is stored, when it is not inline.
    pub fn object(&self) -> Option<&crate::objects::ObjectRef> {
        match self {
            Input::Inline(_) => None,
            Input::Stored { object, .. } => Some(object),
        }
    }

    /// The inline input.
    pub fn inline(&self) -> Option<&JobInput> {
        match self {
            Input::Inline(j) => Some(j),
            Input::Stored { .. } => None,
        }
    }

    /// The typed input, with a stored `input` object read back from `body` (its bytes).
    pub fn resolve(&self, body: Option<&[u8]>) -> Result<JobInput, serde_json::Error> {
        match (self, body) {
            (Input::Inline(j), _) => Ok(j.clone()),
            (Input::Stored { task, params, .. }, Some(body)) => {
                let input: Value = serde_json::from_slice(body)?;
                JobInput::try_from(StoredInput { task: *task, input, params: params.clone(), input_object: None })
            }
            (Input::Stored { .. }, None) => {
                Err(serde::de::Error::custom("the job's input is stored as an object and was not read"))
            }
        }
    }

    /// `input` as a job record holds it: inline when its `input` object is at most
    /// [`crate::objects::INLINE_BYTES`], else `Stored` at `key`, with the bytes to write there.
    pub fn for_record(input: JobInput, key: impl FnOnce() -> String) -> (Input, Option<Vec<u8>>) {
        match crate::objects::encode(&input.input_json()) {
            (_, false) => (Input::Inline(input), None),
            (bytes, true) => {
                let object = crate::objects::ObjectRef { key: key(), bytes: bytes.len() as u64 };
                (Input::Stored { task: input.task(), params: input.params_json(), object }, Some(bytes))
            }
        }
    }
}

/// How a job's input is stored: the task, the `input` object and the `params` object, the
/// shape job stores and the job view keep (`#[serde(flatten)]` into the job); with
/// `input_object` (and `input: null`) when the input is stored as an object.
#[derive(Serialize, Deserialize)]
struct StoredInput {
    task: Task,
    input: Value,
    params: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_object: Option<crate::objects::ObjectRef>,
}

impl From<JobInput> for StoredInput {
    fn from(j: JobInput) -> Self {
        StoredInput { task: j.task(), input: j.input_json(), params: j.params_json(), input_object: None }
    }
}

impl From<Input> for StoredInput {
    fn from(i: Input) -> Self {
        match i {
            Input::Inline(j) => j.into(),
            Input::Stored { task, params, object } => {
                StoredInput { task, input: Value::Null, params, input_object: Some(object) }
            }
        }
    }
}

impl TryFrom<StoredInput> for Input {
    type Error = serde_json::Error;

    fn try_from(s: StoredInput) -> Result<Self, Self::Error> {
        match s.input_object {
            Some(object) => Ok(Input::Stored { task: s.task, params: s.params, object }),
            None => JobInput::try_from(s).map(Input::Inline),
        }
    }
}

impl TryFrom<StoredInput> for JobInput {
    type Error = serde_json::Error;

    /// A stored record was validated when it was written; reading it back only checks its
    /// shape (the same types), never the deployment's bounds, which may have changed since.
    fn try_from(s: StoredInput) -> Result<Self, Self::Error> {
        match s.task {
            Task::TextGeneration => Ok(JobInput::TextGeneration {
                input: serde_json::from_value(s.input)?,
                params: match s.params {
                    Value::Null => TextGenerationParams::default(),
                    p => serde_json::from_value(p)?,
                },
            }),
            Task::Embeddings => Ok(JobInput::Embeddings { input: serde_json::from_value(s.input)? }),
            Task::ImageEmbeddings => Ok(JobInput::ImageEmbeddings { input: serde_json::from_value(s.input)? }),
            Task::Handler => Ok(JobInput::Handler { input: s.input }),
        }
    }
}

/// Text must be non-empty and free of control characters other than tab and newlines
/// (they are never meaningful in a prompt and often a sign of a broken client). The API
/// applies it to every text it takes; models apply it to what they are handed directly.
pub fn check_text(s: &str, field: &str) -> Result<(), OutOfBounds> {
    if s.trim().is_empty() {
        return Err(OutOfBounds::new(field, "must not be empty"));
    }
    check_controls(s, field)
}

/// No control characters but tab, newline and carriage return.
pub fn check_controls(s: &str, field: &str) -> Result<(), OutOfBounds> {
    if let Some((at, c)) = s.char_indices().find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        return Err(OutOfBounds::new(field, format!("contains the control character U+{:04X} at byte {at}", c as u32)));
    }
    Ok(())
}

/// A JSON object read field by field; each problem names the field's path.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    at: &'static str,
}

impl<'a> Fields<'a> {
    /// `map` at `at` (`""` for the top level), refusing keys not in `known` (400).
    pub(crate) fn new(map: &'a Map<String, Value>, at: &'static str, known: &[&str]) -> Result<Self, ApiError> {
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            let field = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
            let hint = if known.is_empty() {
                "no fields are accepted here".to_string()
            } else {
                format!("known fields: {}", known.join(", "))
            };
            return Err(ApiError::bad_request(field.clone(), format!("unknown field {}; {hint}", quote(&field))));
        }
        Ok(Fields { map, at })
    }

    /// `value` as an object (400 naming `at`, described as `expected`, when it is not one).
    pub(crate) fn of(value: &'a Value, at: &'static str, expected: &str, known: &[&str]) -> Result<Self, ApiError> {
        match value {
            Value::Object(map) => Fields::new(map, at, known),
            _ => Err(wrong_type(at, expected)),
        }
    }

    fn path(&self, key: &str) -> String {
        if self.at.is_empty() { key.to_string() } else { format!("{}.{key}", self.at) }
    }

    /// A field that may be absent (`null` counts as absent), read by `read`.
    pub(crate) fn opt<T>(
        &self,
        key: &str,
        read: impl Fn(&'a Value, &str) -> Result<T, ApiError>,
    ) -> Result<Option<T>, ApiError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => read(v, &self.path(key)).map(Some),
        }
    }

    /// A field that must be present (400 when it is not).
    pub(crate) fn required<T>(
        &self,
        key: &str,
        read: impl Fn(&'a Value, &str) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        match self.map.get(key) {
            None => Err(missing(&self.path(key))),
            Some(v) => read(v, &self.path(key)),
        }
    }
}

/// A string (400 when it is another type).
pub(crate) fn string(v: &Value, field: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(wrong_type(field, "a string")),
    }
}

/// An integer from `min` to `max`: another type is a 400; a number out of range (or not
/// whole) is a 422.
pub(crate) fn integer(v: &Value, field: &str, min: u64, max: u64) -> Result<u64, ApiError> {
    let Value::Number(n) = v else {
        return Err(wrong_type(field, "an integer"));
    };
    match n.as_u64() {
        Some(x) if (min..=max).contains(&x) => Ok(x),
        _ => Err(ApiError::invalid(field, format!("must be an integer from {min} to {max}, got {n}"))),
    }
}

/// `true` or `false` (400 when it is another type).
fn boolean(v: &Value, field: &str) -> Result<bool, ApiError> {
    v.as_bool().ok_or_else(|| wrong_type(field, "a boolean"))
}

/// A number (400 when it is another type); its bounds are the type's `check`.
fn number(v: &Value, field: &str) -> Result<f64, ApiError> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| ApiError::invalid(field, format!("{n} is not a usable number"))),
        _ => Err(wrong_type(field, "a number")),
    }
}

/// `stop`: a string or an array of strings.
fn stop_sequences(v: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => {
            items.iter().enumerate().map(|(i, item)| string(item, &format!("{field}[{i}]"))).collect()
        }
        _ => Err(wrong_type(field, "a string or an array of strings")),
    }
}

fn missing(field: &str) -> ApiError {
    ApiError::bad_request(field, format!("missing required field {}", quote(field)))
}

pub(crate) fn wrong_type(field: &str, expected: &str) -> ApiError {
    ApiError::bad_request(field, format!("{} must be {expected}", quote(field)))
}

/// Quotes user text for a message, escaped and cut short so it cannot flood or forge output.
pub fn quote(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    let q = serde_json::to_string(&short).unwrap_or_default();
    if s.chars().count() > 64 { format!("{q}...") } else { q }
}

/// The field names serde knows for a struct: what `Fields::new` accepts, taken from the
/// type itself so the list of known fields can never disagree with it.
pub fn field_names<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
    struct Names(Vec<&'static str>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names captured")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Names {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = fields.to_vec();
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut names = Names(Vec::new());
    let _ = T::deserialize(&mut names);
    names.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: InputLimits = InputLimits { max_new_tokens: 4096, max_texts: 128 };

    fn params(v: Value) -> Result<TextGenerationParams, ApiError> {
        TextGenerationParams::parse(v.as_object().unwrap(), &LIMITS)
    }

    #[test]
    fn known_fields_come_from_the_types() {
        assert_eq!(field_names::<EmbeddingsInput>(), ["texts"]);
        let names = field_names::<TextGenerationParams>();
        assert_eq!(names.len(), 8, "{names:?}");
    }

    /// Every field serde knows is also read by `parse` (a field added to the struct but not
    /// to `parse` would be accepted and dropped).
    #[test]
    fn parse_reads_every_param() {
        let sample = json!({"max_new_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "seed": 7,
            "repetition_penalty": 1.1, "stop": ["x"], "logprobs": true});
        for name in field_names::<TextGenerationParams>() {
            let one: Map<String, Value> = [(name.to_string(), sample[name].clone())].into_iter().collect();
            let parsed = TextGenerationParams::parse(&one, &LIMITS).unwrap();
            assert_eq!(serde_json::to_value(&parsed).unwrap(), Value::Object(one), "{name} is read");
        }
    }

    #[test]
    fn shape_problems_are_400_and_bounds_422() {
        for (v, status, field) in [
            (json!({"temprature": 1}), 400, "params.temprature"),
            (json!({"temperature": "hot"}), 400, "params.temperature"),
            (json!({"stop": 3}), 400, "params.stop"),
            (json!({"stop": ["a", 3]}), 400, "params.stop[1]"),
            (json!({"temperature": 2.5}), 422, "params.temperature"),
            (json!({"top_p": 0}), 422, "params.top_p"),
            (json!({"top_k": 0}), 422, "params.top_k"),
            (json!({"top_k": 1001}), 422, "params.top_k"),
            (json!({"seed": -1}), 422, "params.seed"),
            (json!({"max_new_tokens": 4097}), 422, "params.max_new_tokens"),
            (json!({"max_new_tokens": 0}), 422, "params.max_new_tokens"),
            (json!({"repetition_penalty": 11}), 422, "params.repetition_penalty"),
            (json!({"stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}), 422, "params.stop"),
            (json!({"stop": ["x".repeat(129)]}), 422, "params.stop[0]"),
            (json!({"stop": ["a", ""]}), 422, "params.stop[1]"),
            (json!({"max_new_tokens": -1}), 422, "params.max_new_tokens"),
            (json!({"max_new_tokens": 1u64 << 40}), 422, "params.max_new_tokens"),
            (json!({"temperature": -0.5}), 422, "params.temperature"),
            (json!({"top_p": 1.5}), 422, "params.top_p"),
            (json!({"seed": -3}), 422, "params.seed"),
            (json!({"repetition_penalty": 0}), 422, "params.repetition_penalty"),
            (json!({"repetition_penalty": -1}), 422, "params.repetition_penalty"),
        ] {
            let e = params(v.clone()).unwrap_err();
            assert_eq!((e.status.as_u16(), e.field.as_deref()), (status, Some(field)), "{v}: {e:?}");
        }
        let ok = params(json!({"stop": "end", "temperature": null, "seed": u64::MAX})).unwrap();
        assert_eq!(ok.stop(), ["end"]);
        assert_eq!(ok.seed, Some(u64::MAX));
        assert!(ok.is_greedy());
        assert_eq!(params(json!({})).unwrap(), TextGenerationParams::default());
        let all = params(json!({"max_new_tokens": 5, "temperature": 1, "top_p": 0.9, "top_k": 40, "seed": 7,
            "repetition_penalty": 1.1, "stop": ["a", "b"]}))
        .unwrap();
        assert_eq!((all.max_new_tokens, all.temperature(), all.top_p, all.top_k), (Some(5), 1.0, Some(0.9), Some(40)));
        assert_eq!((all.seed, all.repetition_penalty(), all.stop()), (Some(7), 1.1, &["a".into(), "b".into()][..]));
        assert!(!all.is_greedy());
    }

    #[test]
    fn check_holds_the_bounds_for_values_built_in_code() {
        let p = |edit: fn(&mut TextGenerationParams)| {
            let mut p = TextGenerationParams::default();
            edit(&mut p);
            p.check().unwrap_err().field
        };
        assert_eq!(p(|p| p.temperature = Some(f64::NAN)), "params.temperature");
        assert_eq!(p(|p| p.temperature = Some(f64::INFINITY)), "params.temperature");
        assert_eq!(p(|p| p.top_p = Some(1.01)), "params.top_p");
        assert_eq!(p(|p| p.repetition_penalty = Some(-2.0)), "params.repetition_penalty");
        assert_eq!(p(|p| p.stop = Some(vec![String::new()])), "params.stop[0]");
        assert!(TextGenerationParams::default().check().is_ok());
    }

    #[test]
    fn text_rules() {
        let message = |s: &str| check_text(s, "input.prompt").unwrap_err().message;
        assert!(check_text("a\tb\nc\r", "input.prompt").is_ok());
        assert_eq!(message(""), "must not be empty");
        assert_eq!(message(" \n"), "must not be empty");
        assert_eq!(message("a\u{7}"), "contains the control character U+0007 at byte 1");
        assert_eq!(message("a\u{85}"), "contains the control character U+0085 at byte 1");
        assert_eq!(check_text("\u{0}", "input.texts[3]").unwrap_err().field, "input.texts[3]");
    }

    #[test]
    fn inputs_by_task() {
        let none = Map::new();
        let text = JobInput::parse(Task::TextGeneration, &json!({"prompt": "hi"}), &none, &LIMITS).unwrap();
        assert_eq!(text, JobInput::prompt("hi"));
        assert_eq!((text.input_json(), text.params_json()), (json!({"prompt": "hi"}), json!({})));
        let e = JobInput::parse(Task::TextGeneration, &json!({"texts": ["x"]}), &none, &LIMITS).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("input.texts"));
        let e = JobInput::parse(Task::Embeddings, &json!({"texts": ["ok", " "]}), &none, &LIMITS).unwrap_err();
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (422, Some("input.texts[1]")));
        let few = InputLimits { max_texts: 2, ..LIMITS };
        let e = JobInput::parse(Task::Embeddings, &json!({"texts": ["a", "b", "c"]}), &none, &few).unwrap_err();
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (422, Some("input.texts")));
        let with_params = json!({"top_k": 1});
        let e = JobInput::parse(Task::Embeddings, &json!({"texts": ["a"]}), with_params.as_object().unwrap(), &LIMITS)
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (400, Some("params.top_k")));
    }

    #[test]
    fn image_inputs_are_checked_as_far_as_their_headers() {
        let none = Map::new();
        let parse = |input: Value| JobInput::parse(Task::ImageEmbeddings, &input, &none, &LIMITS);
        let stored = "https://api.example.com/v1/inputs/01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B";
        let ok = parse(json!({"images": [stored], "texts": ["a cat"]})).unwrap();
        let JobInput::ImageEmbeddings { input } = &ok else { panic!("{ok:?}") };
        assert_eq!(input.stored(), [(0, "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B".to_string())]);
        assert_eq!(ok.input_json(), json!({"images": [stored], "texts": ["a cat"]}));
        let field = |input: Value| {
            let e = parse(input).unwrap_err();
            (e.status.as_u16(), e.field.unwrap_or_default())
        };
        assert_eq!(field(json!({})), (422, "input.images".into()));
        assert_eq!(field(json!({"images": "x"})), (400, "input.images".into()));
        assert_eq!(field(json!({"images": [1]})), (400, "input.images[0]".into()));
        assert_eq!(field(json!({"images": [stored, "data:image/png;base64,AAAA"]})), (422, "input.images[1]".into()));
        assert_eq!(field(json!({"images": vec![stored; 65]})), (422, "input.images".into()));
        assert_eq!(field(json!({"texts": ["ok", ""]})), (422, "input.texts[1]".into()));
        assert_eq!(field(json!({"images": [stored], "urls": []})), (400, "input.urls".into()));
    }

    #[test]
    fn stored_form_round_trips() {
        let p = TextGenerationParams { seed: Some(u64::MAX), stop: Some(vec!["\"}".into()]), ..Default::default() };
        for input in [
            JobInput::TextGeneration { input: TextGenerationInput::prompt("naïve \"quote\" 日本"), params: p },
            JobInput::texts(["a", "b\nc"]),
        ] {
            let stored = serde_json::to_value(&input).unwrap();
            assert_eq!(stored["task"], input.task().as_str());
            assert_eq!(serde_json::from_value::<JobInput>(stored).unwrap(), input);
        }
        let bad = json!({"task": "text-generation", "input": {"texts": ["x"]}, "params": {}});
        assert!(serde_json::from_value::<JobInput>(bad).is_err(), "a stored input of the wrong shape is refused");
    }
}

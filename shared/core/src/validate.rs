//! Turns a submit body into a validated job request, or an [`ApiError`] that names the
//! field. The body is parsed into a `serde_json::Value` first and checked by hand, so that
//! each problem gets the right class: syntax, wrong types, unknown or missing fields are
//! 400; well-formed but unacceptable values (unknown model, out of range) are 422. Unknown
//! fields are refused everywhere, so a typo never runs a job on defaults.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::auth::sha256_hex;
use crate::catalog::{Catalog, ModelSpec};
use crate::error::ApiError;
use crate::job::Task;

/// Limits that shape validation.
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_timeout_s: u64,
    pub max_timeout_s: u64,
    /// Default bound on `max_new_tokens` when the model names none.
    pub max_new_tokens: u32,
    /// Default bound on the number of texts when the model names none.
    pub max_batch: u32,
}

/// `POST /v1/jobs` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// A model id from `GET /v1/models`.
    pub model: String,
    /// Shaped by the model's task: `TextGenerationInput` or `EmbeddingsInput`.
    #[schema(value_type = Object)]
    pub input: Value,
    /// Task parameters; for text generation see `TextGenerationParams`. Embeddings take none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<TextGenerationParams>)]
    pub params: Option<Value>,
    /// Execution timeout in seconds (1 to the configured maximum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

/// Input of a `text-generation` job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextGenerationInput {
    pub prompt: String,
}

/// Input of an `embeddings` job: one vector comes back per text, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsInput {
    pub texts: Vec<String>,
}

/// Parameters of a `text-generation` job. All optional; `temperature: 0` means greedy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextGenerationParams {
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
    /// Up to 8 stop sequences (a single string is accepted and stored as a list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
}

/// A submission that passed every check.
#[derive(Debug, Clone)]
pub struct ValidSubmit {
    pub model: ModelSpec,
    pub input: Value,
    /// Normalized params object (`{}` when none).
    pub params: Value,
    pub timeout_s: u64,
    /// SHA-256 of the canonical request, for idempotency.
    pub request_hash: String,
}

/// Validates a submit body (already size- and media-type-checked).
pub fn parse_submit(body: &[u8], catalog: &Catalog, limits: &Limits) -> Result<ValidSubmit, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request("body", "the request body is empty; expected a JSON object"));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request("body", format!("malformed JSON: {e}")))?;
    let obj =
        value.as_object().ok_or_else(|| ApiError::bad_request("body", "the request body must be a JSON object"))?;
    reject_unknown(obj, "", &["model", "input", "params", "timeout_s"])?;

    let model_id = match obj.get("model") {
        None => return Err(missing("model")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(wrong_type("model", "a string")),
    };
    let model = catalog
        .get(model_id)
        .ok_or_else(|| {
            ApiError::invalid("model", format!("unknown model {}; GET /v1/models lists them", quote(model_id)))
        })?
        .clone();

    let timeout_s = match obj.get("timeout_s") {
        None | Some(Value::Null) => limits.default_timeout_s,
        Some(v) => integer(v, "timeout_s", 1, limits.max_timeout_s)?,
    };

    let input = match obj.get("input") {
        None => return Err(missing("input")),
        Some(v) => v,
    };
    let params = match obj.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(wrong_type("params", "an object")),
    };
    let params = match model.task {
        Task::TextGeneration => {
            check_prompt_input(input)?;
            text_generation_params(&params, &model, limits)?
        }
        Task::Embeddings => {
            check_embeddings_input(input, &model, limits)?;
            reject_unknown(&params, "params", &[])?;
            Value::Object(Map::new())
        }
    };

    let canonical = serde_json::json!({
        "model": model.id, "input": input, "params": params, "timeout_s": timeout_s,
    });
    let request_hash = sha256_hex(canonical.to_string().as_bytes());
    Ok(ValidSubmit { model, input: input.clone(), params, timeout_s, request_hash })
}

fn check_prompt_input(input: &Value) -> Result<(), ApiError> {
    let obj = input.as_object().ok_or_else(|| wrong_type("input", "an object like {\"prompt\": \"...\"}"))?;
    reject_unknown(obj, "input", &["prompt"])?;
    match obj.get("prompt") {
        None => Err(missing("input.prompt")),
        Some(Value::String(s)) => check_text(s, "input.prompt"),
        Some(_) => Err(wrong_type("input.prompt", "a string")),
    }
}

fn check_embeddings_input(input: &Value, model: &ModelSpec, limits: &Limits) -> Result<(), ApiError> {
    let obj = input.as_object().ok_or_else(|| wrong_type("input", "an object like {\"texts\": [\"...\"]}"))?;
    reject_unknown(obj, "input", &["texts"])?;
    let texts = match obj.get("texts") {
        None => return Err(missing("input.texts")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(wrong_type("input.texts", "an array of strings")),
    };
    let max = model.max_batch.unwrap_or(limits.max_batch);
    if texts.is_empty() || texts.len() > max as usize {
        return Err(ApiError::invalid("input.texts", format!("must hold 1 to {max} texts, got {}", texts.len())));
    }
    for (i, t) in texts.iter().enumerate() {
        let field = format!("input.texts[{i}]");
        match t {
            Value::String(s) => check_text(s, &field)?,
            _ => return Err(wrong_type(&field, "a string")),
        }
    }
    Ok(())
}

fn text_generation_params(params: &Map<String, Value>, model: &ModelSpec, limits: &Limits) -> Result<Value, ApiError> {
    const KNOWN: &[&str] = &["max_new_tokens", "temperature", "top_p", "top_k", "seed", "repetition_penalty", "stop"];
    reject_unknown(params, "params", KNOWN)?;
    let max_tokens = model.max_new_tokens.unwrap_or(limits.max_new_tokens);
    let mut out = TextGenerationParams::default();
    for (key, v) in params {
        if v.is_null() {
            continue;
        }
        let field = format!("params.{key}");
        match key.as_str() {
            "max_new_tokens" => out.max_new_tokens = Some(integer(v, &field, 1, max_tokens as u64)? as u32),
            "temperature" => {
                out.temperature = Some(number(v, &field, |x| (0.0..=2.0).contains(&x), "between 0 and 2")?)
            }
            "top_p" => out.top_p = Some(number(v, &field, |x| x > 0.0 && x <= 1.0, "greater than 0 and at most 1")?),
            "top_k" => out.top_k = Some(integer(v, &field, 1, 1000)? as u32),
            "seed" => out.seed = Some(integer(v, &field, 0, u64::MAX)?),
            "repetition_penalty" => {
                out.repetition_penalty =
                    Some(number(v, &field, |x| x > 0.0 && x <= 10.0, "greater than 0 and at most 10")?)
            }
            "stop" => out.stop = Some(stop_sequences(v)?),
            _ => unreachable!("unknown keys were rejected above"),
        }
    }
    Ok(serde_json::to_value(out).unwrap_or_default())
}

fn stop_sequences(v: &Value) -> Result<Vec<String>, ApiError> {
    let items: Vec<&Value> = match v {
        Value::String(_) => vec![v],
        Value::Array(a) => a.iter().collect(),
        _ => return Err(wrong_type("params.stop", "a string or an array of strings")),
    };
    if items.len() > 8 {
        return Err(ApiError::invalid("params.stop", "at most 8 stop sequences"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("params.stop[{i}]");
            match item {
                Value::String(s) if s.is_empty() || s.chars().count() > 128 => {
                    Err(ApiError::invalid(field, "stop sequences are 1 to 128 characters"))
                }
                Value::String(s) => Ok(s.clone()),
                _ => Err(wrong_type(&field, "a string")),
            }
        })
        .collect()
}

/// Text must be non-empty and free of control characters other than tab and newlines
/// (they are never meaningful in a prompt and often a sign of a broken client).
fn check_text(s: &str, field: &str) -> Result<(), ApiError> {
    if s.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if let Some(c) = s.chars().find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        return Err(ApiError::invalid(field, format!("contains the control character U+{:04X}", c as u32)));
    }
    Ok(())
}

fn integer(v: &Value, field: &str, min: u64, max: u64) -> Result<u64, ApiError> {
    let Value::Number(n) = v else {
        return Err(wrong_type(field, "an integer"));
    };
    match n.as_u64() {
        Some(x) if (min..=max).contains(&x) => Ok(x),
        _ => Err(ApiError::invalid(field, format!("must be an integer from {min} to {max}, got {n}"))),
    }
}

fn number(v: &Value, field: &str, ok: impl Fn(f64) -> bool, range: &str) -> Result<f64, ApiError> {
    let Value::Number(n) = v else {
        return Err(wrong_type(field, "a number"));
    };
    match n.as_f64() {
        Some(x) if x.is_finite() && ok(x) => Ok(x),
        _ => Err(ApiError::invalid(field, format!("must be {range}, got {n}"))),
    }
}

fn reject_unknown(obj: &Map<String, Value>, prefix: &str, known: &[&str]) -> Result<(), ApiError> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => {
            let field = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            let hint = if known.is_empty() {
                "no fields are accepted here".to_string()
            } else {
                format!("known fields: {}", known.join(", "))
            };
            Err(ApiError::bad_request(field.clone(), format!("unknown field {}; {hint}", quote(&field))))
        }
    }
}

fn missing(field: &str) -> ApiError {
    ApiError::bad_request(field, format!("missing required field {}", quote(field)))
}

fn wrong_type(field: &str, expected: &str) -> ApiError {
    ApiError::bad_request(field, format!("{} must be {expected}", quote(field)))
}

/// Quotes user text for a message, escaped and cut short so it cannot flood or forge output.
pub fn quote(s: &str) -> String {
    let short: String = s.chars().take(64).collect();
    let q = serde_json::to_string(&short).unwrap_or_default();
    if s.chars().count() > 64 { format!("{q}...") } else { q }
}

//! The submit body, `{"model", "input", "params"?, "timeout_s"?}`, turned into a validated
//! job request or an [`ApiError`] that names the field: syntax, wrong types, unknown or
//! missing fields are 400; well-formed but unacceptable values (unknown model, out of
//! range) are 422. Unknown fields are refused everywhere, so a typo never runs a job on
//! defaults. The task's own input and params are [`JobInput`]'s to read.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::auth::sha256_hex;
use crate::catalog::{Catalog, ModelSpec};
use crate::config::Config;
use crate::error::ApiError;
use crate::input::{
    Fields, JobInput, TextGenerationInput, TextGenerationParams, field_names, integer, quote, string, wrong_type,
};

/// `POST /v1/jobs` body (the OpenAPI document's view of it; [`parse_submit`] reads it).
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
    /// Where to POST the job's events, signed (Standard Webhooks): `completed` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<crate::webhook::WebhookRequest>,
}

/// A submission that passed every check.
#[derive(Debug, Clone)]
pub struct ValidSubmit {
    pub model: ModelSpec,
    pub input: JobInput,
    pub timeout_s: u64,
    /// Its URL's shape is checked; its addresses are checked by the service before the job
    /// is recorded ([`crate::deliver::check_webhook`]).
    pub webhook: Option<crate::webhook::WebhookRequest>,
    /// SHA-256 of the canonical request, for idempotency.
    pub request_hash: String,
}

/// A chat is rendered with the model's template when the catalog holds it, so what the
/// template refuses (`raise_exception`) is a 422 before anything is queued; a local model
/// without a template refuses chats. (A catalog entry without the template, an S3 model's,
/// leaves it to the executor, which renders from the model's files.)
pub fn check_chat(input: &JobInput, model: &ModelSpec) -> Result<(), ApiError> {
    let JobInput::TextGeneration { input: TextGenerationInput::Chat { messages }, .. } = input else { return Ok(()) };
    match &model.chat_template {
        Some(template) => {
            template.render(messages).map_err(|e| ApiError::invalid("input.messages", e.to_string()))?;
            Ok(())
        }
        None if model.lacks_chat_template() => Err(ApiError::invalid(
            "input.messages",
            format!("model {} has no chat template; send a prompt instead", model.id),
        )),
        None => Ok(()),
    }
}

/// A handler's input against its catalog entry's `input_schema` (JSON Schema 2020-12): a
/// 422 naming the failing field (`input.steps[2].url`), before anything is queued.
pub fn check_schema(input: &JobInput, model: &ModelSpec) -> Result<(), ApiError> {
    let JobInput::Handler { input } = input else { return Ok(()) };
    // The catalog compiled every schema when it was loaded: one that fails now is the
    // deployment's fault, not the tenant's.
    let schema = model.schema().map_err(|e| {
        tracing::error!(model = %model.id, error = %e, "a catalog input_schema does not compile");
        ApiError::new(http::StatusCode::INTERNAL_SERVER_ERROR, "this handler's input_schema is unusable")
    })?;
    match schema.map(|s| s.validate(input)) {
        Some(Err(invalid)) => Err(ApiError::invalid(invalid.field, invalid.message)),
        _ => Ok(()),
    }
}

/// Validates a submit body (already size- and media-type-checked).
pub fn parse_submit(body: &[u8], catalog: &Catalog, config: &Config) -> Result<ValidSubmit, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request("body", "the request body is empty; expected a JSON object"));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request("body", format!("malformed JSON: {e}")))?;
    let obj =
        value.as_object().ok_or_else(|| ApiError::bad_request("body", "the request body must be a JSON object"))?;
    let f = Fields::new(obj, "", &field_names::<SubmitJob>())?;

    let model_id = f.required("model", string)?;
    let model = catalog
        .get(&model_id)
        .ok_or_else(|| {
            ApiError::invalid("model", format!("unknown model {}; GET /v1/models lists them", quote(&model_id)))
        })?
        .clone();
    let timeout_s = f.opt("timeout_s", |v, field| integer(v, field, 1, config.max_timeout_s))?;
    let default_timeout_s = model.timeout_s.unwrap_or(config.default_timeout_s).min(config.max_timeout_s);
    let timeout_s = timeout_s.unwrap_or(default_timeout_s);
    let input = f.required("input", |v, _| Ok(v))?;
    let empty = Map::new();
    let params = f.opt("params", |v, field| v.as_object().ok_or_else(|| wrong_type(field, "an object")))?;
    let input = JobInput::parse(model.task, input, params.unwrap_or(&empty), &config.input_limits(&model))?;
    check_chat(&input, &model)?;
    check_schema(&input, &model)?;
    let webhook = f.opt("webhook", |v, _| parse_webhook(v, config))?;

    let mut canonical = serde_json::json!({
        "model": model.id, "input": input.input_json(), "params": input.params_json(), "timeout_s": timeout_s,
    });
    if let Some(hook) = &webhook {
        canonical["webhook"] = serde_json::json!(hook);
    }
    let request_hash = sha256_hex(canonical.to_string().as_bytes());
    Ok(ValidSubmit { model, input, timeout_s, webhook, request_hash })
}

/// A submit's `webhook` under the deployment's URL policy: unknown fields are 400, an
/// unknown event or an unacceptable URL 422, each naming its field.
pub fn parse_webhook(value: &Value, config: &Config) -> Result<crate::webhook::WebhookRequest, ApiError> {
    let f = Fields::of(value, "webhook", "an object like {\"url\": \"https://...\"}", &["url", "events"])?;
    let url = f.required("url", string)?;
    let events = f.opt("events", |v, field| {
        let list = v.as_array().ok_or_else(|| wrong_type(field, "an array of event names"))?;
        list.iter()
            .enumerate()
            .map(|(i, e)| {
                serde_json::from_value(e.clone()).map_err(|_| {
                    ApiError::invalid(format!("{field}[{i}]"), "one of \"completed\", \"started\", \"output\"")
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let hook = crate::webhook::WebhookRequest {
        url,
        events: events.unwrap_or_else(|| vec![crate::webhook::WebhookEvent::Completed]),
    };
    hook.checked(config.webhook_policy)
}

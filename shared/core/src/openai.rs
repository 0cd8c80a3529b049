//! The OpenAI-compatible API's shapes, on ordinary Ferry jobs: a request of OpenAI's
//! (`/chat/completions`, `/completions`, `/embeddings`) becomes a native submit body
//! ([`OpenAiCall::native_body`], then [`crate::submit::parse_submit`] validates it as any
//! submit: one set of bounds), and a finished job's output becomes OpenAI's response
//! ([`chat_response`], [`completion_response`], [`embeddings_response`]); token events become
//! stream chunks ([`OpenAiCall::chunk`]). Fields Ferry cannot honour (tools, `n` > 1,
//! penalties, top log-probabilities, ...) are refused with 400 naming the parameter, never
//! ignored. Errors take OpenAI's shape ([`OpenAiError`]).
//!
//! Defaults are OpenAI's: `temperature` 1 (sampling), `max_tokens` 16 on `/completions`;
//! Ferry's own params ride along where OpenAI has none (`top_k`, `repetition_penalty`,
//! `timeout_s`, `webhook`, as a client's `extra_body`).

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::job::{Job, Task};

/// Which route a call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

/// An OpenAI request, checked.
#[derive(Debug, Clone)]
pub struct OpenAiCall {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// Chat `logprobs: true`.
    pub logprobs: bool,
    /// Embeddings `encoding_format: base64`.
    pub base64: bool,
    native: Value,
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl OpenAiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        OpenAiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    fn unsupported(param: &str, what: &str) -> Self {
        let mut e = OpenAiError::invalid(param, format!("{param}: {what} is not supported by Ferry"));
        e.code = Some("unsupported_parameter".into());
        e
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }

    /// A Ferry API error as OpenAI's: validation errors (400 and 422) are 400
    /// `invalid_request_error` with the field named as the OpenAI parameter it came from.
    pub fn from_api(e: &ApiError, endpoint: Endpoint) -> Self {
        let status = e.status.as_u16();
        let (status, kind) = match status {
            400 | 422 => (400, "invalid_request_error"),
            401 => (401, "authentication_error"),
            403 => (403, "permission_error"),
            404 => (404, "not_found_error"),
            409 => (409, "conflict_error"),
            413 => (413, "invalid_request_error"),
            429 => (429, "rate_limit_error"),
            s if s >= 500 => (s, "server_error"),
            s => (s, "invalid_request_error"),
        };
        OpenAiError {
            status,
            message: e.message.clone(),
            kind,
            param: e.field.as_deref().map(|f| openai_param(f, endpoint)),
            code: None,
        }
    }
}

/// The OpenAI parameter a native field came from.
fn openai_param(field: &str, endpoint: Endpoint) -> String {
    let renamed = [
        ("input.messages", "messages"),
        ("input.prompt", "prompt"),
        ("input.texts", "input"),
        ("params.max_new_tokens", "max_tokens"),
        ("params.", ""),
        ("input", if endpoint == Endpoint::Embeddings { "input" } else { "messages" }),
    ];
    for (from, to) in renamed {
        if let Some(rest) = field.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    field.to_string()
}

/// Fields Ferry refuses when set to anything but their no-op value.
const REFUSED: &[(&str, &str)] = &[
    ("tools", "tool calling"),
    ("tool_choice", "tool calling"),
    ("functions", "function calling"),
    ("function_call", "function calling"),
    ("parallel_tool_calls", "tool calling"),
    ("logit_bias", "logit_bias"),
    ("audio", "audio output"),
    ("modalities", "modalities other than text"),
    ("prediction", "predicted outputs"),
    ("response_format", "structured output"),
    ("suffix", "suffix"),
    ("web_search_options", "web search"),
    ("reasoning_effort", "reasoning_effort"),
];

impl OpenAiCall {
    /// Reads a request body for `endpoint`.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<OpenAiCall, OpenAiError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| OpenAiError::invalid("body", format!("malformed JSON: {e}")))?;
        let Value::Object(req) = value else { return Err(OpenAiError::invalid("body", "expected a JSON object")) };
        let known: &[&str] = match endpoint {
            Endpoint::Chat => &[
                "model",
                "messages",
                "max_tokens",
                "max_completion_tokens",
                "temperature",
                "top_p",
                "stop",
                "seed",
                "stream",
                "stream_options",
                "logprobs",
                "top_logprobs",
                "n",
                "presence_penalty",
                "frequency_penalty",
                "user",
                "top_k",
                "repetition_penalty",
                "timeout_s",
                "webhook",
            ],
            Endpoint::Completions => &[
                "model",
                "prompt",
                "max_tokens",
                "temperature",
                "top_p",
                "stop",
                "seed",
                "stream",
                "stream_options",
                "logprobs",
                "n",
                "best_of",
                "echo",
                "presence_penalty",
                "frequency_penalty",
                "user",
                "top_k",
                "repetition_penalty",
                "timeout_s",
                "webhook",
            ],
            Endpoint::Embeddings => {
                &["model", "input", "encoding_format", "dimensions", "user", "timeout_s", "webhook"]
            }
        };
        for (key, value) in &req {
            if let Some((_, what)) = REFUSED.iter().find(|(k, _)| k == key) {
                let off = value.is_null() || (key == "response_format" && value["type"] == "text");
                if !off {
                    return Err(OpenAiError::unsupported(key, what));
                }
            } else if !known.contains(&key.as_str()) {
                return Err(OpenAiError::invalid(key, format!("unknown parameter {key}")));
            }
        }
        let model = match req.get("model") {
            Some(Value::String(m)) => m.clone(),
            _ => return Err(OpenAiError::invalid("model", "model is required: a model id from GET /models")),
        };
        let flag = |key: &str| -> Result<bool, OpenAiError> {
            match req.get(key) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(OpenAiError::invalid(key, format!("{key} must be a boolean"))),
            }
        };
        let stream = flag("stream")?;
        let include_usage = match req.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) if stream => o.get("include_usage").and_then(Value::as_bool).unwrap_or(false),
            Some(_) => return Err(OpenAiError::invalid("stream_options", "stream_options is only for stream: true")),
        };
        for key in ["n", "best_of"] {
            if req.get(key).is_some_and(|v| !v.is_null() && v.as_u64() != Some(1)) {
                return Err(OpenAiError::unsupported(key, "more than one choice"));
            }
        }
        for key in ["presence_penalty", "frequency_penalty"] {
            if req.get(key).is_some_and(|v| !v.is_null() && v.as_f64() != Some(0.0)) {
                return Err(OpenAiError::unsupported(key, "a nonzero penalty (Ferry has repetition_penalty)"));
            }
        }
        if req.get("echo").is_some_and(|v| v.as_bool() == Some(true)) {
            return Err(OpenAiError::unsupported("echo", "echoing the prompt"));
        }
        let mut logprobs = false;
        match endpoint {
            Endpoint::Chat => {
                logprobs = flag("logprobs")?;
                if req.get("top_logprobs").is_some_and(|v| !v.is_null() && v.as_u64() != Some(0)) {
                    return Err(OpenAiError::unsupported("top_logprobs", "alternatives' log-probabilities"));
                }
            }
            Endpoint::Completions => {
                if req.get("logprobs").is_some_and(|v| !v.is_null() && v.as_u64() != Some(0)) {
                    return Err(OpenAiError::unsupported("logprobs", "alternatives' log-probabilities"));
                }
            }
            Endpoint::Embeddings => {}
        }
        let base64 = match req.get("encoding_format").map(|v| v.as_str()) {
            None | Some(Some("float")) => false,
            Some(Some("base64")) => true,
            Some(_) => return Err(OpenAiError::invalid("encoding_format", "encoding_format is float or base64")),
        };
        if endpoint == Endpoint::Embeddings && req.get("dimensions").is_some_and(|v| !v.is_null()) {
            return Err(OpenAiError::unsupported("dimensions", "shortening embeddings"));
        }
        let native = native_body(endpoint, &req, &model, logprobs)?;
        Ok(OpenAiCall { endpoint, model, stream, include_usage, logprobs, base64, native })
    }

    /// The native submit body (`{"model", "input", "params", "timeout_s"?}`).
    pub fn native_body(&self) -> Vec<u8> {
        self.native.to_string().into_bytes()
    }

    /// The task the endpoint needs of its model.
    pub fn task(&self) -> Task {
        match self.endpoint {
            Endpoint::Embeddings => Task::Embeddings,
            _ => Task::TextGeneration,
        }
    }

    pub fn id(&self, job: &Job) -> String {
        let prefix = match self.endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
            Endpoint::Embeddings => "emb",
        };
        format!("{prefix}-{}", job.id)
    }

    /// A streamed chunk: `delta` text (the first chunk also names the role), or the last,
    /// with the finish reason.
    pub fn chunk(
        &self,
        job: &Job,
        text: Option<&str>,
        first: bool,
        finish: Option<&str>,
        logprob: Option<Value>,
    ) -> Value {
        let (object, choice) = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if first {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                let logprobs = logprob.map(|l| json!({"content": [l]})).unwrap_or(Value::Null);
                (
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}),
                )
            }
            _ => (
                "text_completion",
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null}),
            ),
        };
        json!({"id": self.id(job), "object": object, "created": job.created_at / 1000, "model": self.model,
               "choices": [choice]})
    }

    /// The usage-only chunk that ends a stream with `include_usage`.
    pub fn usage_chunk(&self, job: &Job, output: &Value) -> Value {
        let object = if self.endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": self.id(job), "object": object, "created": job.created_at / 1000, "model": self.model,
               "choices": [], "usage": usage(output)})
    }
}

fn native_body(
    endpoint: Endpoint,
    req: &Map<String, Value>,
    model: &str,
    logprobs: bool,
) -> Result<Value, OpenAiError> {
    let mut params = Map::new();
    let copy = |params: &mut Map<String, Value>, from: &str, to: &str| {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            params.insert(to.into(), v.clone());
        }
    };
    let input = match endpoint {
        Endpoint::Chat => {
            let Some(Value::Array(messages)) = req.get("messages") else {
                return Err(OpenAiError::invalid("messages", "messages is required: an array of {role, content}"));
            };
            let messages =
                messages.iter().enumerate().map(|(i, m)| chat_message(i, m)).collect::<Result<Vec<_>, _>>()?;
            json!({"messages": messages})
        }
        Endpoint::Completions => match req.get("prompt") {
            Some(Value::String(p)) => json!({"prompt": p}),
            Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => json!({"prompt": items[0]}),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                return Err(OpenAiError::unsupported("prompt", "more than one prompt per request"));
            }
            Some(Value::Array(_)) => return Err(OpenAiError::unsupported("prompt", "a prompt of token ids")),
            _ => return Err(OpenAiError::invalid("prompt", "prompt is required: a string")),
        },
        Endpoint::Embeddings => match req.get("input") {
            Some(Value::String(s)) => json!({"texts": [s]}),
            Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_string) => {
                json!({"texts": items})
            }
            Some(Value::Array(items)) if !items.is_empty() => {
                return Err(OpenAiError::unsupported("input", "inputs of token ids"));
            }
            _ => return Err(OpenAiError::invalid("input", "input is required: a string or an array of strings")),
        },
    };
    if endpoint != Endpoint::Embeddings {
        // OpenAI's defaults: sampling at temperature 1; 16 tokens for /completions.
        params.insert(
            "temperature".into(),
            req.get("temperature").filter(|v| !v.is_null()).cloned().unwrap_or(json!(1.0)),
        );
        copy(&mut params, "max_tokens", "max_new_tokens");
        copy(&mut params, "max_completion_tokens", "max_new_tokens");
        if endpoint == Endpoint::Completions && !params.contains_key("max_new_tokens") {
            params.insert("max_new_tokens".into(), json!(16));
        }
        for key in ["top_p", "stop", "seed", "top_k", "repetition_penalty"] {
            copy(&mut params, key, key);
        }
        if logprobs {
            params.insert("logprobs".into(), json!(true));
        }
    }
    let mut body = json!({"model": model, "input": input});
    if !params.is_empty() {
        body["params"] = Value::Object(params);
    }
    if let Some(t) = req.get("webhook").filter(|v| !v.is_null()) {
        body["webhook"] = t.clone();
    }
    if let Some(t) = req.get("timeout_s").filter(|v| !v.is_null()) {
        body["timeout_s"] = t.clone();
    }
    Ok(body)
}

/// An OpenAI message as Ferry's `{role, content}`: `developer` is a system message; content
/// may be text parts (`[{"type": "text", "text"}]`), joined.
fn chat_message(i: usize, m: &Value) -> Result<Value, OpenAiError> {
    let at = format!("messages[{i}]");
    let role = match m["role"].as_str() {
        Some("developer") => "system",
        Some(r @ ("system" | "user" | "assistant")) => r,
        Some(r @ ("tool" | "function")) => {
            return Err(OpenAiError::unsupported(&format!("{at}.role"), &format!("the {r} role")));
        }
        _ => return Err(OpenAiError::invalid(&format!("{at}.role"), "role is system, developer, user or assistant")),
    };
    for key in m.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
        if !["role", "content", "name"].contains(&key.as_str()) && !m[&key].is_null() {
            return Err(OpenAiError::unsupported(&format!("{at}.{key}"), &key));
        }
    }
    let content = match &m["content"] {
        Value::String(s) => s.clone(),
        Value::Null if role == "assistant" => String::new(),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(OpenAiError::unsupported(&format!("{at}.content[{j}]"), "content other than text"));
                    }
                }
            }
            text
        }
        _ => return Err(OpenAiError::invalid(&format!("{at}.content"), "content is a string or text parts")),
    };
    Ok(json!({"role": role, "content": content}))
}

/// OpenAI's finish reason for Ferry's.
pub fn finish_reason(output: &Value) -> &'static str {
    match output["details"]["finish_reason"].as_str() {
        Some("length") => "length",
        _ => "stop",
    }
}

fn usage(output: &Value) -> Value {
    let prompt = output["details"]["prompt_tokens"].as_u64().unwrap_or(0);
    let completion = output["details"]["generated_tokens"].as_u64().unwrap_or(0);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// One token's entry of chat `logprobs.content`.
pub fn token_logprob(text: &str, logprob: f64) -> Value {
    json!({"token": text, "logprob": logprob, "bytes": text.as_bytes(), "top_logprobs": []})
}

/// `/chat/completions`' response for a finished job's output; `token_texts` are the
/// generated tokens' texts (from the job's token events), for `logprobs`.
pub fn chat_response(call: &OpenAiCall, job: &Job, output: &Value, token_texts: &[String]) -> Value {
    let logprobs = if call.logprobs {
        let lps = output["logprobs"].as_array().cloned().unwrap_or_default();
        let content: Vec<Value> = lps
            .iter()
            .enumerate()
            .map(|(i, lp)| {
                token_logprob(token_texts.get(i).map(String::as_str).unwrap_or(""), lp.as_f64().unwrap_or(0.0))
            })
            .collect();
        json!({"content": content})
    } else {
        Value::Null
    };
    json!({
        "id": call.id(job), "object": "chat.completion", "created": job.created_at / 1000, "model": call.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": output["text"]},
                     "finish_reason": finish_reason(output), "logprobs": logprobs}],
        "usage": usage(output),
    })
}

/// `/completions`' response for a finished job's output.
pub fn completion_response(call: &OpenAiCall, job: &Job, output: &Value) -> Value {
    json!({
        "id": call.id(job), "object": "text_completion", "created": job.created_at / 1000, "model": call.model,
        "choices": [{"index": 0, "text": output["text"], "finish_reason": finish_reason(output), "logprobs": null}],
        "usage": usage(output),
    })
}

/// `/embeddings`' response for a finished job's output (`token_counts`: each text's tokens
/// when known, for `usage`).
pub fn embeddings_response(call: &OpenAiCall, output: &Value) -> Value {
    let vectors = output["embeddings"].as_array().cloned().unwrap_or_default();
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if call.base64 {
                let bytes: Vec<u8> = v
                    .as_array()
                    .map(|a| a.iter().flat_map(|x| (x.as_f64().unwrap_or(0.0) as f32).to_le_bytes()).collect())
                    .unwrap_or_default();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                v.clone()
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens = output["tokens"].as_u64().unwrap_or(0);
    json!({"object": "list", "data": data, "model": call.model,
           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

/// `GET /models`.
pub fn models_response(models: &[(String, Task)], created: u64) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|(id, task)| json!({"id": id, "object": "model", "created": created, "owned_by": "ferry", "task": task.as_str()}))
        .collect();
    json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<OpenAiCall, OpenAiError> {
        OpenAiCall::parse(Endpoint::Chat, body.to_string().as_bytes())
    }

    #[test]
    fn a_webhook_rides_along_to_the_native_submit() {
        let hook = json!({"url": "https://example.com/h", "events": ["started"]});
        for endpoint in [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings] {
            let body = match endpoint {
                Endpoint::Chat => {
                    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "webhook": hook})
                }
                Endpoint::Completions => json!({"model": "m", "prompt": "hi", "webhook": hook}),
                Endpoint::Embeddings => json!({"model": "m", "input": "hi", "webhook": hook}),
            };
            let call = OpenAiCall::parse(endpoint, body.to_string().as_bytes()).unwrap();
            let native: Value = serde_json::from_slice(&call.native_body()).unwrap();
            assert_eq!(native["webhook"], hook, "{endpoint:?}");
        }
    }

    #[test]
    fn a_chat_request_becomes_a_native_submit() {
        let call = chat(json!({"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]}, {"role": "user", "content": "hi"}],
                               "max_tokens": 5, "stop": "x", "seed": 3, "logprobs": true, "stream": true, "stream_options": {"include_usage": true}}))
        .unwrap();
        assert!(call.stream && call.include_usage && call.logprobs);
        let native: Value = serde_json::from_slice(&call.native_body()).unwrap();
        assert_eq!(
            native,
            json!({"model": "m", "input": {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
                   "params": {"temperature": 1.0, "max_new_tokens": 5, "stop": "x", "seed": 3, "logprobs": true}})
        );
    }

    #[test]
    fn what_ferry_cannot_honour_is_refused_naming_the_parameter() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (key, value) in [
            ("tools", json!([{"type": "function"}])),
            ("n", json!(2)),
            ("top_logprobs", json!(3)),
            ("presence_penalty", json!(0.5)),
            ("response_format", json!({"type": "json_object"})),
            ("logit_bias", json!({"1": 5})),
            ("nonsense", json!(1)),
        ] {
            let mut body = base();
            body[key] = value;
            let e = chat(body).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(key)), "{key}: {e:?}");
        }
        // Their no-op values are fine.
        let mut body = base();
        body["n"] = json!(1);
        body["tools"] = Value::Null;
        body["response_format"] = json!({"type": "text"});
        body["presence_penalty"] = json!(0);
        assert!(chat(body).is_ok());
        let e = chat(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = chat(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
    }

    #[test]
    fn native_fields_are_named_as_openai_parameters() {
        let api = ApiError::invalid("params.max_new_tokens", "too many");
        assert_eq!(OpenAiError::from_api(&api, Endpoint::Chat).param.as_deref(), Some("max_tokens"));
        let api = ApiError::invalid("input.messages[2].content", "bad");
        assert_eq!(OpenAiError::from_api(&api, Endpoint::Chat).param.as_deref(), Some("messages[2].content"));
        let api = ApiError::invalid("input.texts[1]", "empty");
        assert_eq!(OpenAiError::from_api(&api, Endpoint::Embeddings).param.as_deref(), Some("input[1]"));
        let e = OpenAiError::from_api(&api, Endpoint::Embeddings);
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        assert_eq!(e.status, 400);
    }

    #[test]
    fn completions_default_to_sixteen_tokens_and_embeddings_take_strings() {
        let call = OpenAiCall::parse(Endpoint::Completions, br#"{"model": "m", "prompt": ["once"]}"#).unwrap();
        let native: Value = serde_json::from_slice(&call.native_body()).unwrap();
        assert_eq!(native["params"]["max_new_tokens"], 16);
        assert_eq!(native["input"], json!({"prompt": "once"}));
        let call =
            OpenAiCall::parse(Endpoint::Embeddings, br#"{"model": "e", "input": "x", "encoding_format": "base64"}"#)
                .unwrap();
        assert!(call.base64);
        let native: Value = serde_json::from_slice(&call.native_body()).unwrap();
        assert_eq!(native, json!({"model": "e", "input": {"texts": ["x"]}}));
        let e = OpenAiCall::parse(Endpoint::Embeddings, br#"{"model": "e", "input": [[1, 2]]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
    }
}

//! Chat messages rendered with a model's own chat template, the way transformers'
//! `apply_chat_template(messages, add_generation_prompt=True)` renders them: the template
//! (`chat_template.jinja` beside the model, else `tokenizer_config.json`'s `chat_template`)
//! in a Jinja engine with `trim_blocks` and `lstrip_blocks` on, Python's string methods
//! (`.strip()`, `.startswith()`, `.split()`, ... through minijinja's pycompat layer),
//! `raise_exception`, `strftime_now`, a Python-style `tojson`, and the variables transformers
//! passes: `messages`, `add_generation_prompt`, `tools` and `documents` (none), and the
//! tokenizer's special tokens (`bos_token`, `eos_token`, ...). The text it renders is then
//! tokenized *without* adding special tokens: the template writes BOS itself where the model
//! wants it.
//!
//! The API renders a chat at submit (so a template's `raise_exception` is a 422 naming
//! `input.messages` before anything is queued); the executor renders it again from the
//! model's own files before tokenizing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use minijinja::{Environment, Error, ErrorKind, Value as JValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// Why a chat could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The template's own `raise_exception` refused the messages (a role order it does not
    /// support, a system message it has no place for): the caller's input.
    #[error("the model's chat template refuses these messages: {0}")]
    Refused(String),
    /// The template failed for another reason (a syntax error, an unknown filter): the model's.
    #[error("the model's chat template cannot be rendered: {0}")]
    Template(String),
    /// The model's files hold no usable template.
    #[error("{path}: {message}")]
    Files { path: PathBuf, message: String },
}

/// A model's chat template and the special tokens it may write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTemplate {
    /// The Jinja source.
    pub template: String,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token`, ... as the tokenizer config names
    /// them (the template sees each under its name).
    #[serde(default)]
    pub special_tokens: BTreeMap<String, String>,
}

impl ChatTemplate {
    /// The template of a model directory: `chat_template.jinja` when present, else
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates, of
    /// which `default` is taken); `None` when the model has none. The special tokens come
    /// from `tokenizer_config.json` (strings or `{"content": ...}` objects).
    pub fn from_dir(dir: &Path) -> Result<Option<ChatTemplate>, ChatError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| ChatError::Files { path: config_path.clone(), message: format!("not valid JSON: {e}") })?,
            Err(_) => Value::Null,
        };
        let jinja = dir.join("chat_template.jinja");
        let template = match std::fs::read_to_string(&jinja) {
            Ok(t) => Some(t),
            Err(_) => match &config["chat_template"] {
                Value::String(t) => Some(t.clone()),
                Value::Array(named) => named
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                _ => None,
            },
        };
        let Some(template) = template else { return Ok(None) };
        let mut special_tokens = BTreeMap::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"] {
            let token = match &config[key] {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
                _ => None,
            };
            if let Some(t) = token {
                special_tokens.insert(key.to_string(), t);
            }
        }
        ChatTemplate { template, special_tokens }.checked(dir).map(Some)
    }

    /// The template of a GGUF model: its directory's files when they hold one (as
    /// [`ChatTemplate::from_dir`]), else the file's own `tokenizer.chat_template`, with the
    /// special tokens its `tokenizer.ggml.*_token_id` keys name.
    pub fn from_gguf(file: &Path) -> Result<Option<ChatTemplate>, ChatError> {
        let dir = crate::gguf::files_dir(file);
        if let Some(chat) = ChatTemplate::from_dir(&dir)? {
            return Ok(Some(chat));
        }
        let meta = crate::gguf::GgufMeta::read(file)
            .map_err(|e| ChatError::Files { path: file.to_owned(), message: e.to_string() })?;
        let Some(template) = meta.get("tokenizer.chat_template").and_then(|v| v.as_str()) else { return Ok(None) };
        let mut special_tokens = BTreeMap::new();
        for name in ["bos", "eos", "unk", "pad", "sep", "cls", "mask"] {
            if let Some(token) = meta.token(&format!("tokenizer.ggml.{name}_token_id")) {
                special_tokens.insert(format!("{name}_token"), token.to_string());
            }
        }
        ChatTemplate { template: template.to_string(), special_tokens }.checked(file).map(Some)
    }

    /// Itself, once its template parses: one that does not is the model's fault, said at load.
    fn checked(self, path: &Path) -> Result<ChatTemplate, ChatError> {
        self.environment(Arc::default())
            .template_from_str(&self.template)
            .map_err(|e| ChatError::Files { path: path.to_owned(), message: format!("the chat template: {e}") })?;
        Ok(self)
    }

    /// The prompt text for `messages`, ending with the assistant's turn begun
    /// (`add_generation_prompt`).
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ChatError> {
        let raised = Arc::new(Mutex::new(None));
        let env = self.environment(raised.clone());
        let template = env.template_from_str(&self.template).map_err(|e| ChatError::Template(e.to_string()))?;
        let mut ctx: BTreeMap<String, JValue> =
            self.special_tokens.iter().map(|(k, v)| (k.clone(), JValue::from(v.as_str()))).collect();
        ctx.insert("messages".into(), JValue::from(minijinja::value::Serde(messages)));
        ctx.insert("add_generation_prompt".into(), JValue::from(true));
        ctx.insert("tools".into(), JValue::from(()));
        ctx.insert("documents".into(), JValue::from(()));
        template.render(ctx).map_err(|e| match raised.lock().expect("not poisoned").take() {
            Some(message) => ChatError::Refused(message),
            None => ChatError::Template(e.to_string()),
        })
    }

    fn environment(&self, raised: Arc<Mutex<Option<String>>>) -> Environment<'static> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
        env.set_syntax(syntax.expect("the default delimiters are valid"));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", move |message: String| -> Result<JValue, Error> {
            *raised.lock().expect("not poisoned") = Some(message.clone());
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_filter("tojson", tojson);
        env
    }
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False)` (", " and ": "
/// separators), or indented with `indent=N`; no HTML escaping.
fn tojson(value: JValue, kwargs: minijinja::value::Kwargs) -> Result<JValue, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json =
        serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(JValue::from_safe_string(out))
}

fn python_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Python's `datetime.now().strftime(format)` for the directives templates use (UTC).
fn strftime_now(format: &str) -> Result<String, Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let now = time::OffsetDateTime::now_utc();
    let month = MONTHS[now.month() as usize - 1];
    let day = DAYS[now.weekday().number_days_from_monday() as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{:02}", now.day())),
            Some('m') => out.push_str(&format!("{:02}", now.month() as u8)),
            Some('Y') => out.push_str(&now.year().to_string()),
            Some('y') => out.push_str(&format!("{:02}", now.year() % 100)),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&day[..3]),
            Some('A') => out.push_str(day),
            Some('H') => out.push_str(&format!("{:02}", now.hour())),
            Some('M') => out.push_str(&format!("{:02}", now.minute())),
            Some('S') => out.push_str(&format!("{:02}", now.second())),
            Some('j') => out.push_str(&format!("{:03}", now.ordinal())),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: the directive %{} is not supported",
                        other.map(String::from).unwrap_or_default()
                    ),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(template: &str) -> ChatTemplate {
        let special_tokens = [("bos_token".to_string(), "<s>".to_string())].into();
        ChatTemplate { template: template.into(), special_tokens }
    }

    fn user(content: &str) -> ChatMessage {
        ChatMessage { role: Role::User, content: content.into() }
    }

    #[test]
    fn renders_with_python_string_methods_and_trimmed_blocks() {
        let t = chat(
            "{{ bos_token }}{% for m in messages %}\n  {{ m.role.upper() }}: {{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}ASSISTANT:{% endif %}",
        );
        // As jinja2: the newlines after block tags go, and the indentation before them only.
        assert_eq!(t.render(&[user("  hi  ")]).unwrap(), "<s>  USER: hi\nASSISTANT:");
    }

    #[test]
    fn raise_exception_is_the_callers_refusal_and_other_failures_the_templates() {
        let t = chat(
            "{% if messages[0].role != 'system' %}{{ raise_exception('a system message comes first') }}{% endif %}",
        );
        assert_eq!(t.render(&[user("x")]), Err(ChatError::Refused("a system message comes first".into())));
        let t = chat("{{ messages | no_such_filter }}");
        assert!(matches!(t.render(&[user("x")]), Err(ChatError::Template(_))));
    }

    #[test]
    fn tools_is_none_and_tojson_is_pythons() {
        let t = chat("{% if tools is not none %}tools{% endif %}{{ {'a': [1, 'é<'], 'b': none} | tojson }}");
        assert_eq!(t.render(&[user("x")]).unwrap(), r#"{"a": [1, "é<"], "b": null}"#);
    }

    #[test]
    fn strftime_now_formats_todays_date() {
        let today = strftime_now("%d %b %Y").unwrap();
        assert_eq!(today.len(), 11, "{today}");
        assert!(strftime_now("%Q").is_err());
    }
}

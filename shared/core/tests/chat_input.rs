//! `messages` inputs at submit: their shape is checked field by field, and the chat is
//! rendered with the model's template when the catalog holds it, so what the template
//! refuses is a 422 naming `input.messages` before anything is queued.

use ferry_core::catalog::{Catalog, ModelSpec};
use ferry_core::chat::{ChatMessage, ChatTemplate, Role};
use ferry_core::config::Config;
use ferry_core::input::{JobInput, TextGenerationInput};
use ferry_core::submit::parse_submit;
use serde_json::{Value, json};

/// Gemma's rule, as its template writes it.
const STRICT: &str = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}\
{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}\n{% endfor %}<assistant>";

fn catalog() -> Catalog {
    let demo = Catalog::demo().get("tiny-llama").unwrap().clone();
    let with = |id: &str, template: Option<&str>, path: Option<&str>| ModelSpec {
        id: id.into(),
        path: path.map(Into::into),
        chat_template: template.map(|t| ChatTemplate { template: t.into(), special_tokens: Default::default() }),
        ..demo.clone()
    };
    Catalog {
        models: vec![
            with("strict", Some(STRICT), Some("/models/strict")),
            with("plain", None, Some("/models/plain")),
            with("remote", None, None),
        ],
    }
}

fn submit(model: &str, input: Value) -> Result<JobInput, (u16, Option<String>, String)> {
    let body = json!({"model": model, "input": input}).to_string();
    parse_submit(body.as_bytes(), &catalog(), &Config::default())
        .map(|v| v.input)
        .map_err(|e| (e.status.as_u16(), e.field, e.message))
}

fn user(content: &str) -> Value {
    json!({"role": "user", "content": content})
}

#[test]
fn a_chat_the_template_accepts_is_stored_as_messages() {
    let input =
        submit("strict", json!({"messages": [user("hi"), {"role": "assistant", "content": ""}, user("x")]})).unwrap();
    let JobInput::TextGeneration { input: TextGenerationInput::Chat { messages }, .. } = &input else {
        panic!("{input:?}")
    };
    assert_eq!(messages[0], ChatMessage { role: Role::User, content: "hi".into() });
    assert_eq!(input.input_json()["messages"][1], json!({"role": "assistant", "content": ""}));
    // An S3 model whose catalog entry has no template: the executor decides.
    assert!(submit("remote", json!({"messages": [user("hi")]})).is_ok());
}

#[test]
fn what_the_template_refuses_is_a_422_naming_the_messages() {
    let (status, field, message) =
        submit("strict", json!({"messages": [{"role": "system", "content": "be brief"}, user("hi")]})).unwrap_err();
    assert_eq!((status, field.as_deref()), (422, Some("input.messages")));
    assert!(message.contains("System role not supported"), "{message}");
    let (status, field, message) = submit("plain", json!({"messages": [user("hi")]})).unwrap_err();
    assert_eq!((status, field.as_deref()), (422, Some("input.messages")));
    assert!(message.contains("no chat template"), "{message}");
    // A prompt is fine for either.
    assert!(submit("plain", json!({"prompt": "hi"})).is_ok());
}

#[test]
fn bad_messages_name_the_field() {
    let cases = [
        (json!({"messages": []}), 422, "input.messages"),
        (json!({"messages": "hi"}), 400, "input.messages"),
        (json!({"messages": [5]}), 400, "input.messages[0]"),
        (json!({"messages": [{"role": "tool", "content": "x"}]}), 422, "input.messages[0].role"),
        (json!({"messages": [{"role": 3, "content": "x"}]}), 400, "input.messages[0].role"),
        (json!({"messages": [{"content": "x"}]}), 400, "input.messages[0].role"),
        (json!({"messages": [{"role": "user"}]}), 400, "input.messages[0].content"),
        (json!({"messages": [{"role": "user", "content": ["x"]}]}), 400, "input.messages[0].content"),
        (json!({"messages": [user("ok"), user("bell \u{7}")]}), 422, "input.messages[1].content"),
        (json!({"messages": [{"role": "user", "content": "x", "name": "bob"}]}), 400, "input.messages[0].name"),
        (json!({"prompt": "x", "messages": [user("x")]}), 422, "input"),
        (json!({}), 400, "input"),
    ];
    for (input, status, field) in cases {
        let (got, got_field, message) = submit("remote", input.clone()).unwrap_err();
        assert_eq!((got, got_field.as_deref()), (status, Some(field)), "{input}: {message}");
    }
    let many: Vec<Value> = (0..=TextGenerationInput::MAX_MESSAGES).map(|_| user("x")).collect();
    assert_eq!(submit("remote", json!({"messages": many})).unwrap_err().1.as_deref(), Some("input.messages"));
}

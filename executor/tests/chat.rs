//! Chat templates against HF transformers: real templates of seven families
//! (`fixtures/chat/*.jinja`, verbatim; `SOURCES.md`) render the conversations of
//! `chat_reference.json` (made by `make_chat_reference.py` with `apply_chat_template(...,
//! add_generation_prompt=True)`) to the same text and, tokenized without special tokens as
//! transformers does, the same ids; where the template's `raise_exception` refuses a
//! conversation, ours refuses it with the same message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry_core::chat::{ChatError, ChatMessage, ChatTemplate};
use serde_json::Value;
use tokenizers::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn real_templates_render_as_transformers_renders_them() {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("chat/chat_reference.json")).unwrap()).unwrap();
    let tokenizer = Tokenizer::from_file(fixtures().join("families/llama/tokenizer.json")).unwrap();
    let conversations = reference["conversations"].as_object().unwrap();
    let templates = reference["templates"].as_object().unwrap();
    assert_eq!(templates.len(), 7);
    let mut refused = 0;
    for (name, t) in templates {
        let special_tokens: BTreeMap<String, String> = serde_json::from_value(t["special_tokens"].clone()).unwrap();
        let template = std::fs::read_to_string(fixtures().join(format!("chat/{name}.jinja"))).unwrap();
        let chat = ChatTemplate { template, special_tokens };
        for (conv, expected) in t["cases"].as_object().unwrap() {
            let messages: Vec<ChatMessage> = serde_json::from_value(conversations[conv].clone()).unwrap();
            let got = chat.render(&messages);
            if let Some(message) = expected["raises"].as_str() {
                assert_eq!(got, Err(ChatError::Refused(message.into())), "{name}/{conv}");
                refused += 1;
                continue;
            }
            let text = got.unwrap_or_else(|e| panic!("{name}/{conv}: {e}"));
            assert_eq!(text, expected["text"].as_str().unwrap(), "{name}/{conv}");
            let ids = tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            let want: Vec<u32> = serde_json::from_value(expected["ids"].clone()).unwrap();
            assert_eq!(ids, want, "{name}/{conv}");
        }
    }
    assert!(refused >= 4, "the fixtures exercise raise_exception");
}

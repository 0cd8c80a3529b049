//! The OpenAI-compatible API of the real `ferry dev`, through the official `openai` Python
//! client from PyPI (`openai/client_checks.py`; `.ci/run` installs the pinned version): chat
//! non-streamed and streamed (tokens arrive while the job runs; a client that goes away
//! cancels its job), log-probabilities, completions, embeddings equal to the native API's,
//! models, `Idempotency-Key`, and errors in OpenAI's shape naming the parameter.

mod common;

use std::process::Command;

use ferry_executor::testing::ScratchDir;
use ferry_executor::tiny::{TINY_CONFIG, TinyConfig, write_llama};

#[test]
fn the_official_openai_client_works_against_ferry_dev() {
    let Ok(minilm) = std::env::var("FERRY_MINILM_DIR") else {
        assert!(std::env::var_os("CI").is_none(), "CI sets FERRY_MINILM_DIR");
        eprintln!("skipped: FERRY_MINILM_DIR is not set");
        return;
    };
    let has_client = Command::new("python3").args(["-c", "import openai"]).status().is_ok_and(|s| s.success());
    if !has_client {
        assert!(std::env::var_os("CI").is_none(), "CI installs the openai client");
        eprintln!("skipped: the openai Python package is not installed");
        return;
    }
    // A context long enough for a stream that is still running when the client leaves.
    let dir = ScratchDir::new("ferry-openai-model").unwrap();
    let shape = TinyConfig { max_position_embeddings: 4096, hidden_size: 128, num_hidden_layers: 4, ..TINY_CONFIG };
    write_llama(dir.path(), 7, shape).unwrap();
    let chat = format!("tiny-chat={}", dir.path().display());
    let embed = format!("all-minilm-l6-v2={minilm}");
    let dev = common::spawn_dev(&["--model", &chat, "--model", &embed, "--api-key", "k-openai=acme"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai/client_checks.py");
    let out = Command::new("python3")
        .args([script, &dev.http, "k-openai", "tiny-chat", "all-minilm-l6-v2"])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for check in
        ["models", "chat", "chat stream", "stream tokens before the end", "completions", "embeddings", "errors"]
    {
        assert!(stdout.contains(&format!("ok {check}")), "{check} did not run: {stdout}");
    }
}

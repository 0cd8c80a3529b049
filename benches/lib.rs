//! Shared helpers for the benchmarks live in the bench targets themselves, but for what
//! several of them must agree on.

use ferry_executor::tiny::TinyConfig;

/// The 24M-parameter Llama shape of the engine benchmarks (`small-h512-l8`): hidden 512,
/// 8 layers, 8 heads over 4 key/value heads, intermediate 1376 (random weights, written by
/// `ferry_executor::tiny::write_llama` with seed 1).
pub const SMALL_H512_L8: TinyConfig = TinyConfig {
    hidden_size: 512,
    intermediate_size: 1376,
    num_hidden_layers: 8,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    max_position_embeddings: 512,
};

/// The bench binary's arguments (without cargo's `--bench`).
pub fn args() -> Vec<String> {
    std::env::args().skip(1).filter(|a| a != "--bench").collect()
}

/// The value after `name` in `args`.
pub fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// `--models DIR`, else `$TMPDIR/ferry-bench-models`: where the benches write their models.
pub fn models_dir(args: &[String]) -> std::path::PathBuf {
    flag(args, "--models").map(Into::into).unwrap_or_else(|| std::env::temp_dir().join("ferry-bench-models"))
}

/// The 128 sentences of `inference_sentences.txt` (the Python references read the same file).
pub fn sentences() -> Vec<String> {
    include_str!("inference_sentences.txt").lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

/// `n` prompts: the first six words of each sentence, in order (cycling past 128).
pub fn prompts(n: usize) -> Vec<String> {
    let lines = sentences();
    (0..n).map(|i| lines[i % lines.len()].split_whitespace().take(6).collect::<Vec<_>>().join(" ")).collect()
}

/// Two loopback listeners for a `ferry dev` stack in a bench: the API's and the ports' (the
/// executor processes' door), with their addresses.
pub async fn dev_listeners()
-> ((tokio::net::TcpListener, std::net::SocketAddr), (tokio::net::TcpListener, std::net::SocketAddr)) {
    let bind = async || {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let addr = l.local_addr().expect("its address");
        (l, addr)
    };
    (bind().await, bind().await)
}

/// A `ferry dev` stack's options for a bench: embedded stores, no rate limit, the model in
/// `model_dir` served as `bench`.
pub fn dev_options(model_dir: &std::path::Path) -> ferry_cli::stack::StackOptions {
    let mut opts = ferry_cli::stack::StackOptions::embedded();
    opts.config.rate_limit_per_s = 0.0;
    opts.models = vec![format!("bench={}", model_dir.display())];
    opts
}

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

//! Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`): Llama with biases on the Q, K and V projections
//! (not on O), tied embeddings in the small ones, and a sliding window on the layers from
//! `max_window_layers` on when `use_sliding_window` is set (or as `layer_types` says).

use std::path::Path;

use super::ModelError;
use super::decoder::{DecoderConfig, Family, HfConfig};

pub const FAMILY: Family = Family { architecture: "Qwen2ForCausalLM", config };

fn config(c: &HfConfig, path: &Path) -> Result<DecoderConfig, ModelError> {
    let base = DecoderConfig { qkv_bias: true, o_bias: false, ..DecoderConfig::base(c, path, 10000.0)? };
    qwen_windows(base, c, path)
}

/// Qwen2's and Qwen3's sliding layers: none unless `use_sliding_window`; then `layer_types`
/// when given, else the layers from `max_window_layers` on.
pub(crate) fn qwen_windows(cfg: DecoderConfig, c: &HfConfig, path: &Path) -> Result<DecoderConfig, ModelError> {
    let window = if c.use_sliding_window.unwrap_or(false) { c.sliding_window } else { None };
    let Some(window) = window else { return Ok(cfg) };
    let types: Vec<String> = match &c.layer_types {
        Some(t) => t.clone(),
        None => {
            let from = c.max_window_layers.unwrap_or(cfg.layers);
            (0..cfg.layers).map(|i| if i >= from { "sliding_attention" } else { "full_attention" }.into()).collect()
        }
    };
    cfg.with_layer_types(&types, Some(window), path)
}

//! Qwen3 (`Qwen3ForCausalLM`): Llama with an RMSNorm over each head of Q and K before RoPE
//! (`q_norm`, `k_norm`), an explicit `head_dim` (transformers' default 128), biases only
//! when `attention_bias`, and Qwen2's optional sliding layers.

use std::path::Path;

use super::ModelError;
use super::decoder::{DecoderConfig, Family, HfConfig};
use super::qwen2::qwen_windows;

pub const FAMILY: Family = Family { architecture: "Qwen3ForCausalLM", config };

fn config(c: &HfConfig, path: &Path) -> Result<DecoderConfig, ModelError> {
    let c = HfConfig { head_dim: c.head_dim.or(Some(128)), ..c.clone() };
    let base = DecoderConfig { qk_norm: true, ..DecoderConfig::base(&c, path, 10000.0)? };
    qwen_windows(base, &c, path)
}

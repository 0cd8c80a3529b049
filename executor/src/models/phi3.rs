//! Phi-3 and Phi-3.5/4-mini (`Phi3ForCausalLM`): Llama with Q, K, V fused in `qkv_proj` and
//! gate and up in `gate_up_proj`, a sliding window on every layer when `sliding_window` is
//! set, partial rotary (`partial_rotary_factor`), and LongRoPE (`rope_scaling` of type
//! `longrope` or `su`: the short factors while a sequence is within
//! `original_max_position_embeddings`, the long ones past it, and cos/sin scaled by the
//! attention factor).
//!
//! transformers switches to the long factors when a sequence grows past the original
//! context and then recomputes the whole sequence; here the positions computed before the
//! switch keep their short-factor keys (the same only up to that length).

use std::path::Path;

use serde_json::Value;

use super::ModelError;
use super::decoder::{DecoderConfig, Family, HfConfig, Layout};

pub const FAMILY: Family = Family { architecture: "Phi3ForCausalLM", config };

fn config(c: &HfConfig, path: &Path) -> Result<DecoderConfig, ModelError> {
    // transformers 5 keeps the factor inside `rope_parameters` too.
    let partial = c
        .partial_rotary_factor
        .or_else(|| c.rope_parameters.as_ref().and_then(|p| p.get("partial_rotary_factor")).and_then(Value::as_f64));
    let c = HfConfig { partial_rotary_factor: partial, ..c.clone() };
    let base = DecoderConfig::base(&c, path, 10000.0)?;
    Ok(DecoderConfig { layout: Layout::Phi3, ..base }.with_window_everywhere(c.sliding_window))
}

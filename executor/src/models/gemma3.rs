//! Gemma 3 text (`Gemma3ForCausalLM`, the 1B and the text side of the larger ones): Gemma 2
//! with an RMSNorm (`1 + w`) over each head of Q and K, no soft-capping by default, and
//! five sliding layers to one global (`sliding_window_pattern`, default 6, or `layer_types`)
//! with their own RoPE: the sliding layers at `rope_local_base_freq` (10,000), the global
//! ones at `rope_theta` (1,000,000) with `rope_scaling` (linear in the 4B+ models); or
//! transformers 5's `rope_parameters` keyed by layer type.

use std::path::Path;

use serde_json::{Map, Value};

use super::ModelError;
use super::decoder::{DecoderConfig, Family, HfConfig, load_err, rope_freqs, rope_parameters};
use super::gemma2::gemma_base;

pub const FAMILY: Family = Family { architecture: "Gemma3ForCausalLM", config };

fn config(c: &HfConfig, path: &Path) -> Result<DecoderConfig, ModelError> {
    if c.json.get("use_bidirectional_attention").and_then(Value::as_bool) == Some(true) {
        return Err(load_err(path, "bidirectional Gemma 3 (an embedding model) is not a causal model"));
    }
    let c = HfConfig { head_dim: c.head_dim.or(Some(256)), ..c.clone() };
    let pattern = c.sliding_window_pattern.unwrap_or(6).max(1);
    let types = c.layer_types.clone().unwrap_or_else(|| {
        let kind = |i: usize| if !(i + 1).is_multiple_of(pattern) { "sliding_attention" } else { "full_attention" };
        (0..c.num_hidden_layers).map(|i| kind(i).to_string()).collect()
    });
    let base = gemma_base(&c, path, DecoderConfig::base(&c, path, 1_000_000.0)?)?;
    let nested = c.rope_parameters.as_ref().is_some_and(|p| p.get("full_attention").is_some());
    let (full, local) = if nested {
        (
            rope_parameters(&c, Some("full_attention"), 1_000_000.0),
            rope_parameters(&c, Some("sliding_attention"), 10_000.0),
        )
    } else {
        let mut local = Map::new();
        local.insert("rope_theta".into(), c.rope_local_base_freq.unwrap_or(10_000.0).into());
        (rope_parameters(&c, None, 1_000_000.0), local)
    };
    let ropes = vec![rope_freqs(&full, &base, &c, path)?, rope_freqs(&local, &base, &c, path)?];
    DecoderConfig {
        qk_norm: true,
        attn_softcap: c.defaulted("attn_logit_softcapping", f64::NAN).filter(|v| !v.is_nan()),
        final_softcap: c.defaulted("final_logit_softcapping", f64::NAN).filter(|v| !v.is_nan()),
        ropes,
        ..base
    }
    .with_layer_types(&types, Some(c.sliding_window.unwrap_or(4096)), path)
}

//! Gemma 2 (`Gemma2ForCausalLM`): embeddings times `sqrt(hidden)`, norms computing
//! `x̂ · (1 + w)` before and after both attention and the MLP, GELU (tanh) MLP, scores scaled
//! by `query_pre_attn_scalar^-1/2` and soft-capped (`attn_logit_softcapping`), logits
//! soft-capped (`final_logit_softcapping`), tied embeddings, and layers alternating a
//! sliding window (even layers) with global attention (or as `layer_types` says). Defaults
//! are transformers': head_dim 256, caps 50 and 30 (`null` turns a cap off).

use std::path::Path;

use super::ModelError;
use super::decoder::{Activation, DecoderConfig, Family, HfConfig, Layout};

pub const FAMILY: Family = Family { architecture: "Gemma2ForCausalLM", config };

fn config(c: &HfConfig, path: &Path) -> Result<DecoderConfig, ModelError> {
    let c = HfConfig { head_dim: c.head_dim.or(Some(256)), ..c.clone() };
    let types = c.layer_types.clone().unwrap_or_else(|| {
        let kind = |i: usize| if i.is_multiple_of(2) { "sliding_attention" } else { "full_attention" };
        (0..c.num_hidden_layers).map(|i| kind(i).to_string()).collect()
    });
    let base = gemma_base(&c, path, DecoderConfig::base(&c, path, 10000.0)?)?;
    DecoderConfig {
        attn_softcap: c.defaulted("attn_logit_softcapping", 50.0),
        final_softcap: c.defaulted("final_logit_softcapping", 30.0),
        ..base
    }
    .with_layer_types(&types, Some(c.sliding_window.unwrap_or(4096)), path)
}

/// What Gemma 2 and 3 share over Llama's defaults.
pub(crate) fn gemma_base(c: &HfConfig, path: &Path, base: DecoderConfig) -> Result<DecoderConfig, ModelError> {
    let act = c.hidden_activation.as_deref().or(c.hidden_act.as_deref()).unwrap_or("gelu_pytorch_tanh");
    Ok(DecoderConfig {
        layout: Layout::Gemma,
        norm_plus_one: true,
        embed_scale: Some((c.hidden_size as f64).sqrt()),
        activation: Activation::parse(act, path)?,
        tied: c.tie_word_embeddings.unwrap_or(true),
        attn_scale: c.query_pre_attn_scalar.unwrap_or(256.0).powf(-0.5),
        ..base
    })
}

//! Mistral (`MistralForCausalLM`): Llama with a sliding window on every layer
//! (`sliding_window`, none when `null`) and an explicit `head_dim` when the config gives one.

use std::path::Path;

use super::ModelError;
use super::decoder::{DecoderConfig, Family, HfConfig};

pub const FAMILY: Family = Family { architecture: "MistralForCausalLM", config };

fn config(c: &HfConfig, path: &Path) -> Result<DecoderConfig, ModelError> {
    Ok(DecoderConfig::base(c, path, 10000.0)?.with_window_everywhere(c.sliding_window))
}

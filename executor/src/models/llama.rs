//! The Llama family (`LlamaForCausalLM`: Llama 2, 3, 3.1-3.3, `rope_scaling` of type
//! `llama3` included; `attention_bias`, `mlp_bias` and an explicit `head_dim` when the
//! config sets them): the decoder's defaults ([`super::decoder`]). [`CandleReference`] is
//! candle-transformers' own batch-1 Llama, which the tests hold the batched pass to.

use std::path::Path;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::LlamaConfig;
use serde_json::Value;

use super::decoder::{self, Decoder, DecoderConfig, Family, HfConfig, load_err, read_config, weights};
use super::generate::{EngineOptions, Generator, read_json};
use super::{ModelError, Placement};

pub const FAMILY: Family = Family { architecture: "LlamaForCausalLM", config };

fn config(c: &HfConfig, path: &Path) -> Result<DecoderConfig, ModelError> {
    DecoderConfig::base(c, path, 10000.0)
}

/// Loads a Hugging Face Llama directory onto `placement` and starts its engine with the
/// device's default options.
pub fn load(dir: &Path, placement: &Placement) -> Result<Generator, ModelError> {
    load_with(dir, placement, EngineOptions::for_device(&placement.device))
}

/// [`load`] with the engine's options given.
pub fn load_with(dir: &Path, placement: &Placement, options: EngineOptions) -> Result<Generator, ModelError> {
    decoder::load(dir, placement, options, &FAMILY)
}

/// The batched forward pass alone (no engine); also `config.json` as JSON.
pub fn decoder(dir: &Path, placement: &Placement) -> Result<(Decoder, Value), ModelError> {
    Decoder::load(dir, placement, &FAMILY)
}

/// candle-transformers' own Llama, batch 1 with its own cache: the reference the batched
/// pass is tested against. Not used to serve jobs.
pub struct CandleReference {
    model: candle_transformers::models::llama::Llama,
    cache: candle_transformers::models::llama::Cache,
    device: candle_core::Device,
}

impl CandleReference {
    pub fn load(dir: &Path, placement: &Placement) -> Result<CandleReference, ModelError> {
        let path = dir.join("config.json");
        let llama_config: LlamaConfig = serde_json::from_value(read_json(&path)?)
            .map_err(|e| load_err(&path, format!("not a Llama config: {e}")))?;
        let config = llama_config.into_config(false);
        let (cfg, _) = read_config(dir, &FAMILY)?;
        let st = weights(dir, &cfg.expected_tensors())?;
        let vb = VarBuilder::from_backend(Box::new(st), placement.dtype, placement.device.clone());
        let model = candle_transformers::models::llama::Llama::load(vb, &config)
            .map_err(|e| ModelError::Load(format!("{}: {e}", dir.display())))?;
        let cache = candle_transformers::models::llama::Cache::new(false, placement.dtype, &config, &placement.device)
            .map_err(|e| ModelError::Load(e.to_string()))?;
        Ok(CandleReference { model, cache, device: placement.device.clone() })
    }

    /// The logits after `ids`, computed from scratch in one pass.
    pub fn next_token_logits(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let mut cache = self.cache.clone();
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&input, 0, &mut cache)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }
}

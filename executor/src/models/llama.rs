//! Text generation for the Llama family (placeholder: being written).
use std::path::Path;

use serde_json::Value;

use super::{ModelError, Placement, Progress, RunOutcome};

/// Decoding parameters of a text-generation job (`params`).
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    pub max_new_tokens: Option<u32>,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    pub repetition_penalty: f32,
    pub stop: Vec<String>,
}

impl GenParams {
    pub fn from_json(_params: &Value) -> Result<GenParams, ModelError> {
        unimplemented!()
    }
}

pub struct LlamaModel {}

impl LlamaModel {
    pub fn load(_dir: &Path, _placement: &Placement) -> Result<LlamaModel, ModelError> {
        unimplemented!()
    }

    pub fn generate(&self, _prompt: &str, _params: &GenParams, _progress: &dyn Progress) -> Result<RunOutcome, ModelError> {
        unimplemented!()
    }
}

//! Sentence embeddings for the BERT family (placeholder: being written).
use std::path::Path;

use super::{ModelError, Placement, Progress, RunOutcome};

pub struct BertEmbedder {}

impl BertEmbedder {
    pub fn load(_dir: &Path, _placement: &Placement) -> Result<BertEmbedder, ModelError> {
        unimplemented!()
    }

    pub fn embed(&self, _texts: &[String], _progress: &dyn Progress) -> Result<RunOutcome, ModelError> {
        unimplemented!()
    }
}

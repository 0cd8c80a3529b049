//! Where a decoder's weights come from ([`Weights`]): checked safetensors files
//! ([`SafeWeights`]) or a GGUF file ([`super::gguf::GgufWeights`]), both by Hugging Face's
//! tensor names, so [`super::decoder::Decoder`] builds from either the same way.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::ModelError;
use super::batch::{Dense, Embed};

/// Where a decoder's weights come from, by their Hugging Face names: safetensors files
/// ([`SafeWeights`]) or a GGUF file ([`super::gguf::GgufWeights`]).
pub trait Weights {
    /// A tensor in full precision (norm weights, biases).
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError>;
    /// The linear layers `parts` (each a name without `.weight`, and its rows) over inputs
    /// of `cols`, as one layer whose outputs are theirs side by side; with their `.bias`
    /// tensors when `bias`.
    fn dense(&self, parts: &[(&str, usize)], cols: usize, bias: bool) -> Result<Dense, ModelError>;
    /// The token embedding table.
    fn embedding(&self, name: &str, rows: usize, cols: usize) -> Result<Embed, ModelError>;
}

/// Checked safetensors files, in the placement's dtype.
pub struct SafeWeights<'a> {
    vb: VarBuilder<'a>,
}

impl<'a> SafeWeights<'a> {
    pub fn new(vb: VarBuilder<'a>) -> SafeWeights<'a> {
        SafeWeights { vb }
    }
}

impl Weights for SafeWeights<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        Ok(self.vb.get(shape, name)?)
    }

    fn dense(&self, parts: &[(&str, usize)], cols: usize, bias: bool) -> Result<Dense, ModelError> {
        let weights = parts
            .iter()
            .map(|(name, rows)| self.tensor(&format!("{name}.weight"), &[*rows, cols]))
            .collect::<Result<Vec<_>, _>>()?;
        let biases = match bias {
            true => {
                Some(parts.iter().map(|(name, rows)| self.tensor(&format!("{name}.bias"), &[*rows])).collect::<Result<
                    Vec<_>,
                    _,
                >>(
                )?)
            }
            false => None,
        };
        Ok(Dense::fused(&weights, biases.as_deref())?)
    }

    fn embedding(&self, name: &str, rows: usize, cols: usize) -> Result<Embed, ModelError> {
        Ok(Embed::Full(self.tensor(name, &[rows, cols])?))
    }
}

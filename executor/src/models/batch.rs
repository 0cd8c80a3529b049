//! A batched forward pass for the Llama family, the first piece of the continuous-batching
//! engine (issue 13): one pass serves several sequences at once. The linear layers (QKV, O,
//! the MLP and the LM head) run once over the stacked rows of every sequence's new tokens;
//! attention runs per sequence over its own KV cache, with RoPE at the sequence's own
//! positions. A sequence may bring one token (decode) or many (its prompt, or a chunk of
//! it) to the same pass. The logits are those of the batch-1 path (candle's `Llama` with
//! its cache), which `tests/batch_llama.rs` checks to 1e-4.
//!
//! Not wired into the executor yet: the engine thread that admits and evicts sequences
//! between steps is the rest of issue 13.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use candle_transformers::models::llama::{Config, Llama3RopeType, LlamaConfig};

use super::{ModelError, Placement};

fn err(e: candle_core::Error) -> ModelError {
    ModelError::Runtime(e.to_string())
}

struct Layer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// One sequence's state across passes: its KV cache per layer and how many positions it holds.
#[derive(Default)]
pub struct SeqState {
    kv: Vec<Option<(Tensor, Tensor)>>,
    pos: usize,
}

impl SeqState {
    /// Positions held (tokens fed so far).
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
}

/// A Llama that runs many sequences per forward pass.
pub struct BatchedLlama {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    context: usize,
    device: Device,
    dtype: DType,
}

impl BatchedLlama {
    /// Loads the weights of a Hugging Face Llama directory (`config.json`, safetensors).
    pub fn load(dir: &Path, placement: &Placement) -> Result<BatchedLlama, ModelError> {
        let load = |m: String| ModelError::Load(format!("{}: {m}", dir.display()));
        let text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| load(e.to_string()))?;
        let cfg: LlamaConfig = serde_json::from_str(&text).map_err(|e| load(format!("config.json: {e}")))?;
        let cfg = cfg.into_config(false);
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| load(e.to_string()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        // SAFETY: read-only mmaps, as in `LlamaModel::load`.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| load(e.to_string()))?;
        let vb = VarBuilder::from_backend(Box::new(st), placement.dtype, placement.device.clone());
        Self::from_weights(vb, &cfg, placement).map_err(|e| load(e.to_string()))
    }

    fn from_weights(vb: VarBuilder, cfg: &Config, placement: &Placement) -> candle_core::Result<BatchedLlama> {
        let (h, heads, kv_heads) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads);
        let head_dim = h / heads;
        let linear = |vb: VarBuilder, i: usize, o: usize| candle_nn::linear_no_bias(i, o, vb);
        let m = vb.pp("model");
        let embed = candle_nn::embedding(cfg.vocab_size, h, m.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = m.pp(format!("layers.{i}"));
                let a = l.pp("self_attn");
                let p = l.pp("mlp");
                Ok(Layer {
                    attn_norm: candle_nn::rms_norm(h, cfg.rms_norm_eps, l.pp("input_layernorm"))?,
                    q: linear(a.pp("q_proj"), h, heads * head_dim)?,
                    k: linear(a.pp("k_proj"), h, kv_heads * head_dim)?,
                    v: linear(a.pp("v_proj"), h, kv_heads * head_dim)?,
                    o: linear(a.pp("o_proj"), heads * head_dim, h)?,
                    mlp_norm: candle_nn::rms_norm(h, cfg.rms_norm_eps, l.pp("post_attention_layernorm"))?,
                    gate: linear(p.pp("gate_proj"), h, cfg.intermediate_size)?,
                    up: linear(p.pp("up_proj"), h, cfg.intermediate_size)?,
                    down: linear(p.pp("down_proj"), cfg.intermediate_size, h)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = candle_nn::rms_norm(h, cfg.rms_norm_eps, m.pp("norm"))?;
        let lm_head = match cfg.tie_word_embeddings {
            true => Linear::new(embed.embeddings().clone(), None),
            false => linear(vb.pp("lm_head"), h, cfg.vocab_size)?,
        };
        let (cos, sin) = rope_tables(cfg, head_dim, placement)?;
        Ok(BatchedLlama {
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            heads,
            kv_heads,
            head_dim,
            context: cfg.max_position_embeddings,
            device: placement.device.clone(),
            dtype: placement.dtype,
        })
    }

    /// A new, empty sequence.
    pub fn new_sequence(&self) -> SeqState {
        SeqState { kv: vec![None; self.layers.len()], pos: 0 }
    }

    /// One forward pass over every sequence in `batch`, each with its new tokens (at least
    /// one): appends them to its cache and returns, per sequence in order, the f32 logits
    /// for the token after its last one.
    pub fn forward(&self, batch: &mut [(&mut SeqState, &[u32])]) -> Result<Vec<Vec<f32>>, ModelError> {
        for (seq, ids) in batch.iter() {
            if ids.is_empty() || seq.pos + ids.len() > self.context {
                return Err(ModelError::invalid("ids", format!("1 to {} positions per sequence", self.context)));
            }
        }
        self.forward_rows(batch).map_err(err)
    }

    fn forward_rows(&self, batch: &mut [(&mut SeqState, &[u32])]) -> candle_core::Result<Vec<Vec<f32>>> {
        let ids: Vec<u32> = batch.iter().flat_map(|(_, ids)| ids.iter().copied()).collect();
        let lens: Vec<usize> = batch.iter().map(|(_, ids)| ids.len()).collect();
        let mut x = self.embed.forward(&Tensor::new(ids.as_slice(), &self.device)?)?; // [rows, hidden]
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let (q, k, v) = (layer.q.forward(&h)?, layer.k.forward(&h)?, layer.v.forward(&h)?);
            let mut outs = Vec::with_capacity(batch.len());
            let mut row = 0;
            for ((seq, _), &n) in batch.iter_mut().zip(&lens) {
                let take = |t: &Tensor, heads: usize| -> candle_core::Result<Tensor> {
                    // [n, heads*dim] -> [1, heads, n, dim]
                    t.narrow(0, row, n)?.reshape((1, n, heads, self.head_dim))?.transpose(1, 2)?.contiguous()
                };
                let q = self.rope(&take(&q, self.heads)?, seq.pos)?;
                let k = self.rope(&take(&k, self.kv_heads)?, seq.pos)?;
                let v = take(&v, self.kv_heads)?;
                let (k, v) = match seq.kv[li].take() {
                    Some((ck, cv)) => {
                        (Tensor::cat(&[&ck, &k], 2)?.contiguous()?, Tensor::cat(&[&cv, &v], 2)?.contiguous()?)
                    }
                    None => (k, v),
                };
                seq.kv[li] = Some((k.clone(), v.clone()));
                outs.push(self.attend(&q, &k, &v, seq.pos, n)?);
                row += n;
            }
            let attn = Tensor::cat(&outs, 0)?; // [rows, heads*dim]
            x = (x + layer.o.forward(&attn)?)?;
            let h = layer.mlp_norm.forward(&x)?;
            let mlp =
                layer.down.forward(&(candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?)?;
            x = (x + mlp)?;
        }
        // The last row of each sequence, through the final norm and the LM head at once.
        let mut last = Vec::with_capacity(batch.len());
        let mut row = 0;
        for &n in &lens {
            row += n;
            last.push(x.narrow(0, row - 1, 1)?);
        }
        let logits = self.lm_head.forward(&self.norm.forward(&Tensor::cat(&last, 0)?)?)?.to_dtype(DType::F32)?;
        for ((seq, _), &n) in batch.iter_mut().zip(&lens) {
            seq.pos += n;
        }
        logits.to_vec2::<f32>()
    }

    fn rope(&self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        let n = x.dim(2)?;
        candle_nn::rotary_emb::rope(x, &self.cos.narrow(0, pos, n)?, &self.sin.narrow(0, pos, n)?)
    }

    /// Causal attention of `n` new queries at positions `pos..pos+n` over the sequence's
    /// keys and values (`pos + n` of them), heads sharing KV groups; `[n, heads*dim]` out.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, pos: usize, n: usize) -> candle_core::Result<Tensor> {
        let groups = self.heads / self.kv_heads;
        let repeat = |t: &Tensor| -> candle_core::Result<Tensor> {
            let (b, kvh, len, d) = t.dims4()?;
            t.unsqueeze(2)?.expand((b, kvh, groups, len, d))?.reshape((b, kvh * groups, len, d))
        };
        let (q, k, v) = (q.to_dtype(DType::F32)?, repeat(k)?.to_dtype(DType::F32)?, repeat(v)?.to_dtype(DType::F32)?);
        let mut att = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?; // [1, heads, n, pos+n]
        if n > 1 {
            let total = pos + n;
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (n, total), &self.device)?;
            att = att.broadcast_add(&mask)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.to_dtype(self.dtype)?; // [1, heads, n, dim]
        y.transpose(1, 2)?.reshape((n, self.heads * self.head_dim))
    }
}

/// The RoPE cos/sin tables, [positions, head_dim / 2], with Llama 3's frequency scaling when
/// `rope_scaling` asks for it (as Hugging Face and candle compute them).
fn rope_tables(cfg: &Config, head_dim: usize, placement: &Placement) -> candle_core::Result<(Tensor, Tensor)> {
    let base: Vec<f32> =
        (0..head_dim).step_by(2).map(|i| 1f32 / cfg.rope_theta.powf(i as f32 / head_dim as f32)).collect();
    let freqs = match &cfg.rope_scaling {
        Some(s) if matches!(s.rope_type, Llama3RopeType::Llama3) => {
            let original = s.original_max_position_embeddings as f32;
            let (low, high) = (original / s.low_freq_factor, original / s.high_freq_factor);
            base.into_iter()
                .map(|f| {
                    let wavelen = 2. * std::f32::consts::PI / f;
                    if wavelen < high {
                        f
                    } else if wavelen > low {
                        f / s.factor
                    } else {
                        let smooth =
                            (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                        (1. - smooth) * f / s.factor + smooth * f
                    }
                })
                .collect()
        }
        _ => base,
    };
    let n = freqs.len();
    let freqs = Tensor::new(freqs, &placement.device)?.reshape((1, n))?;
    let positions = Tensor::arange(0, cfg.max_position_embeddings as u32, &placement.device)?
        .to_dtype(DType::F32)?
        .reshape((cfg.max_position_embeddings, 1))?;
    let angles = positions.matmul(&freqs)?;
    Ok((angles.cos()?.to_dtype(placement.dtype)?, angles.sin()?.to_dtype(placement.dtype)?))
}

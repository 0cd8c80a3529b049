//! The Llama family (`LlamaForCausalLM`: Llama 2, 3, 3.1-3.3), on candle, in the batched
//! engine ([`super::generate`]).
//!
//! [`load`] reads a Hugging Face Llama directory: `config.json` (candle's [`LlamaConfig`],
//! `rope_scaling` of type `llama3` included), the weights (`*.safetensors`, memory-mapped;
//! the files named by `model.safetensors.index.json` when there is one, else every
//! `*.safetensors` file in the directory, in name order), `tokenizer.json`, and
//! `generation_config.json` if present ([`TextSpec`]). Every missing or malformed file is a
//! [`ModelError::Load`] naming the file; the weights are checked tensor by tensor (names and
//! shapes) against the config before the model is built, so a broken checkpoint is
//! reported, not a panic. Weights are held in the placement's dtype; attention, logits and
//! sampling are computed in f32.
//!
//! [`Llama`] is the forward pass: the linear layers (QKV, O, the MLP and the LM head) run
//! once over the stacked rows of every sequence in the pass, attention per sequence over
//! its own slot of the KV cache ([`super::batch::Attention`]). [`CandleReference`] is
//! candle-transformers' own batch-1 Llama, which the tests hold it to.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Module, Tensor};
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder};
use candle_transformers::models::llama::{Config, Llama3RopeType, LlamaConfig};
use serde_json::Value;

use super::batch::{Attention, CausalLm, Dense, KvCache, StepSeq, rope_tables};
use super::generate::{EngineOptions, Generator, TextSpec, read_json};
use super::{ModelError, Placement};

fn load_err(file: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::Load(format!("{}: {message}", file.display()))
}

/// Loads a Hugging Face Llama directory onto `placement` and starts its engine with the
/// device's default options.
pub fn load(dir: &Path, placement: &Placement) -> Result<Generator, ModelError> {
    load_with(dir, placement, EngineOptions::for_device(&placement.device))
}

/// [`load`] with the engine's options given.
pub fn load_with(dir: &Path, placement: &Placement, options: EngineOptions) -> Result<Generator, ModelError> {
    let (lm, config_json) = Llama::load(dir, placement)?;
    let text = TextSpec::load(dir, &config_json)?;
    Generator::start(Arc::new(lm), text, options)
}

/// Parses and checks `config.json`; also returns it as JSON.
fn read_config(dir: &Path) -> Result<(Config, Value), ModelError> {
    if !dir.is_dir() {
        return Err(load_err(dir, "no such model directory"));
    }
    let config_path = dir.join("config.json");
    let config_json = read_json(&config_path)?;
    let llama_config: LlamaConfig = serde_json::from_value(config_json.clone())
        .map_err(|e| load_err(&config_path, format!("not a Llama config: {e}")))?;
    let config = llama_config.into_config(false);
    check_config(&config, &config_path)?;
    Ok((config, config_json))
}

/// The checked weights of `dir`, memory-mapped.
fn weights(dir: &Path, config: &Config) -> Result<MmapedSafetensors, ModelError> {
    let files = weight_files(dir)?;
    // SAFETY: the files are memory-mapped read-only; like every loader of mmaped weights we
    // rely on nobody truncating them while the model is loaded.
    let st = unsafe { MmapedSafetensors::multi(&files) }
        .map_err(|e| ModelError::Load(format!("cannot read the weights: {e}")))?;
    check_tensors(&st, config, dir)?;
    Ok(st)
}

/// The weight files: those `model.safetensors.index.json` names, else every `*.safetensors`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| load_err(&index, "has no weight_map object"))?;
        let names = map
            .values()
            .map(|f| f.as_str().map(str::to_string))
            .collect::<Option<BTreeSet<String>>>()
            .ok_or_else(|| load_err(&index, "weight_map values must be file names"))?;
        names.into_iter().map(|n| dir.join(n)).collect()
    } else {
        let entries = std::fs::read_dir(dir).map_err(|e| load_err(dir, format!("cannot list the directory: {e}")))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| load_err(dir, format!("cannot list the directory: {e}")))?.path();
            if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
                files.push(path);
            }
        }
        files
    };
    files.sort();
    if files.is_empty() {
        return Err(load_err(dir, "no *.safetensors weight files"));
    }
    Ok(files)
}

/// Rejects configurations candle would panic on or silently mis-handle.
fn check_config(c: &Config, path: &Path) -> Result<(), ModelError> {
    let bad = |m: String| Err(load_err(path, m));
    if c.hidden_size == 0 || c.num_attention_heads == 0 || c.num_key_value_heads == 0 || c.num_hidden_layers == 0 {
        return bad(
            "hidden_size, num_attention_heads, num_key_value_heads and num_hidden_layers must be positive".into()
        );
    }
    if c.vocab_size == 0 || c.max_position_embeddings == 0 || c.intermediate_size == 0 {
        return bad("vocab_size, max_position_embeddings and intermediate_size must be positive".into());
    }
    if !c.hidden_size.is_multiple_of(c.num_attention_heads)
        || !(c.hidden_size / c.num_attention_heads).is_multiple_of(2)
    {
        return bad(format!(
            "hidden_size {} must be num_attention_heads {} times an even head size",
            c.hidden_size, c.num_attention_heads
        ));
    }
    if !c.num_attention_heads.is_multiple_of(c.num_key_value_heads) {
        return bad(format!(
            "num_attention_heads {} must be a multiple of num_key_value_heads {}",
            c.num_attention_heads, c.num_key_value_heads
        ));
    }
    Ok(())
}

/// The tensors candle's Llama reads, with their shapes.
fn expected_tensors(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let head_dim = h / c.num_attention_heads;
    let (q, kv) = (head_dim * c.num_attention_heads, head_dim * c.num_key_value_heads);
    let mut out =
        vec![("model.embed_tokens.weight".to_string(), vec![v, h]), ("model.norm.weight".to_string(), vec![h])];
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.extend([
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
            (format!("{p}.mlp.gate_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![i, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, i]),
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
        ]);
    }
    out
}

fn check_tensors(st: &MmapedSafetensors, c: &Config, dir: &Path) -> Result<(), ModelError> {
    let mut missing = Vec::new();
    for (name, shape) in expected_tensors(c) {
        match st.get(&name) {
            Err(_) => missing.push(name),
            Ok(view) if view.shape() != shape.as_slice() => {
                return Err(load_err(
                    dir,
                    format!("tensor {name} has shape {:?}; config.json implies {shape:?}", view.shape()),
                ));
            }
            Ok(_) => {}
        }
    }
    if !missing.is_empty() {
        let shown = missing.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let more = if missing.len() > 5 { format!(" and {} more", missing.len() - 5) } else { String::new() };
        return Err(load_err(dir, format!("the safetensors files lack {} tensor(s): {shown}{more}", missing.len())));
    }
    Ok(())
}

struct Layer {
    attn_norm: RmsNorm,
    /// Q, K and V in one.
    qkv: Dense,
    o: Dense,
    mlp_norm: RmsNorm,
    /// Gate and up in one.
    gate_up: Dense,
    down: Dense,
    /// Widths: Q's, K's (= V's), the MLP's.
    q_width: usize,
    kv_width: usize,
    intermediate: usize,
}

/// A Llama's weights and its forward pass over many sequences at once.
pub struct Llama {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    attention: Attention,
    vocab: usize,
    context: usize,
}

impl Llama {
    /// Loads and checks `dir`'s config and weights; also returns `config.json` as JSON.
    pub fn load(dir: &Path, placement: &Placement) -> Result<(Llama, Value), ModelError> {
        let (config, json) = read_config(dir)?;
        let st = weights(dir, &config)?;
        let vb = VarBuilder::from_backend(Box::new(st), placement.dtype, placement.device.clone());
        // candle's builders can panic on shapes the checks above should already refuse; a
        // panic that slips through is still a load failure, not a crashed executor.
        let lm = catch_unwind(AssertUnwindSafe(|| Llama::from_weights(vb, &config, placement)))
            .map_err(|_| ModelError::Load(format!("{}: the weights do not fit config.json", dir.display())))?
            .map_err(|e| ModelError::Load(format!("{}: cannot build the model: {e}", dir.display())))?;
        Ok((lm, json))
    }

    fn from_weights(vb: VarBuilder, cfg: &Config, placement: &Placement) -> candle_core::Result<Llama> {
        let (h, heads, kv_heads) = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads);
        let head_dim = h / heads;
        let linear = |vb: VarBuilder, i: usize, o: usize| candle_nn::linear_no_bias(i, o, vb);
        let weight = |vb: VarBuilder, i: usize, o: usize| vb.get((o, i), "weight");
        let m = vb.pp("model");
        let embed = candle_nn::embedding(cfg.vocab_size, h, m.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = m.pp(format!("layers.{i}"));
                let (a, p) = (l.pp("self_attn"), l.pp("mlp"));
                let (q_width, kv_width, intermediate) = (heads * head_dim, kv_heads * head_dim, cfg.intermediate_size);
                Ok(Layer {
                    attn_norm: candle_nn::rms_norm(h, cfg.rms_norm_eps, l.pp("input_layernorm"))?,
                    qkv: Dense::fused(&[
                        weight(a.pp("q_proj"), h, q_width)?,
                        weight(a.pp("k_proj"), h, kv_width)?,
                        weight(a.pp("v_proj"), h, kv_width)?,
                    ])?,
                    o: Dense { weight: weight(a.pp("o_proj"), q_width, h)? },
                    mlp_norm: candle_nn::rms_norm(h, cfg.rms_norm_eps, l.pp("post_attention_layernorm"))?,
                    gate_up: Dense::fused(&[
                        weight(p.pp("gate_proj"), h, intermediate)?,
                        weight(p.pp("up_proj"), h, intermediate)?,
                    ])?,
                    down: Dense { weight: weight(p.pp("down_proj"), intermediate, h)? },
                    q_width,
                    kv_width,
                    intermediate,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = candle_nn::rms_norm(h, cfg.rms_norm_eps, m.pp("norm"))?;
        let lm_head = match cfg.tie_word_embeddings {
            true => Linear::new(embed.embeddings().clone(), None),
            false => linear(vb.pp("lm_head"), h, cfg.vocab_size)?,
        };
        let (cos, sin) =
            rope_tables(&inv_freq(cfg, head_dim), cfg.max_position_embeddings, placement.dtype, &placement.device)?;
        let attention =
            Attention { heads, kv_heads, head_dim, cos, sin, dtype: placement.dtype, device: placement.device.clone() };
        Ok(Llama {
            embed,
            layers,
            norm,
            lm_head,
            attention,
            vocab: cfg.vocab_size,
            context: cfg.max_position_embeddings,
        })
    }

    fn forward(&self, cache: &mut KvCache, seqs: &[StepSeq]) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        let plan = self.attention.plan(cache, seqs)?;
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.ids.iter().copied()).collect();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(ModelError::Runtime(format!("token id {id} is outside the vocabulary of {}", self.vocab)));
        }
        let mut x = self.embed.forward(&Tensor::new(ids.as_slice(), &self.attention.device)?)?; // [rows, hidden]
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let qkv = layer.qkv.forward(&h)?;
            let (qw, kw) = (layer.q_width, layer.kv_width);
            let (q, k, v) = (qkv.narrow(1, 0, qw)?, qkv.narrow(1, qw, kw)?, qkv.narrow(1, qw + kw, kw)?);
            let attn =
                self.attention.forward(li, &q.contiguous()?, &k.contiguous()?, &v.contiguous()?, &plan, cache)?;
            x = (x + layer.o.forward(&attn)?)?;
            // The MLP in the transposed layout ([features, rows]), so each weight is read in
            // its own order and gate and up are one matmul.
            let h = layer.mlp_norm.forward(&x)?;
            let gu = layer.gate_up.forward_t(&h)?;
            let i = layer.intermediate;
            let act = (candle_nn::ops::silu(&gu.narrow(0, 0, i)?)? * gu.narrow(0, i, i)?)?;
            x = (x + layer.down.forward_tt(&act)?.t()?)?;
        }
        let mut out = vec![None; seqs.len()];
        if plan.logit_seqs.is_empty() {
            return Ok(out);
        }
        let last = x.index_select(&plan.logit_rows, 0)?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        for (&i, l) in plan.logit_seqs.iter().zip(logits) {
            out[i] = Some(l);
        }
        Ok(out)
    }
}

impl CausalLm for Llama {
    fn context_length(&self) -> usize {
        self.context
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn new_cache(&self) -> KvCache {
        let a = &self.attention;
        KvCache::new(self.layers.len(), a.kv_heads, a.head_dim, self.context, a.dtype, &a.device)
    }

    fn step(&self, cache: &mut KvCache, seqs: &[StepSeq]) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        self.forward(cache, seqs)
    }
}

/// RoPE's inverse frequencies, with Llama 3's scaling when `rope_scaling` asks for it (as
/// transformers and candle compute them).
fn inv_freq(cfg: &Config, head_dim: usize) -> Vec<f32> {
    let base: Vec<f32> =
        (0..head_dim).step_by(2).map(|i| 1f32 / cfg.rope_theta.powf(i as f32 / head_dim as f32)).collect();
    match &cfg.rope_scaling {
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
    }
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
        let (config, _) = read_config(dir)?;
        let st = weights(dir, &config)?;
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

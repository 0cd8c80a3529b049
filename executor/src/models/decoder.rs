//! The decoder-only transformer every text-generation family is, on the batched engine's
//! machinery ([`super::batch`]). A family (one file each: `llama.rs`, `mistral.rs`,
//! `qwen2.rs`, `qwen3.rs`, `phi3.rs`, `gemma2.rs`, `gemma3.rs`) is a [`Family`]: its
//! architecture name and how its `config.json` ([`HfConfig`]) becomes a [`DecoderConfig`],
//! which says everything the forward pass does differently: biases, QK norms, sliding
//! windows per layer, RoPE kinds and scaling, soft-capping, Gemma's norms and scaled
//! embeddings, fused checkpoints ([`Layout`]). A config the code does not implement (an
//! unknown RoPE type, activation, layer type) is refused at load, never approximated.
//!
//! Loading reads the weights (`*.safetensors`, memory-mapped; the files named by
//! `model.safetensors.index.json` when there is one, else every `*.safetensors` file in the
//! directory, in name order) and checks them tensor by tensor (names and shapes) against
//! the config before building, so a broken checkpoint is a [`ModelError::Load`] naming the
//! tensor, not a panic. Weights are held in the placement's dtype; attention, logits and
//! sampling are computed in f32.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Module, Tensor};
use candle_nn::{RmsNorm, VarBuilder};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::batch::{Attention, CausalLm, Dense, Embed, KvCache, LayerAttention, Rope, RopeFreqs, StepSeq};
use super::generate::{EngineOptions, Generator, TextSpec, read_json};
use super::weights::{SafeWeights, Weights};
use super::{ModelError, Placement};

pub(crate) use super::load_err;

/// A text-generation family.
pub struct Family {
    /// The `architectures` entry of its `config.json`.
    pub architecture: &'static str,
    /// Its `config.json` as the runtime config (the path for messages).
    pub config: fn(&HfConfig, &Path) -> Result<DecoderConfig, ModelError>,
}

/// The `config.json` fields the families read (each family reads its own subset; unknown
/// fields are ignored, as transformers ignores them).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: Option<f64>,
    pub tie_word_embeddings: Option<bool>,
    pub hidden_act: Option<String>,
    pub hidden_activation: Option<String>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub max_window_layers: Option<usize>,
    pub sliding_window_pattern: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub partial_rotary_factor: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<Value>,
    pub rope_parameters: Option<Value>,
    pub rope_local_base_freq: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
    pub query_pre_attn_scalar: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
    /// The whole `config.json`, for what the typed fields cannot say (a key given as `null`
    /// is not the same as a missing one: see [`HfConfig::defaulted`]).
    #[serde(skip)]
    pub json: Value,
}

impl HfConfig {
    /// A number that transformers defaults when the key is missing and turns off with `null`.
    pub fn defaulted(&self, key: &str, default: f64) -> Option<f64> {
        match self.json.get(key) {
            None => Some(default),
            Some(v) => v.as_f64(),
        }
    }
}

/// How the checkpoint names and splits its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `q_proj`, `k_proj`, `v_proj`, `o_proj`; `gate_proj`, `up_proj`, `down_proj`;
    /// `input_layernorm` before attention, `post_attention_layernorm` before the MLP.
    Llama,
    /// Phi-3: `qkv_proj` and `gate_up_proj` fused in the checkpoint.
    Phi3,
    /// Gemma 2 and 3: Llama's projections, four norms a layer (`post_attention_layernorm`
    /// after attention, `pre_feedforward_layernorm` and `post_feedforward_layernorm` around
    /// the MLP).
    Gemma,
}

/// The MLP's activation (`hidden_act` / `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh`, `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact (erf) one.
    Gelu,
}

impl Activation {
    pub fn parse(name: &str, path: &Path) -> Result<Activation, ModelError> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::Gelu),
            other => Err(load_err(
                path,
                format!("activation {other:?} is not implemented (silu, gelu, gelu_pytorch_tanh, gelu_new are)"),
            )),
        }
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::GeluTanh => x.gelu(),
            Activation::Gelu => x.gelu_erf(),
        }
    }
}

/// Everything the forward pass needs to know about a model (see the module docs).
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Leading dimensions of each head that RoPE rotates.
    pub rotary_dim: usize,
    /// Prompt and output together (`max_position_embeddings`).
    pub context: usize,
    pub norm_eps: f64,
    /// Gemma: every norm computes `x̂ · (1 + w)`.
    pub norm_plus_one: bool,
    pub activation: Activation,
    /// Gemma: embeddings times `sqrt(hidden)`.
    pub embed_scale: Option<f64>,
    /// The LM head is the embedding matrix.
    pub tied: bool,
    pub layout: Layout,
    /// Biases on Q, K and V (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Biases on the MLP's projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Qwen3, Gemma 3: RMSNorm over each head of Q and K before RoPE.
    pub qk_norm: bool,
    /// Per layer: its window and RoPE kind.
    pub layer_attention: Vec<LayerAttention>,
    /// The RoPE kinds the layers name.
    pub ropes: Vec<RopeFreqs>,
    /// Multiplies attention scores.
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    /// Gemma 2: logits become `cap * tanh(logits / cap)`.
    pub final_softcap: Option<f64>,
}

impl DecoderConfig {
    /// The Llama-shaped defaults of `c`: explicit `head_dim` when given, every layer global
    /// with one RoPE of `rope_theta` (default `default_theta`) and its `rope_scaling`.
    pub fn base(c: &HfConfig, path: &Path, default_theta: f64) -> Result<DecoderConfig, ModelError> {
        let heads = c.num_attention_heads;
        if heads == 0 || c.hidden_size == 0 || c.num_hidden_layers == 0 {
            return Err(load_err(path, "hidden_size, num_attention_heads and num_hidden_layers must be positive"));
        }
        let kv_heads = c.num_key_value_heads.unwrap_or(heads);
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / heads);
        let rotary_dim = match c.partial_rotary_factor {
            Some(f) if f > 0.0 && f <= 1.0 => (head_dim as f64 * f) as usize,
            Some(f) => return Err(load_err(path, format!("partial_rotary_factor {f} must be in (0, 1]"))),
            None => head_dim,
        };
        let act = c.hidden_act.as_deref().unwrap_or("silu");
        let config = DecoderConfig {
            vocab: c.vocab_size,
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            heads,
            kv_heads,
            head_dim,
            rotary_dim,
            context: c.max_position_embeddings,
            norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            norm_plus_one: false,
            activation: Activation::parse(act, path)?,
            embed_scale: None,
            tied: c.tie_word_embeddings.unwrap_or(false),
            layout: Layout::Llama,
            qkv_bias: c.attention_bias.unwrap_or(false),
            o_bias: c.attention_bias.unwrap_or(false),
            mlp_bias: c.mlp_bias.unwrap_or(false),
            qk_norm: false,
            layer_attention: vec![LayerAttention { window: None, rope: 0 }; c.num_hidden_layers],
            ropes: Vec::new(),
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
        };
        let params = rope_parameters(c, None, default_theta);
        let rope = rope_freqs(&params, &config, c, path)?;
        Ok(DecoderConfig { ropes: vec![rope], ..config })
    }

    /// Every layer attends within `window` (Mistral, Phi-3), when there is one.
    pub fn with_window_everywhere(mut self, window: Option<usize>) -> DecoderConfig {
        for l in &mut self.layer_attention {
            l.window = window;
        }
        self
    }

    /// Layers by `layer_types` (`sliding_attention` / `full_attention`), one RoPE kind per
    /// type: `ropes[0]` for full attention, `ropes[1]` (if given) for sliding.
    pub fn with_layer_types(
        mut self,
        types: &[String],
        window: Option<usize>,
        path: &Path,
    ) -> Result<Self, ModelError> {
        if types.len() != self.layers {
            return Err(load_err(path, format!("layer_types has {} entries for {} layers", types.len(), self.layers)));
        }
        for (l, t) in self.layer_attention.iter_mut().zip(types) {
            *l = match t.as_str() {
                "full_attention" => LayerAttention { window: None, rope: 0 },
                "sliding_attention" => {
                    let window =
                        window.ok_or_else(|| load_err(path, "sliding_attention layers need sliding_window"))?;
                    LayerAttention { window: Some(window), rope: if self.ropes.len() > 1 { 1 } else { 0 } }
                }
                other => return Err(load_err(path, format!("layer type {other:?} is not implemented"))),
            };
        }
        Ok(self)
    }

    pub fn check(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |m: String| Err(load_err(path, m));
        if self.vocab == 0 || self.context == 0 || self.intermediate == 0 || self.kv_heads == 0 || self.head_dim == 0 {
            return bad(
                "vocab_size, max_position_embeddings, intermediate_size, num_key_value_heads and the head size \
                        must be positive"
                    .into(),
            );
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "num_attention_heads {} must be a multiple of num_key_value_heads {}",
                self.heads, self.kv_heads
            ));
        }
        if !self.rotary_dim.is_multiple_of(2) || self.rotary_dim == 0 || self.rotary_dim > self.head_dim {
            return bad(format!(
                "the rotary size {} must be even and at most the head size {}",
                self.rotary_dim, self.head_dim
            ));
        }
        if self.layer_attention.iter().any(|l| l.window == Some(0) || l.rope >= self.ropes.len()) {
            return bad("a sliding window must be positive".into());
        }
        for r in &self.ropes {
            let n = self.rotary_dim / 2;
            if r.inv_freq.len() != n || r.long.as_ref().is_some_and(|(l, _)| l.len() != n) {
                return bad(format!("RoPE factors must have {n} entries (half the rotary size)"));
            }
        }
        Ok(())
    }

    /// The tensors the checkpoint must hold, with their shapes.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (h, i, v, d) = (self.hidden, self.intermediate, self.vocab, self.head_dim);
        let (q, kv) = (self.heads * d, self.kv_heads * d);
        let mut out = vec![("model.embed_tokens.weight".into(), vec![v, h]), ("model.norm.weight".into(), vec![h])];
        if !self.tied {
            out.push(("lm_head.weight".into(), vec![v, h]));
        }
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            let mut t = |name: String, shape: Vec<usize>| out.push((format!("{p}.{name}"), shape));
            t("input_layernorm.weight".into(), vec![h]);
            t("post_attention_layernorm.weight".into(), vec![h]);
            if self.layout == Layout::Gemma {
                t("pre_feedforward_layernorm.weight".into(), vec![h]);
                t("post_feedforward_layernorm.weight".into(), vec![h]);
            }
            if self.layout == Layout::Phi3 {
                t("self_attn.qkv_proj.weight".into(), vec![q + 2 * kv, h]);
                t("mlp.gate_up_proj.weight".into(), vec![2 * i, h]);
            } else {
                for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                    t(format!("self_attn.{name}.weight"), vec![rows, h]);
                    if self.qkv_bias {
                        t(format!("self_attn.{name}.bias"), vec![rows]);
                    }
                }
                for name in ["gate_proj", "up_proj"] {
                    t(format!("mlp.{name}.weight"), vec![i, h]);
                    if self.mlp_bias {
                        t(format!("mlp.{name}.bias"), vec![i]);
                    }
                }
            }
            t("self_attn.o_proj.weight".into(), vec![h, q]);
            if self.o_bias {
                t("self_attn.o_proj.bias".into(), vec![h]);
            }
            t("mlp.down_proj.weight".into(), vec![h, i]);
            if self.mlp_bias {
                t("mlp.down_proj.bias".into(), vec![h]);
            }
            if self.qk_norm {
                t("self_attn.q_norm.weight".into(), vec![d]);
                t("self_attn.k_norm.weight".into(), vec![d]);
            }
        }
        out
    }
}

/// The RoPE parameters of a layer type (`None`: the model's only kind): transformers 5's
/// `rope_parameters` (flat, or keyed by layer type), else the older `rope_theta` with
/// `rope_scaling`.
pub fn rope_parameters(c: &HfConfig, layer_type: Option<&str>, default_theta: f64) -> Map<String, Value> {
    let mut params = match &c.rope_parameters {
        Some(Value::Object(p)) => match layer_type.and_then(|t| p.get(t)) {
            Some(Value::Object(typed)) => typed.clone(),
            _ => p.clone(),
        },
        _ => match &c.rope_scaling {
            Some(Value::Object(s)) => s.clone(),
            _ => Map::new(),
        },
    };
    if !params.contains_key("rope_theta") {
        params.insert("rope_theta".into(), c.rope_theta.unwrap_or(default_theta).into());
    }
    params
}

/// RoPE's inverse frequencies from a parameter set: `default` (and `dynamic`, the same
/// within the context), `linear`, `llama3`, `longrope` (`su`), as transformers computes
/// them. Any other type is refused.
pub fn rope_freqs(
    params: &Map<String, Value>,
    cfg: &DecoderConfig,
    c: &HfConfig,
    path: &Path,
) -> Result<RopeFreqs, ModelError> {
    let num = |key: &str| params.get(key).and_then(Value::as_f64);
    let theta = num("rope_theta").unwrap_or(10000.0);
    let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
    let dim = cfg.rotary_dim;
    let base: Vec<f32> = (0..dim).step_by(2).map(|i| 1f32 / (theta as f32).powf(i as f32 / dim as f32)).collect();
    let need = |key: &str| num(key).ok_or_else(|| load_err(path, format!("rope type {kind} needs {key}")));
    let plain = |inv_freq| RopeFreqs { inv_freq, long: None, attention_factor: 1.0 };
    match kind {
        "default" | "dynamic" => Ok(plain(base)),
        "linear" => {
            let factor = need("factor")? as f32;
            Ok(plain(base.into_iter().map(|f| f / factor).collect()))
        }
        "llama3" => {
            let factor = need("factor")? as f32;
            let (low_f, high_f) = (need("low_freq_factor")? as f32, need("high_freq_factor")? as f32);
            let original = need("original_max_position_embeddings")? as f32;
            let (low, high) = (original / low_f, original / high_f);
            Ok(plain(
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2. * std::f32::consts::PI / f;
                        if wavelen < high {
                            f
                        } else if wavelen > low {
                            f / factor
                        } else {
                            let smooth = (original / wavelen - low_f) / (high_f - low_f);
                            (1. - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect(),
            ))
        }
        "longrope" | "su" => {
            let factors = |key: &str| -> Result<Vec<f32>, ModelError> {
                params
                    .get(key)
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(|v| v.as_f64().map(|f| f as f32)).collect::<Option<Vec<_>>>())
                    .ok_or_else(|| load_err(path, format!("rope type {kind} needs {key}, a list of numbers")))
            };
            let (short, long) = (factors("short_factor")?, factors("long_factor")?);
            let original = num("original_max_position_embeddings")
                .map(|o| o as usize)
                .or(c.original_max_position_embeddings)
                .ok_or_else(|| load_err(path, "longrope needs original_max_position_embeddings"))?;
            let factor = num("factor").unwrap_or(cfg.context as f64 / original as f64);
            let attention_factor = match num("attention_factor") {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            let scaled = |ext: &[f32]| base.iter().zip(ext).map(|(f, e)| f / e).collect::<Vec<f32>>();
            if short.len() != base.len() || long.len() != base.len() {
                return Err(load_err(path, format!("longrope factors must have {} entries", base.len())));
            }
            Ok(RopeFreqs {
                inv_freq: scaled(&short),
                long: Some((scaled(&long), original)),
                attention_factor: attention_factor as f32,
            })
        }
        other => Err(load_err(
            path,
            format!("rope type {other:?} is not implemented (default, dynamic, linear, llama3, longrope are)"),
        )),
    }
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

/// The checked weights of `dir`, memory-mapped.
pub(crate) fn weights(dir: &Path, expected: &[(String, Vec<usize>)]) -> Result<MmapedSafetensors, ModelError> {
    let files = weight_files(dir)?;
    // SAFETY: the files are memory-mapped read-only; like every loader of mmaped weights we
    // rely on nobody truncating them while the model is loaded.
    let st = unsafe { MmapedSafetensors::multi(&files) }
        .map_err(|e| ModelError::Load(format!("cannot read the weights: {e}")))?;
    let mut missing = Vec::new();
    for (name, shape) in expected {
        match st.get(name) {
            Err(_) => missing.push(name.clone()),
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
    Ok(st)
}

/// `dir`'s `config.json` as `family` reads it; also the JSON itself.
pub fn read_config(dir: &Path, family: &Family) -> Result<(DecoderConfig, Value), ModelError> {
    if !dir.is_dir() {
        return Err(load_err(dir, "no such model directory"));
    }
    let path = dir.join("config.json");
    let json = read_json(&path)?;
    let mut hf: HfConfig = serde_json::from_value(json.clone())
        .map_err(|e| load_err(&path, format!("not a {} config: {e}", family.architecture)))?;
    hf.json = json.clone();
    let config = (family.config)(&hf, &path)?;
    config.check(&path)?;
    Ok((config, json))
}

/// Loads a Hugging Face directory of `family` onto `placement` and starts its engine.
pub fn load(
    dir: &Path,
    placement: &Placement,
    options: EngineOptions,
    family: &Family,
) -> Result<Generator, ModelError> {
    let (lm, json) = Decoder::load(dir, placement, family)?;
    let text = TextSpec::load(dir, &json)?;
    Generator::start(Arc::new(lm), text, options)
}

/// Loads a GGUF file of `family` (its tokenizer files beside it) onto `placement`'s device
/// and starts its engine.
pub fn load_gguf(
    file: &Path,
    placement: &Placement,
    options: EngineOptions,
    family: &Family,
) -> Result<Generator, ModelError> {
    let (lm, json) = Decoder::load_gguf(file, placement, family)?;
    let chat = ferry_core::chat::ChatTemplate::from_gguf(file).map_err(|e| ModelError::Load(e.to_string()))?;
    let text = TextSpec::load_with_chat(&ferry_core::gguf::files_dir(file), &json, chat)?;
    Generator::start(Arc::new(lm), text, options)
}

struct Layer {
    attn_norm: RmsNorm,
    /// Q, K and V in one.
    qkv: Dense,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    o: Dense,
    /// Gemma: the norm of the attention's output.
    post_attn_norm: Option<RmsNorm>,
    mlp_norm: RmsNorm,
    /// Gate and up in one.
    gate_up: Dense,
    down: Dense,
    /// Gemma: the norm of the MLP's output.
    post_mlp_norm: Option<RmsNorm>,
}

/// A decoder's weights and its forward pass over many sequences at once.
pub struct Decoder {
    cfg: DecoderConfig,
    embed: Embed,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Dense,
    attention: Attention,
}

/// A model that could not be built is a load failure, whatever failed.
fn building(path: &Path, e: ModelError) -> ModelError {
    match e {
        ModelError::Runtime(m) => ModelError::Load(format!("{}: cannot build the model: {m}", path.display())),
        other => other,
    }
}

impl Decoder {
    /// Loads and checks `dir`'s config and weights; also returns `config.json` as JSON.
    pub fn load(dir: &Path, placement: &Placement, family: &Family) -> Result<(Decoder, Value), ModelError> {
        let (cfg, json) = read_config(dir, family)?;
        let st = weights(dir, &cfg.expected_tensors())?;
        let vb = VarBuilder::from_backend(Box::new(st), placement.dtype, placement.device.clone());
        // candle's builders can panic on shapes the checks above should already refuse; a
        // panic that slips through is still a load failure, not a crashed executor.
        let lm = catch_unwind(AssertUnwindSafe(|| Decoder::from_weights(&SafeWeights::new(vb), cfg, placement)))
            .map_err(|_| ModelError::Load(format!("{}: the weights do not fit config.json", dir.display())))?
            .map_err(|e| building(dir, e))?;
        Ok((lm, json))
    }

    /// Loads a GGUF file as `family` (its metadata read as that family's `config.json`, see
    /// [`super::gguf`]); also returns that config. Computes in f32 on `placement`'s device
    /// whatever its dtype (the linear layers keep their quantization).
    pub fn load_gguf(file: &Path, placement: &Placement, family: &Family) -> Result<(Decoder, Value), ModelError> {
        let mut w = super::gguf::GgufWeights::open(file, &placement.device)?;
        let arch = w.architecture()?.to_string();
        let serves = ferry_core::gguf::families(&arch).unwrap_or_default();
        if !serves.contains(&family.architecture) {
            return Err(load_err(
                file,
                format!(
                    "the file's general.architecture is {arch:?}, but the catalog serves it as {}; a model is only \
                     served by its own family's code",
                    family.architecture
                ),
            ));
        }
        let json = w.hf_config(family.architecture)?;
        let mut hf: HfConfig = serde_json::from_value(json.clone())
            .map_err(|e| load_err(file, format!("not a {} model: {e}", family.architecture)))?;
        hf.json = json.clone();
        let mut cfg = (family.config)(&hf, file)?;
        if let Some(factors) = w.rope_factors()? {
            for rope in &mut cfg.ropes {
                if factors.len() != rope.inv_freq.len() {
                    return Err(load_err(file, format!("rope_freqs.weight has {} factors", factors.len())));
                }
                rope.inv_freq.iter_mut().zip(&factors).for_each(|(f, d)| *f /= d);
            }
        }
        cfg.check(file)?;
        let placement = Placement { device: placement.device.clone(), dtype: DType::F32 };
        let lm = catch_unwind(AssertUnwindSafe(|| Decoder::from_weights(&w, cfg, &placement)))
            .map_err(|_| ModelError::Load(format!("{}: the tensors do not fit the metadata", file.display())))?
            .map_err(|e| building(file, e))?;
        tracing::info!(
            file = %file.display(),
            tensor_bytes = ?super::gguf::type_bytes(&w),
            resident_bytes = super::resident_bytes(),
            "GGUF model loaded"
        );
        Ok((lm, json))
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    fn from_weights(w: &dyn Weights, cfg: DecoderConfig, placement: &Placement) -> Result<Decoder, ModelError> {
        let (h, d, i) = (cfg.hidden, cfg.head_dim, cfg.intermediate);
        let (qw, kvw) = (cfg.heads * d, cfg.kv_heads * d);
        let norm = |name: &str, n: usize| -> Result<RmsNorm, ModelError> {
            let w = w.tensor(&format!("{name}.weight"), &[n])?;
            let w = if cfg.norm_plus_one { (w + 1.0)? } else { w };
            Ok(RmsNorm::new(w, cfg.norm_eps))
        };
        let embed = w.embedding("model.embed_tokens.weight", cfg.vocab, h)?;
        let gemma = cfg.layout == Layout::Gemma;
        let layers = (0..cfg.layers)
            .map(|li| {
                let l = format!("model.layers.{li}");
                let (a, p) = (format!("{l}.self_attn"), format!("{l}.mlp"));
                let (qkv, gate_up) = if cfg.layout == Layout::Phi3 {
                    (
                        w.dense(&[(&format!("{a}.qkv_proj"), qw + 2 * kvw)], h, false)?,
                        w.dense(&[(&format!("{p}.gate_up_proj"), 2 * i)], h, false)?,
                    )
                } else {
                    let (q, k, v) = (format!("{a}.q_proj"), format!("{a}.k_proj"), format!("{a}.v_proj"));
                    let (g, u) = (format!("{p}.gate_proj"), format!("{p}.up_proj"));
                    (
                        w.dense(&[(&q, qw), (&k, kvw), (&v, kvw)], h, cfg.qkv_bias)?,
                        w.dense(&[(&g, i), (&u, i)], h, cfg.mlp_bias)?,
                    )
                };
                Ok(Layer {
                    attn_norm: norm(&format!("{l}.input_layernorm"), h)?,
                    qkv,
                    q_norm: cfg.qk_norm.then(|| norm(&format!("{a}.q_norm"), d)).transpose()?,
                    k_norm: cfg.qk_norm.then(|| norm(&format!("{a}.k_norm"), d)).transpose()?,
                    o: w.dense(&[(&format!("{a}.o_proj"), h)], qw, cfg.o_bias)?,
                    post_attn_norm: gemma.then(|| norm(&format!("{l}.post_attention_layernorm"), h)).transpose()?,
                    mlp_norm: norm(
                        &format!(
                            "{l}.{}",
                            if gemma { "pre_feedforward_layernorm" } else { "post_attention_layernorm" }
                        ),
                        h,
                    )?,
                    gate_up,
                    down: w.dense(&[(&format!("{p}.down_proj"), h)], i, cfg.mlp_bias)?,
                    post_mlp_norm: gemma.then(|| norm(&format!("{l}.post_feedforward_layernorm"), h)).transpose()?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let final_norm = norm("model.norm", h)?;
        let lm_head = match cfg.tied {
            true => embed.as_lm_head()?,
            false => w.dense(&[("lm_head", cfg.vocab)], h, false)?,
        };
        let ropes = cfg
            .ropes
            .iter()
            .map(|r| Rope::new(r, cfg.context, placement.dtype, &placement.device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let attention = Attention {
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: d,
            rotary_dim: cfg.rotary_dim,
            ropes,
            layers: cfg.layer_attention.clone(),
            scale: cfg.attn_scale as f32,
            softcap: cfg.attn_softcap.map(|c| c as f32),
            dtype: placement.dtype,
            device: placement.device.clone(),
        };
        Ok(Decoder { cfg, embed, layers, norm: final_norm, lm_head, attention })
    }

    fn forward(&self, cache: &mut KvCache, seqs: &[StepSeq]) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        let cfg = &self.cfg;
        let plan = self.attention.plan(cache, seqs)?;
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.ids.iter().copied()).collect();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= cfg.vocab) {
            return Err(ModelError::Runtime(format!("token id {id} is outside the vocabulary of {}", cfg.vocab)));
        }
        let rows = ids.len();
        let mut x = self.embed.forward(&Tensor::new(ids.as_slice(), &self.attention.device)?)?; // [rows, hidden]
        if let Some(s) = cfg.embed_scale {
            // transformers multiplies by the scale as a tensor of the weights' dtype.
            x = (x * s as f32 as f64)?;
        }
        let (qw, kw, d) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.head_dim);
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let qkv = layer.qkv.forward(&h)?;
            let (mut q, mut k) = (qkv.narrow(1, 0, qw)?.contiguous()?, qkv.narrow(1, qw, kw)?.contiguous()?);
            let v = qkv.narrow(1, qw + kw, kw)?.contiguous()?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = qn.forward(&q.reshape((rows, cfg.heads, d))?)?.reshape((rows, qw))?;
                k = kn.forward(&k.reshape((rows, cfg.kv_heads, d))?)?.reshape((rows, kw))?;
            }
            let attn = self.attention.forward(li, &q, &k, &v, &plan, cache)?;
            let mut o = layer.o.forward(&attn)?;
            if let Some(n) = &layer.post_attn_norm {
                o = n.forward(&o)?;
            }
            x = (x + o)?;
            // The MLP in the transposed layout ([features, rows]), so each weight is read in
            // its own order and gate and up are one matmul.
            let h = layer.mlp_norm.forward(&x)?;
            let gu = layer.gate_up.forward_t(&h)?;
            let i = cfg.intermediate;
            let act = (cfg.activation.apply(&gu.narrow(0, 0, i)?)? * gu.narrow(0, i, i)?)?;
            let mut m = layer.down.forward_tt(&act)?.t()?;
            if let Some(n) = &layer.post_mlp_norm {
                m = n.forward(&m.contiguous()?)?;
            }
            x = (x + m)?;
        }
        let mut out = vec![None; seqs.len()];
        if plan.logit_seqs.is_empty() {
            return Ok(out);
        }
        let last = x.index_select(&plan.logit_rows, 0)?;
        let mut logits = self.lm_head.forward(&self.norm.forward(&last)?)?.to_dtype(DType::F32)?;
        if let Some(cap) = cfg.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        for (&i, l) in plan.logit_seqs.iter().zip(logits.to_vec2::<f32>()?) {
            out[i] = Some(l);
        }
        Ok(out)
    }
}

impl CausalLm for Decoder {
    fn context_length(&self) -> usize {
        self.cfg.context
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab
    }

    fn new_cache(&self) -> KvCache {
        let a = &self.attention;
        KvCache::new(self.layers.len(), a.kv_heads, a.head_dim, self.cfg.context, a.dtype, &a.device)
    }

    fn step(&self, cache: &mut KvCache, seqs: &[StepSeq]) -> Result<Vec<Option<Vec<f32>>>, ModelError> {
        self.forward(cache, seqs)
    }
}

//! GGUF models (llama.cpp's format): the Llama (Mistral is written as `llama`), Qwen2 and
//! Qwen3 families from one `*.gguf` file, with the `tokenizer.json` beside it
//! ([`ferry_core::gguf`] says which paths are GGUF models).
//!
//! The file's metadata (`{arch}.block_count`, `{arch}.embedding_length`, ...) becomes the
//! `config.json` the family's own code reads ([`hf_config`]), so a GGUF model runs the same
//! decoder as its safetensors twin; the tensors' llama.cpp names map to Hugging Face's
//! ([`hf_to_gguf`]). Linear layers keep their quantization (Q4_0, Q4_K, Q5_K, Q6_K, Q8_0 and
//! the other types candle implements) and run through candle's quantized matmuls; the
//! embedding table stays quantized too (rows dequantized as they are looked up), and
//! everything else (norms, biases, activations, the KV cache) is f32.
//!
//! llama.cpp's converter permutes the rows of Llama's Q and K projections for its
//! interleaved RoPE; [`GgufWeights`] puts them back in Hugging Face's order (a row
//! permutation, exact on quantized rows, since every row is quantized on its own), so the
//! decoder's RoPE is the same for every source.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, ggml_file::qtensor_from_ggml, gguf_file};
use candle_core::{Device, Tensor};
use serde_json::{Value, json};

use super::batch::{Dense, Embed};
use super::weights::Weights;
use super::{ModelError, load_err};

/// An open GGUF file: its header, and the file to read tensors from.
pub struct GgufWeights {
    path: PathBuf,
    content: gguf_file::Content,
    file: Mutex<File>,
    device: Device,
    /// Llama's heads and KV heads, whose Q and K rows are put back in order.
    unpermute: Option<(usize, usize)>,
}

/// A tensor's bytes as stored, with its type and `[rows, cols]` shape (Hugging Face order).
struct Raw {
    dtype: GgmlDType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl GgufWeights {
    /// Opens `path` and reads its header.
    pub fn open(path: &Path, device: &Device) -> Result<GgufWeights, ModelError> {
        let mut file = File::open(path).map_err(|e| load_err(path, format!("cannot open it: {e}")))?;
        let content =
            gguf_file::Content::read(&mut file).map_err(|e| load_err(path, format!("not a GGUF file: {e}")))?;
        Ok(GgufWeights {
            path: path.to_owned(),
            content,
            file: Mutex::new(file),
            device: device.clone(),
            unpermute: None,
        })
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, ModelError> {
        self.content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .ok_or_else(|| load_err(&self.path, "no general.architecture"))
    }

    fn meta(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    fn meta_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.meta(key) {
            None => Ok(None),
            Some(v) => v
                .to_u64()
                .or_else(|_| v.to_u32().map(u64::from))
                .map(|n| Some(n as usize))
                .map_err(|_| load_err(&self.path, format!("{key} must be an integer"))),
        }
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.meta(key) {
            None => Ok(None),
            Some(v) => v
                .to_f32()
                .map(f64::from)
                .or_else(|_| v.to_f64())
                .map(Some)
                .map_err(|_| load_err(&self.path, format!("{key} must be a number"))),
        }
    }

    pub fn has(&self, gguf_name: &str) -> bool {
        self.content.tensor_infos.contains_key(gguf_name)
    }

    /// A tensor's shape in Hugging Face order (`[rows, cols]` for a matrix).
    pub fn shape(&self, gguf_name: &str) -> Option<Vec<usize>> {
        self.content.tensor_infos.get(gguf_name).map(|t| t.shape.dims().to_vec())
    }

    /// The file's metadata as the `config.json` of the Hugging Face family `architecture`
    /// (see [`hf_config`]); sets up the Q/K row order the family needs.
    pub fn hf_config(&mut self, architecture: &str) -> Result<Value, ModelError> {
        let config = hf_config(self, architecture)?;
        if self.architecture()? == "llama" {
            let heads = config["num_attention_heads"].as_u64().unwrap_or(0) as usize;
            let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(0) as usize;
            self.unpermute = Some((heads, kv_heads));
        }
        Ok(config)
    }

    /// Llama 3's RoPE factors (`rope_freqs.weight`: what each inverse frequency is divided by).
    pub fn rope_factors(&self) -> Result<Option<Vec<f32>>, ModelError> {
        if !self.has("rope_freqs.weight") {
            return Ok(None);
        }
        let t = self.qtensor("rope_freqs.weight")?.dequantize(&Device::Cpu)?;
        Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
    }

    fn raw(&self, gguf_name: &str) -> Result<Raw, ModelError> {
        use std::io::{Read, Seek, SeekFrom};
        let info = self
            .content
            .tensor_infos
            .get(gguf_name)
            .ok_or_else(|| load_err(&self.path, format!("the file has no tensor {gguf_name}")))?;
        let (elems, block) = (info.shape.elem_count(), info.ggml_dtype.block_size());
        if !elems.is_multiple_of(block) {
            return Err(load_err(&self.path, format!("{gguf_name}: {elems} values are not whole blocks of {block}")));
        }
        let len = elems / block * info.ggml_dtype.type_size();
        let mut bytes = vec![0u8; len];
        let mut file = self.file.lock().expect("the GGUF file lock");
        file.seek(SeekFrom::Start(self.content.tensor_data_offset + info.offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| load_err(&self.path, format!("{gguf_name}: cannot read its {len} bytes: {e}")))?;
        let mut raw = Raw { dtype: info.ggml_dtype, shape: info.shape.dims().to_vec(), bytes };
        if let Some((heads, kv_heads)) = self.unpermute {
            let heads = match gguf_name.rsplit_once('.').map(|(stem, _)| stem.rsplit('.').next()) {
                Some(Some("attn_q")) => Some(heads),
                Some(Some("attn_k")) => Some(kv_heads),
                _ => None,
            };
            if let Some(heads) = heads {
                raw.bytes =
                    unpermute_rows(&raw, heads).map_err(|m| load_err(&self.path, format!("{gguf_name}: {m}")))?;
            }
        }
        Ok(raw)
    }

    fn to_qtensor(&self, raw: &Raw) -> Result<QTensor, ModelError> {
        Ok(qtensor_from_ggml(raw.dtype, &raw.bytes, raw.shape.clone(), &self.device)?)
    }

    fn qtensor(&self, gguf_name: &str) -> Result<QTensor, ModelError> {
        self.to_qtensor(&self.raw(gguf_name)?)
    }

    fn named(&self, hf_name: &str) -> Result<String, ModelError> {
        hf_to_gguf(hf_name).ok_or_else(|| load_err(&self.path, format!("no GGUF name for {hf_name}")))
    }

    fn checked(&self, hf_name: &str, shape: &[usize]) -> Result<String, ModelError> {
        let name = self.named(hf_name)?;
        match self.shape(&name) {
            None => Err(load_err(&self.path, format!("the file has no tensor {name} ({hf_name})"))),
            Some(s) if s != shape => {
                Err(load_err(&self.path, format!("tensor {name} has shape {s:?}; the metadata implies {shape:?}")))
            }
            Some(_) => Ok(name),
        }
    }
}

fn is_float(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Llama's Q or K rows back in Hugging Face's order: llama.cpp stores each head's row
/// `t * head_dim / 2 + j` (t in 0..2) at `2 * j + t`.
fn unpermute_rows(raw: &Raw, heads: usize) -> Result<Vec<u8>, String> {
    let rows = raw.shape.first().copied().unwrap_or(0);
    if heads == 0 || rows % heads != 0 || (rows / heads) % 2 != 0 {
        return Err(format!("{rows} rows are not {heads} heads of an even size"));
    }
    let row_bytes = raw.bytes.len() / rows;
    let (head_dim, half) = (rows / heads, rows / heads / 2);
    let mut out = vec![0u8; raw.bytes.len()];
    for h in 0..heads {
        for t in 0..2 {
            for j in 0..half {
                let (to, from) = (h * head_dim + t * half + j, h * head_dim + 2 * j + t);
                out[to * row_bytes..][..row_bytes].copy_from_slice(&raw.bytes[from * row_bytes..][..row_bytes]);
            }
        }
    }
    Ok(out)
}

impl Weights for GgufWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let gguf = self.checked(name, shape)?;
        Ok(self.qtensor(&gguf)?.dequantize(&self.device)?.reshape(shape)?)
    }

    fn dense(&self, parts: &[(&str, usize)], cols: usize, bias: bool) -> Result<Dense, ModelError> {
        let raws = parts
            .iter()
            .map(|(name, rows)| self.raw(&self.checked(&format!("{name}.weight"), &[*rows, cols])?))
            .collect::<Result<Vec<_>, _>>()?;
        let bias = match bias {
            true => {
                let b = parts
                    .iter()
                    .map(|(name, rows)| self.tensor(&format!("{name}.bias"), &[*rows]))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(Tensor::cat(&b, 0)?)
            }
            false => None,
        };
        let dtype = raws[0].dtype;
        if raws.iter().all(|r| is_float(r.dtype)) {
            let full = raws
                .iter()
                .map(|r| Ok(self.to_qtensor(r)?.dequantize(&self.device)?))
                .collect::<Result<Vec<_>, ModelError>>()?;
            return Ok(Dense::fused_full(&full, bias)?);
        }
        // Layers of one type are one matrix (their rows side by side, as stored); a mix (Q4_K_M
        // keeps some V projections in Q6_K) runs part by part.
        let matrices = if raws.iter().all(|r| r.dtype == dtype) {
            let rows = raws.iter().map(|r| r.shape[0]).sum();
            let bytes = raws.iter().flat_map(|r| r.bytes.iter().copied()).collect();
            vec![Raw { dtype, shape: vec![rows, cols], bytes }]
        } else {
            raws
        };
        let parts = matrices
            .iter()
            .map(|r| Ok(QMatMul::from_qtensor(self.to_qtensor(r)?)?))
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Dense::quantized(parts, bias))
    }

    fn embedding(&self, name: &str, rows: usize, cols: usize) -> Result<Embed, ModelError> {
        let q = self.qtensor(&self.checked(name, &[rows, cols])?)?;
        if is_float(q.dtype()) {
            return Ok(Embed::Full(q.dequantize(&self.device)?));
        }
        Ok(Embed::Quantized(Arc::new(q)))
    }
}

/// The llama.cpp name of a Hugging Face tensor name.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

/// The metadata of `w` as the `config.json` of `architecture`: sizes, norm epsilon, RoPE base
/// and linear scaling, the sliding window when the file gives one, tied embeddings when it has
/// no `output.weight`, biases when its first layer has them, and the end-of-sequence id. A
/// setting llama.cpp records that these families do not implement (another RoPE scaling, a
/// partial rotary size) is refused.
fn hf_config(w: &GgufWeights, architecture: &str) -> Result<Value, ModelError> {
    let arch = w.architecture()?.to_string();
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| -> Result<usize, ModelError> {
        w.meta_usize(&key(k))?.ok_or_else(|| load_err(&w.path, format!("the metadata lacks {}", key(k))))
    };
    let (hidden, heads) = (need("embedding_length")?, need("attention.head_count")?);
    let kv_heads = w.meta_usize(&key("attention.head_count_kv"))?.unwrap_or(heads);
    let head_dim = w.meta_usize(&key("attention.key_length"))?.unwrap_or(hidden / heads.max(1));
    let value_dim = w.meta_usize(&key("attention.value_length"))?.unwrap_or(head_dim);
    let rotary = w.meta_usize(&key("rope.dimension_count"))?.unwrap_or(head_dim);
    if value_dim != head_dim || rotary != head_dim {
        return Err(load_err(
            &w.path,
            format!("key size {head_dim}, value size {value_dim} and RoPE size {rotary} must be equal in {arch}"),
        ));
    }
    let vocab = match w.shape("token_embd.weight") {
        Some(s) if s.len() == 2 => s[0],
        _ => return Err(load_err(&w.path, "the file has no 2-D token_embd.weight")),
    };
    let mut config = json!({
        "architectures": [architecture],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": need("context_length")?,
        "rms_norm_eps": w.meta_f64(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6),
        "rope_theta": w.meta_f64(&key("rope.freq_base"))?.unwrap_or(10000.0),
        "tie_word_embeddings": !w.has("output.weight"),
        "attention_bias": arch == "llama" && w.has("blk.0.attn_q.bias"),
    });
    let scaling = w.meta(&key("rope.scaling.type")).and_then(|v| v.to_string().ok()).map(String::as_str);
    match scaling {
        None | Some("none") => {}
        Some("linear") => {
            let factor = w
                .meta_f64(&key("rope.scaling.factor"))?
                .ok_or_else(|| load_err(&w.path, "linear RoPE scaling needs rope.scaling.factor"))?;
            config["rope_scaling"] = json!({"rope_type": "linear", "factor": factor});
        }
        Some(other) => {
            return Err(load_err(&w.path, format!("RoPE scaling {other:?} is not implemented for GGUF (linear is)")));
        }
    }
    if let Some(window) = w.meta_usize(&key("attention.sliding_window"))? {
        config["sliding_window"] = json!(window);
        config["use_sliding_window"] = json!(true);
    }
    if let Some(eos) = w.meta_usize("tokenizer.ggml.eos_token_id")? {
        config["eos_token_id"] = json!(eos);
    }
    if let Some(bos) = w.meta_usize("tokenizer.ggml.bos_token_id")? {
        config["bos_token_id"] = json!(bos);
    }
    Ok(config)
}

/// What a loaded GGUF file holds, by tensor type: the bytes of each (for the load report).
pub fn type_bytes(w: &GgufWeights) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for info in w.content.tensor_infos.values() {
        let bytes = info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        *out.entry(format!("{:?}", info.ggml_dtype)).or_default() += bytes;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_names_map_to_llama_cpp_names() {
        assert_eq!(hf_to_gguf("model.embed_tokens.weight").as_deref(), Some("token_embd.weight"));
        assert_eq!(hf_to_gguf("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(hf_to_gguf("model.layers.11.self_attn.q_proj.bias").as_deref(), Some("blk.11.attn_q.bias"));
        assert_eq!(hf_to_gguf("model.layers.0.self_attn.k_norm.weight").as_deref(), Some("blk.0.attn_k_norm.weight"));
        assert_eq!(hf_to_gguf("model.layers.3.mlp.down_proj.weight").as_deref(), Some("blk.3.ffn_down.weight"));
        assert_eq!(hf_to_gguf("model.layers.3.post_feedforward_layernorm.weight"), None);
    }

    #[test]
    fn unpermuting_inverts_llama_cpps_permutation() {
        // Two heads of four rows, one byte a row: llama.cpp's order is [0, 2, 1, 3] per head.
        let raw = Raw { dtype: GgmlDType::F32, shape: vec![8, 1], bytes: vec![0, 2, 1, 3, 4, 6, 5, 7] };
        assert_eq!(unpermute_rows(&raw, 2).unwrap(), vec![0, 1, 2, 3, 4, 5, 6, 7]);
        assert!(unpermute_rows(&raw, 3).is_err());
    }
}

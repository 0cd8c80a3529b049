//! Sentence embeddings for the BERT family, laid out as a sentence-transformers directory
//! (all-MiniLM-L6-v2 and the like): one vector per input text, computed the way
//! `SentenceTransformer(dir).encode(texts)` computes it.
//!
//! What is read from the model directory, and how:
//!
//! - `modules.json` lists the pipeline. Supported: one `Transformer` module (first), one
//!   `Pooling` module, and optionally a `Normalize` module after it; the embeddings are
//!   L2-normalized iff a `Normalize` module is listed. Module types are matched on their class
//!   name under `sentence_transformers.` (`sentence_transformers.models.Normalize` and the
//!   newer `sentence_transformers.base.modules.normalize.Normalize` alike). Any other module
//!   (`Dense`, `LayerNorm`, ...) is refused at load time rather than silently skipped, since
//!   skipping it would change the vectors. A directory without `modules.json` (a plain Hugging
//!   Face BERT) gets what sentence-transformers gives it: mean pooling, no normalization.
//! - The `Pooling` module's `config.json` (normally `1_Pooling/config.json`) picks the pooling,
//!   in either format: the legacy booleans (`pooling_mode_cls_token`, `pooling_mode_max_tokens`,
//!   `pooling_mode_mean_tokens`, `pooling_mode_mean_sqrt_len_tokens`) or the newer
//!   `pooling_mode` (a name or a list of names). Several modes concatenate, in the order
//!   sentence-transformers uses (cls, max, mean, mean_sqrt_len), so [`BertEmbedder::dimensions`]
//!   is the hidden size times the number of modes. `weightedmean` and `lasttoken` are refused.
//!   Mean, max and mean-sqrt-len pooling only see real tokens (the attention mask excludes the
//!   padding); cls takes position 0 (inputs are padded on the right).
//! - The Transformer module's directory (the model directory itself when its `path` is empty)
//!   holds `config.json` (candle's [`Config`]), `model.safetensors` (weights named
//!   `embeddings.…`/`encoder.…`, or the same under a `bert.` prefix: both load) and
//!   `tokenizer.json`. Its `sentence_bert_config.json` gives `max_seq_length` (counted in
//!   tokens, `[CLS]` and `[SEP]` included) and `do_lower_case`; without it, or without the
//!   field, inputs are truncated at the model's `max_position_embeddings`, and a larger value
//!   is capped there. The truncation and padding stored in `tokenizer.json` are replaced by
//!   these.
//!
//! A missing or corrupt file, or a configuration this code cannot honor, is a
//! [`ModelError::Load`] that names the file.
//!
//! Running: texts are checked first (non-empty, no control characters other than tab and
//! newlines; [`ModelError::InvalidInput`] naming `input.texts[i]` otherwise) and all tokenized,
//! then run shortest first (as sentence-transformers does: batches of similar length waste
//! little on padding; measured 3x faster at batch 32 than input order on mixed lengths), in
//! batches of [`BATCH_SIZE`], each padded to its longest text (`token_type_ids` all zero),
//! and the vectors are put back in input order. Before each batch the job's [`Progress`] is
//! asked whether to stop (a stop returns the longest prefix of the input already embedded);
//! after each, the percentage of texts done is reported.
//!
//! The transformer runs in the placement's dtype on its device; pooling and normalization run
//! in f32 and the output is f32: `{"embeddings": [[f32, ...], ...], "dimensions": n}`. Each
//! number is written as the shortest decimal that reads back as the same f32.
//!
//! Why not `BertModel::forward`: candle-transformers 0.11.1's `BertModel` builds its attention
//! mask as `(1 - mask) * f32::MIN` in the model's dtype; in bf16 and f16 `f32::MIN` rounds to
//! `-inf` and `0 * -inf` is NaN, so every output is NaN (bf16 is the CUDA default). So the
//! embedding layer (word + token type + position embeddings, then LayerNorm: the same
//! computation as `BertModel`'s) is built here from the same weights, the mask uses the
//! dtype's lowest finite value, and the layers themselves are candle's public
//! [`BertEncoder`]. In f32 the result is that of `BertModel::forward`.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use candle_core::{D, DType, Device, IndexOp, Tensor};
use candle_nn::{Embedding, LayerNorm, Module, VarBuilder};
use candle_transformers::models::bert::{BertEncoder, Config};
use ferry_core::input::check_text;
use serde::Deserialize;
use serde_json::{Number, Value, json};
use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationParams};

use super::{ModelError, Placement, Progress, RunOutcome};

/// Texts per forward pass.
pub const BATCH_SIZE: usize = 32;

/// A sentence-transformers pooling mode this module implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The hidden state of the first token (`[CLS]`).
    Cls,
    /// The element-wise maximum over the real tokens.
    Max,
    /// The mean over the real tokens.
    Mean,
    /// The sum over the real tokens divided by the square root of their number.
    MeanSqrtLen,
}

/// A BERT-family encoder with its tokenizer, pooling and normalization, ready to embed.
pub struct BertEmbedder {
    embeddings: BertEmbeddings,
    encoder: BertEncoder,
    tokenizer: Tokenizer,
    device: Device,
    dtype: DType,
    pooling: Vec<PoolingMode>,
    normalize: bool,
    lowercase: bool,
    max_seq_length: usize,
    hidden_size: usize,
    pad_id: u32,
}

impl BertEmbedder {
    /// Loads a sentence-transformers directory (see the module doc for what is read).
    pub fn load(dir: &Path, placement: &Placement) -> Result<BertEmbedder, ModelError> {
        let layout = read_layout(dir)?;
        let model_dir = layout.transformer_dir;

        let config_path = model_dir.join("config.json");
        let config: Config = read_json(&config_path)?;
        if config.hidden_size == 0
            || config.num_attention_heads == 0
            || !config.hidden_size.is_multiple_of(config.num_attention_heads)
        {
            return Err(load_err(
                &config_path,
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    config.hidden_size, config.num_attention_heads
                ),
            ));
        }

        let (max_seq_length, lowercase) = read_sentence_bert_config(&model_dir, &config)?;
        let pooling = match &layout.pooling_dir {
            Some(pooling_dir) => read_pooling_config(&pooling_dir.join("config.json"), config.hidden_size)?,
            None => vec![PoolingMode::Mean],
        };

        let tokenizer = load_tokenizer(&model_dir.join("tokenizer.json"), &config, max_seq_length)?;

        let weights_path = model_dir.join("model.safetensors");
        let data = std::fs::read(&weights_path).map_err(|e| load_err(&weights_path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(data, placement.dtype, &placement.device)
            .map_err(|e| load_err(&weights_path, e))?;
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            return Err(load_err(
                &weights_path,
                "no BERT weights: neither embeddings.word_embeddings.weight nor bert.embeddings.word_embeddings.weight",
            ));
        };
        let embeddings = BertEmbeddings::load(vb.pp("embeddings"), &config).map_err(|e| load_err(&weights_path, e))?;
        let encoder = BertEncoder::load(vb.pp("encoder"), &config).map_err(|e| load_err(&weights_path, e))?;

        Ok(BertEmbedder {
            embeddings,
            encoder,
            tokenizer,
            device: placement.device.clone(),
            dtype: placement.dtype,
            pooling,
            normalize: layout.normalize,
            lowercase,
            max_seq_length,
            hidden_size: config.hidden_size,
            pad_id: u32::try_from(config.pad_token_id)
                .ok()
                .filter(|&id| (id as usize) < config.vocab_size)
                .unwrap_or(0),
        })
    }

    /// Length of each output vector: the hidden size times the number of pooling modes.
    pub fn dimensions(&self) -> usize {
        self.hidden_size * self.pooling.len()
    }

    /// Longest input in tokens (`[CLS]` and `[SEP]` included); longer texts are truncated.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// The pooling modes, in the order their vectors are concatenated.
    pub fn pooling_modes(&self) -> &[PoolingMode] {
        &self.pooling
    }

    /// Whether the output vectors are L2-normalized.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Embeds `texts`, one vector per text, in order: `{"embeddings": [[...], ...],
    /// "dimensions": n}`. Stopped early, the partial output holds the texts done so far.
    pub fn embed(&self, texts: &[String], progress: &dyn Progress) -> Result<RunOutcome, ModelError> {
        if texts.is_empty() {
            return Err(ModelError::invalid("input.texts", "must hold at least one text"));
        }
        for (i, text) in texts.iter().enumerate() {
            check_text(text, &format!("input.texts[{i}]"))?;
        }
        let encodings = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let encoding = if self.lowercase {
                    self.tokenizer.encode(text.to_lowercase(), true)
                } else {
                    self.tokenizer.encode(text.as_str(), true)
                };
                encoding
                    .map_err(|e| ModelError::invalid(&format!("input.texts[{i}]"), format!("cannot be tokenized: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Batches of similar length waste little on padding: process the texts shortest
        // first (as sentence-transformers does) and put the vectors back in input order.
        let total = texts.len();
        let mut order: Vec<usize> = (0..total).collect();
        order.sort_by_key(|&i| encodings[i].get_ids().len());
        let mut vectors: Vec<Option<Value>> = vec![None; total];
        let mut done = 0;
        for batch in order.chunks(BATCH_SIZE) {
            if let Some(reason) = progress.stop_requested() {
                // The partial output is the longest prefix of the input already embedded.
                let prefix = vectors.iter().map_while(|v| v.clone()).collect();
                return Ok(RunOutcome::Stopped { reason, partial: self.output(prefix) });
            }
            let encoded: Vec<Encoding> = batch.iter().map(|&i| encodings[i].clone()).collect();
            for (&i, vector) in batch.iter().zip(self.embed_batch(&encoded)?) {
                vectors[i] = Some(vector_to_json(&vector)?);
            }
            done += batch.len();
            progress.percentage(done as f32 / total as f32 * 100.0, Some(format!("{done}/{total} texts")));
        }
        Ok(RunOutcome::Done(self.output(vectors.into_iter().flatten().collect())))
    }

    fn output(&self, vectors: Vec<Value>) -> Value {
        json!({ "embeddings": vectors, "dimensions": self.dimensions() })
    }

    /// One forward pass over up to [`BATCH_SIZE`] tokenized texts; one f32 vector each.
    fn embed_batch(&self, batch: &[Encoding]) -> Result<Vec<Vec<f32>>, ModelError> {
        let n = batch.len();
        let seq_len = batch.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        if seq_len == 0 || seq_len > self.max_seq_length {
            // Cannot happen: the post-processor adds [CLS]/[SEP] and truncation caps the length.
            return Err(ModelError::Runtime(format!(
                "tokenized batch of length {seq_len}, expected 1 to {}",
                self.max_seq_length
            )));
        }
        let mut ids = vec![self.pad_id; n * seq_len];
        let mut mask = vec![0u8; n * seq_len];
        for (row, encoding) in batch.iter().enumerate() {
            let start = row * seq_len;
            let len = encoding.get_ids().len();
            ids[start..start + len].copy_from_slice(encoding.get_ids());
            mask[start..start + len].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, seq_len), &self.device)?;
        let token_type_ids = ids.zeros_like()?;
        let mask = Tensor::from_vec(mask, (n, seq_len), &self.device)?;

        let hidden = self.embeddings.forward(&ids, &token_type_ids)?;
        let hidden = self.encoder.forward(&hidden, &self.attention_bias(&mask)?)?;

        let hidden = hidden.to_dtype(DType::F32)?;
        let pooled = pool(&hidden, &mask, &self.pooling)?;
        let pooled = if self.normalize { l2_normalize(&pooled)? } else { pooled };
        Ok(pooled.to_vec2::<f32>()?)
    }

    /// The additive attention mask `(n, 1, 1, seq)` in the model's dtype: 0 where the token is
    /// real, the dtype's lowest finite value where it is padding (as Hugging Face). Built in f32
    /// and then converted, so a real token's 0 stays 0 (never `0 * -inf`).
    fn attention_bias(&self, mask: &Tensor) -> Result<Tensor, ModelError> {
        let lowest = match self.dtype {
            DType::BF16 => half_min_bf16(),
            DType::F16 => -65504.0,
            _ => f32::MIN,
        };
        let (n, seq_len) = mask.dims2()?;
        let ones = Tensor::ones((n, seq_len), DType::F32, &self.device)?;
        let bias = ((ones - mask.to_dtype(DType::F32)?)? * lowest as f64)?;
        Ok(bias.reshape((n, 1, 1, seq_len))?.to_dtype(self.dtype)?)
    }
}

/// The lowest finite bf16, as an f32 (exactly representable in both).
fn half_min_bf16() -> f32 {
    f32::from_bits(0xFF7F_0000)
}

/// Pools `hidden` `(n, seq, h)` f32 under `mask` `(n, seq)` u8 into `(n, h * modes)`.
fn pool(hidden: &Tensor, mask: &Tensor, modes: &[PoolingMode]) -> candle_core::Result<Tensor> {
    let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, seq, 1)
    let counts = mask_f.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
    let mut parts = Vec::with_capacity(modes.len());
    for mode in modes {
        let part = match mode {
            PoolingMode::Cls => hidden.i((.., 0))?,
            PoolingMode::Max => {
                let keep = mask.unsqueeze(2)?.broadcast_as(hidden.shape())?;
                let floor = Tensor::full(f32::NEG_INFINITY, hidden.shape(), hidden.device())?;
                keep.where_cond(hidden, &floor)?.max(1)?
            }
            PoolingMode::Mean => hidden.broadcast_mul(&mask_f)?.sum(1)?.broadcast_div(&counts)?,
            PoolingMode::MeanSqrtLen => hidden.broadcast_mul(&mask_f)?.sum(1)?.broadcast_div(&counts.sqrt()?)?,
        };
        parts.push(part);
    }
    Tensor::cat(&parts, 1)
}

/// `x / max(‖x‖₂, 1e-12)` row by row, as `torch.nn.functional.normalize`.
fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    x.broadcast_div(&norms)
}

fn vector_to_json(vector: &[f32]) -> Result<Value, ModelError> {
    vector
        .iter()
        .map(|&x| f32_to_json(x).ok_or_else(|| ModelError::Runtime("the model produced a non-finite value".into())))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// `x` as the JSON number with the shortest decimal that reads back as `x` (rather than the
/// 17 digits of `x as f64`); `None` for NaN and infinities.
fn f32_to_json(x: f32) -> Option<Value> {
    if !x.is_finite() {
        return None;
    }
    // Rust prints the shortest decimal that parses back to the same f32, and serde_json prints
    // the f64 nearest to it as that decimal again. That f64 rounds back to `x` for every finite
    // f32 but ±7.038531e-26 (checked exhaustively); those keep their exact f64 value.
    let shortest: f64 = x.to_string().parse().ok()?;
    let value = if shortest as f32 == x { shortest } else { f64::from(x) };
    Number::from_f64(value).map(Value::Number)
}

/// BERT's embedding layer: word + token type + absolute position embeddings, then LayerNorm
/// (as candle-transformers' `BertEmbeddings`, which is private).
struct BertEmbeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    layer_norm: LayerNorm,
}

impl BertEmbeddings {
    fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<BertEmbeddings> {
        Ok(BertEmbeddings {
            word: candle_nn::embedding(config.vocab_size, config.hidden_size, vb.pp("word_embeddings"))?,
            position: candle_nn::embedding(
                config.max_position_embeddings,
                config.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_type: candle_nn::embedding(
                config.type_vocab_size,
                config.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            layer_norm: candle_nn::layer_norm(config.hidden_size, config.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, ids: &Tensor, token_type_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (_, seq_len) = ids.dims2()?;
        let xs = (self.word.forward(ids)? + self.token_type.forward(token_type_ids)?)?;
        let positions = Tensor::arange(0u32, seq_len as u32, ids.device())?;
        let xs = xs.broadcast_add(&self.position.forward(&positions)?)?;
        self.layer_norm.forward(&xs)
    }
}

/// What `modules.json` says.
struct Layout {
    /// Where `config.json`, `model.safetensors`, `tokenizer.json` are.
    transformer_dir: PathBuf,
    /// The Pooling module's directory; `None`: no `modules.json`, mean pooling.
    pooling_dir: Option<PathBuf>,
    normalize: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

fn read_layout(dir: &Path) -> Result<Layout, ModelError> {
    let path = dir.join("modules.json");
    if !path.exists() {
        if !dir.is_dir() {
            return Err(ModelError::Load(format!("{}: not a directory", dir.display())));
        }
        return Ok(Layout { transformer_dir: dir.to_path_buf(), pooling_dir: None, normalize: false });
    }
    let modules: Vec<ModuleEntry> = read_json(&path)?;
    let bad = |message: String| Err(load_err(&path, message));
    let mut transformer_dir = None;
    let mut pooling_dir = None;
    let mut normalize = false;
    for (i, module) in modules.iter().enumerate() {
        let class = module.kind.strip_prefix("sentence_transformers.").and_then(|k| k.rsplit('.').next());
        let sub = Path::new(&module.path);
        if sub.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return bad(format!("module {i} has the path {:?}, which leaves the model directory", module.path));
        }
        match class {
            Some("Transformer") if i == 0 => transformer_dir = Some(dir.join(sub)),
            Some("Pooling") if transformer_dir.is_some() && pooling_dir.is_none() => pooling_dir = Some(dir.join(sub)),
            Some("Normalize") if pooling_dir.is_some() && !normalize => normalize = true,
            _ => {
                return bad(format!(
                    "module {i} ({}) is not supported here: expected a Transformer, then a Pooling, then optionally a Normalize",
                    module.kind
                ));
            }
        }
    }
    match (transformer_dir, pooling_dir) {
        (Some(transformer_dir), Some(pooling_dir)) => {
            Ok(Layout { transformer_dir, pooling_dir: Some(pooling_dir), normalize })
        }
        _ => bad("lists no Transformer and Pooling modules".into()),
    }
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    #[serde(default)]
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

/// `(max_seq_length, do_lower_case)` from `sentence_bert_config.json`, if any.
fn read_sentence_bert_config(model_dir: &Path, config: &Config) -> Result<(usize, bool), ModelError> {
    let path = model_dir.join("sentence_bert_config.json");
    let st: Option<SentenceBertConfig> = if path.exists() { Some(read_json(&path)?) } else { None };
    let (max_seq_length, lowercase) = st.map(|c| (c.max_seq_length, c.do_lower_case)).unwrap_or((None, false));
    let max_seq_length = max_seq_length.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
    Ok((max_seq_length, lowercase))
}

fn read_pooling_config(path: &Path, hidden_size: usize) -> Result<Vec<PoolingMode>, ModelError> {
    let config: HashMap<String, Value> = read_json(path)?;
    let dimension = config.get("word_embedding_dimension").or_else(|| config.get("embedding_dimension"));
    if let Some(dimension) = dimension
        && dimension.as_u64() != Some(hidden_size as u64)
    {
        return Err(load_err(
            path,
            format!("embedding dimension {dimension} differs from the model's hidden_size {hidden_size}"),
        ));
    }
    let parse = |name: &str| match name {
        "cls" => Ok(PoolingMode::Cls),
        "max" => Ok(PoolingMode::Max),
        "mean" => Ok(PoolingMode::Mean),
        "mean_sqrt_len_tokens" => Ok(PoolingMode::MeanSqrtLen),
        other => Err(load_err(
            path,
            format!("pooling mode {other:?} is not supported (cls, max, mean, mean_sqrt_len_tokens are)"),
        )),
    };
    let mut modes = match config.get("pooling_mode") {
        Some(Value::String(name)) => vec![parse(name)?],
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| n.as_str().ok_or_else(|| load_err(path, "pooling_mode must hold strings")).and_then(parse))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(load_err(path, format!("pooling_mode must be a string or a list, not {other}"))),
        None => {
            // The legacy booleans, in the order sentence-transformers concatenates them.
            const LEGACY: [(&str, &str); 6] = [
                ("pooling_mode_cls_token", "cls"),
                ("pooling_mode_max_tokens", "max"),
                ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                ("pooling_mode_weightedmean_tokens", "weightedmean"),
                ("pooling_mode_lasttoken", "lasttoken"),
            ];
            let mut modes = Vec::new();
            for (key, name) in LEGACY {
                match config.get(key) {
                    None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                    Some(Value::Bool(true)) => modes.push(parse(name)?),
                    Some(other) => return Err(load_err(path, format!("{key} must be a boolean, not {other}"))),
                }
            }
            modes
        }
    };
    if modes.is_empty() {
        // What sentence-transformers does when no mode is set.
        modes.push(PoolingMode::Mean);
    }
    Ok(modes)
}

fn load_tokenizer(path: &Path, config: &Config, max_seq_length: usize) -> Result<Tokenizer, ModelError> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| load_err(path, e))?;
    if let Some(max_id) = tokenizer.get_vocab(true).values().max()
        && *max_id as usize >= config.vocab_size
    {
        return Err(load_err(
            path,
            format!("has token id {max_id}, but config.json's vocab_size is {}", config.vocab_size),
        ));
    }
    let specials = tokenizer.get_post_processor().map(|p| p.added_tokens(false)).unwrap_or(0);
    if max_seq_length <= specials {
        return Err(load_err(
            path,
            format!("max_seq_length {max_seq_length} leaves no room next to {specials} special tokens"),
        ));
    }
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams { max_length: max_seq_length, ..Default::default() }))
        .map_err(|e| load_err(path, e))?;
    Ok(tokenizer)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| load_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| load_err(path, e))
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Load(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_json_numbers_read_back_exactly() {
        let mut x = 1.2345678e-3f32;
        let mut state = 0x2545_f491u32;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let y = f32::from_bits(state);
            for v in [x, y, -x, x * 1e30, x * 1e-30] {
                if v.is_finite() {
                    let json = f32_to_json(v).unwrap();
                    assert_eq!(json.as_f64().unwrap() as f32, v, "{v:e} -> {json}");
                    let text = serde_json::to_string(&json).unwrap();
                    assert_eq!(text.parse::<f32>().unwrap(), v, "{v:e} -> {text}");
                }
            }
            x = x.next_up();
        }
        assert_eq!(f32_to_json(0.1).unwrap().to_string(), "0.1");
        for v in [7.038531e-26f32, -7.038531e-26] {
            assert_eq!(f32_to_json(v).unwrap().as_f64().unwrap() as f32, v);
        }
        assert!(f32_to_json(f32::NAN).is_none());
        assert!(f32_to_json(f32::INFINITY).is_none());
    }

    #[test]
    fn lowest_bf16_is_finite() {
        let lowest = half_min_bf16();
        assert!(lowest.is_finite() && lowest < -3.3e38);
        let t = Tensor::new(&[lowest], &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let back: Vec<f32> = t.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        assert_eq!(back[0], lowest);
    }
}

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
//! then run in input order in batches of [`BATCH_SIZE`], each batch *packed*: the texts' tokens
//! end to end, no padding, each text attending to its own tokens only ([`super::encoder`]), so
//! sorting by length (what sentence-transformers does to limit padding) gains nothing. Before
//! each batch the job's [`Progress`] is asked whether to stop (a stop returns the vectors of
//! the texts done, a prefix of the input); after each, the percentage of texts done is
//! reported. Jobs reach the model through [`super::embed::Embedder`], which packs the texts
//! of concurrent jobs into shared batches the same way.
//!
//! The transformer runs in the placement's dtype on its device; pooling and normalization run
//! in f32 and the output is f32: `{"embeddings": [[f32, ...], ...], "dimensions": n}`. Each
//! number is written as the shortest decimal that reads back as the same f32.
//!
//! Why not `BertModel::forward`: candle-transformers 0.11.1's `BertModel` pads, masks (its
//! mask `(1 - mask) * f32::MIN` is NaN in bf16 and f16) and runs its linear layers as
//! per-item batched matmuls, which is slow on CPU (see [`super::encoder`]). The embedding
//! layer (word + token type + position embeddings, then LayerNorm, the same computation as
//! `BertModel`'s) and the layers are built here from the same weights; in f32 the result is
//! that of `BertModel::forward` on each text alone.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Embedding, LayerNorm, Module, VarBuilder};
use candle_transformers::models::bert::Config;
use ferry_core::input::check_text;
use serde::Deserialize;
use serde_json::{Number, Value, json};
use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationParams};

use super::encoder::PackedEncoder;
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
    encoder: PackedEncoder,
    tokenizer: Tokenizer,
    device: Device,
    pooling: Vec<PoolingMode>,
    normalize: bool,
    lowercase: bool,
    max_seq_length: usize,
    hidden_size: usize,
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
        let encoder = PackedEncoder::load(vb.pp("encoder"), &config).map_err(|e| load_err(&weights_path, e))?;

        Ok(BertEmbedder {
            embeddings,
            encoder,
            tokenizer,
            device: placement.device.clone(),
            pooling,
            normalize: layout.normalize,
            lowercase,
            max_seq_length,
            hidden_size: config.hidden_size,
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
        let encodings = self.tokenize(texts)?;
        let total = texts.len();
        let mut vectors = Vec::with_capacity(total);
        for batch in encodings.chunks(BATCH_SIZE) {
            if let Some(reason) = progress.stop_requested() {
                return Ok(RunOutcome::Stopped { reason, partial: self.output(vectors) });
            }
            let batch: Vec<&Encoding> = batch.iter().collect();
            for vector in self.embed_batch(&batch)? {
                vectors.push(vector_to_json(&vector)?);
            }
            let done = vectors.len();
            progress.percentage(done as f32 / total as f32 * 100.0, Some(format!("{done}/{total} texts")));
        }
        Ok(RunOutcome::Done(self.output(vectors)))
    }

    /// The output for `vectors` (the first texts' JSON vectors, in order).
    pub fn output(&self, vectors: Vec<Value>) -> Value {
        json!({ "embeddings": vectors, "dimensions": self.dimensions() })
    }

    /// Tokenizes `texts` as [`BertEmbedder::embed`] does (checked first: `input.texts[i]`
    /// names a bad one).
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Encoding>, ModelError> {
        if texts.is_empty() {
            return Err(ModelError::invalid("input.texts", "must hold at least one text"));
        }
        for (i, text) in texts.iter().enumerate() {
            check_text(text, &format!("input.texts[{i}]"))?;
        }
        texts
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
            .collect()
    }

    /// One forward pass over tokenized texts, packed (no padding: see [`super::encoder`]);
    /// one f32 vector each, in order.
    pub fn embed_batch(&self, batch: &[&Encoding]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut spans = Vec::with_capacity(batch.len());
        for encoding in batch {
            let len = encoding.get_ids().len();
            if len == 0 || len > self.max_seq_length {
                // Cannot happen: the post-processor adds [CLS]/[SEP] and truncation caps the length.
                return Err(ModelError::Runtime(format!(
                    "tokenized text of length {len}, expected 1 to {}",
                    self.max_seq_length
                )));
            }
            spans.push((ids.len(), len));
            ids.extend_from_slice(encoding.get_ids());
            positions.extend(0..len as u32);
        }
        let rows = ids.len();
        let ids = Tensor::from_vec(ids, rows, &self.device)?;
        let positions = Tensor::from_vec(positions, rows, &self.device)?;
        let hidden = self.embeddings.forward(&ids, &positions)?;
        let hidden = self.encoder.forward(&hidden, &spans)?.to_dtype(DType::F32)?;
        let pooled = pool(&hidden, &spans, &self.pooling)?;
        let pooled = if self.normalize { l2_normalize(&pooled)? } else { pooled };
        Ok(pooled.to_vec2::<f32>()?)
    }
}

/// Pools the packed `hidden` `(tokens, h)` f32, text by text (`spans`), into
/// `(texts, h * modes)`.
fn pool(hidden: &Tensor, spans: &[(usize, usize)], modes: &[PoolingMode]) -> candle_core::Result<Tensor> {
    let mut rows = Vec::with_capacity(spans.len());
    for &(start, n) in spans {
        let text = hidden.narrow(0, start, n)?;
        let mut parts = Vec::with_capacity(modes.len());
        for mode in modes {
            parts.push(match mode {
                PoolingMode::Cls => text.get(0)?,
                PoolingMode::Max => text.max(0)?,
                PoolingMode::Mean => (text.sum(0)? / n as f64)?,
                PoolingMode::MeanSqrtLen => (text.sum(0)? / (n as f64).sqrt())?,
            });
        }
        rows.push(Tensor::cat(&parts, 0)?);
    }
    Tensor::stack(&rows, 0)
}

/// `x / max(‖x‖₂, 1e-12)` row by row, as `torch.nn.functional.normalize`.
fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norms = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
    x.broadcast_div(&norms)
}

/// A vector as JSON numbers (each the shortest decimal that reads back as the same f32).
pub fn vector_to_json(vector: &[f32]) -> Result<Value, ModelError> {
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

    /// Packed `ids` and their `positions` (each within its own text), token type 0 for all.
    fn forward(&self, ids: &Tensor, positions: &Tensor) -> candle_core::Result<Tensor> {
        let token_type = self.token_type.embeddings().get(0)?;
        let xs = (self.word.forward(ids)? + self.position.forward(positions)?)?;
        self.layer_norm.forward(&xs.broadcast_add(&token_type)?)
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
}

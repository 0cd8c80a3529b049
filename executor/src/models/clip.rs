//! CLIP (HF `CLIPModel` directories): the `image-embeddings` task. Each image becomes
//! transformers' `get_image_features` (the vision tower's pooled class token through
//! `visual_projection`), each text `get_text_features` (the text tower at its end-of-text
//! token through `text_projection`), both L2-normalized.
//!
//! Read from the directory: `config.json` (its `vision_config` and `text_config`),
//! `model.safetensors`, `preprocessor_config.json` ([`super::image::Preprocessor`]) and,
//! for texts, `tokenizer.json` (a directory without one serves images only and refuses
//! texts). The towers are candle-transformers' CLIP modules; what they do not implement is
//! refused at load rather than served approximately: an activation other than
//! `quick_gelu`, a layer-norm epsilon other than 1e-5, a preprocessor whose output is not
//! the model's `image_size`.
//!
//! The text tower pools where transformers does: at the first `eos_token_id`, or, for
//! configs from before transformers fixed that id (`eos_token_id: 2`), at the largest
//! token id. Texts run unpadded (the causal mask makes padding irrelevant to the pooled
//! token), up to `max_position_embeddings` tokens (transformers refuses longer ones too).
//!
//! Jobs reach the model through [`super::embed::Embedder`]: images are decoded and
//! preprocessed on the job's thread (in parallel over the job's images), and the engine
//! packs every job's images into shared passes (32 at most). The vision tower is ours
//! ([`VisionTower`]: each linear layer one product over every token of the pass); the
//! text tower is candle-transformers'.

use std::path::Path;

use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig, ClipTextTransformer};
use candle_transformers::models::clip::vision_model::ClipVisionConfig;

use super::batch::Dense;
use ferry_core::images::{ImageSource, parse_source};
use ferry_core::input::{ImageEmbeddingsInput, check_text};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::embed::PassModel;
use super::image::{Preprocessor, decode};
use super::{ModelError, Placement, load_err};

/// One input of a job, ready for a pass.
pub enum ClipItem {
    /// Preprocessed pixels, channels first (3 x size x size).
    Image(Vec<f32>),
    /// Token ids, special tokens included.
    Text(Vec<u32>),
}

struct TextTower {
    model: ClipTextTransformer,
    projection: Linear,
    tokenizer: Tokenizer,
    /// `Some(id)`: pool at the first `id`; `None`: at the largest id (legacy configs).
    eos: Option<u32>,
    max_tokens: usize,
}

/// A loaded CLIP model.
pub struct ClipEmbedder {
    vision: VisionTower,
    visual_projection: Linear,
    text: Option<TextTower>,
    preprocessor: Preprocessor,
    image_size: usize,
    dimensions: usize,
    device: Device,
    dtype: DType,
}

fn usize_at(config: &Value, key: &str, default: Option<usize>, path: &Path) -> Result<usize, ModelError> {
    match config.get(key).and_then(Value::as_u64) {
        Some(v) if v > 0 => Ok(v as usize),
        None if default.is_some() && config.get(key).is_none_or(Value::is_null) => Ok(default.unwrap_or_default()),
        _ => Err(load_err(path, format!("{key} must be a positive integer"))),
    }
}

/// The tower config's activation and layer-norm epsilon, which must be what candle's CLIP
/// computes.
fn check_tower(config: &Value, tower: &str, path: &Path) -> Result<(), ModelError> {
    let act = config["hidden_act"].as_str().unwrap_or("quick_gelu");
    if act != "quick_gelu" {
        return Err(load_err(path, format!("{tower}.hidden_act {act:?} is not implemented (only quick_gelu)")));
    }
    let eps = config["layer_norm_eps"].as_f64().unwrap_or(1e-5);
    if (eps - 1e-5).abs() > 1e-12 {
        return Err(load_err(path, format!("{tower}.layer_norm_eps {eps} is not implemented (only 1e-5)")));
    }
    Ok(())
}

impl ClipEmbedder {
    /// Loads a `CLIPModel` directory (see the module doc for what is read and refused).
    pub fn load(dir: &Path, placement: &Placement) -> Result<ClipEmbedder, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| load_err(&path, e))?;
        let config: Value = serde_json::from_str(&text).map_err(|e| load_err(&path, e))?;
        let (vc, tc) = (&config["vision_config"], &config["text_config"]);
        if !vc.is_object() {
            return Err(load_err(&path, "no vision_config: not a CLIPModel config"));
        }
        check_tower(vc, "vision_config", &path)?;
        let projection_dim = usize_at(&config, "projection_dim", Some(512), &path)?;
        let vision_config = ClipVisionConfig {
            embed_dim: usize_at(vc, "hidden_size", Some(768), &path)?,
            activation: Activation::QuickGelu,
            intermediate_size: usize_at(vc, "intermediate_size", Some(3072), &path)?,
            num_hidden_layers: usize_at(vc, "num_hidden_layers", Some(12), &path)?,
            num_attention_heads: usize_at(vc, "num_attention_heads", Some(12), &path)?,
            projection_dim,
            num_channels: usize_at(vc, "num_channels", Some(3), &path)?,
            image_size: usize_at(vc, "image_size", Some(224), &path)?,
            patch_size: usize_at(vc, "patch_size", Some(32), &path)?,
        };
        if vision_config.num_channels != 3 {
            return Err(load_err(&path, "vision_config.num_channels must be 3 (RGB)"));
        }
        if !vision_config.embed_dim.is_multiple_of(vision_config.num_attention_heads)
            || !vision_config.image_size.is_multiple_of(vision_config.patch_size)
        {
            return Err(load_err(&path, "vision_config's sizes do not divide (hidden/heads, image/patch)"));
        }
        let image_size = vision_config.image_size;

        let preprocessor = Preprocessor::load(dir)?;
        // Any image comes out of the preprocessor at one size when it crops; without a crop
        // only an exact resize gives one.
        let out = match (preprocessor.crop, preprocessor.resize) {
            (Some(crop), _) => Some(crop),
            (None, Some((super::image::Resize::Exact(h, w), _))) => Some((h, w)),
            _ => None,
        };
        if out != Some((image_size, image_size)) {
            return Err(load_err(
                &dir.join("preprocessor_config.json"),
                format!("its images are not {image_size}x{image_size}, the model's image_size"),
            ));
        }

        let weights_path = dir.join("model.safetensors");
        let data = std::fs::read(&weights_path).map_err(|e| load_err(&weights_path, e))?;
        let vb = VarBuilder::from_buffered_safetensors(data, placement.dtype, &placement.device)
            .map_err(|e| load_err(&weights_path, e))?;
        if !vb.contains_tensor("vision_model.embeddings.class_embedding") {
            return Err(load_err(&weights_path, "no vision_model.embeddings.class_embedding: not CLIPModel weights"));
        }
        let vision =
            VisionTower::load(vb.pp("vision_model"), &vision_config).map_err(|e| load_err(&weights_path, e))?;
        let visual_projection =
            candle_nn::linear_no_bias(vision_config.embed_dim, projection_dim, vb.pp("visual_projection"))
                .map_err(|e| load_err(&weights_path, e))?;

        let tokenizer_path = dir.join("tokenizer.json");
        let text = if tokenizer_path.exists() && tc.is_object() {
            check_tower(tc, "text_config", &path)?;
            let text_config = ClipTextConfig {
                vocab_size: usize_at(tc, "vocab_size", Some(49408), &path)?,
                embed_dim: usize_at(tc, "hidden_size", Some(512), &path)?,
                activation: Activation::QuickGelu,
                intermediate_size: usize_at(tc, "intermediate_size", Some(2048), &path)?,
                max_position_embeddings: usize_at(tc, "max_position_embeddings", Some(77), &path)?,
                pad_with: None,
                num_hidden_layers: usize_at(tc, "num_hidden_layers", Some(12), &path)?,
                num_attention_heads: usize_at(tc, "num_attention_heads", Some(8), &path)?,
                projection_dim,
            };
            if !text_config.embed_dim.is_multiple_of(text_config.num_attention_heads) {
                return Err(load_err(&path, "text_config.hidden_size is not a multiple of num_attention_heads"));
            }
            let eos = match tc["eos_token_id"].as_u64().unwrap_or(49407) {
                2 => None,
                id => Some(id as u32),
            };
            let model =
                ClipTextTransformer::new(vb.pp("text_model"), &text_config).map_err(|e| load_err(&weights_path, e))?;
            let projection = candle_nn::linear_no_bias(text_config.embed_dim, projection_dim, vb.pp("text_projection"))
                .map_err(|e| load_err(&weights_path, e))?;
            let tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| load_err(&tokenizer_path, e))?;
            Some(TextTower { model, projection, tokenizer, eos, max_tokens: text_config.max_position_embeddings })
        } else {
            None
        };
        Ok(ClipEmbedder {
            vision,
            visual_projection,
            text,
            preprocessor,
            image_size,
            dimensions: projection_dim,
            device: placement.device.clone(),
            dtype: placement.dtype,
        })
    }

    /// Length of each output vector (`projection_dim`).
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The side of the square images the vision tower takes.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Whether texts can be embedded (the directory has a tokenizer).
    pub fn has_text(&self) -> bool {
        self.text.is_some()
    }

    /// A job's images decoded and preprocessed, then its texts tokenized, in that order:
    /// each problem an [`ModelError::InvalidInput`] naming its field (`input.images[i]`).
    pub fn prepare(&self, input: &ImageEmbeddingsInput) -> Result<Vec<ClipItem>, ModelError> {
        use rayon::prelude::*;
        // Images decode and preprocess in parallel (the first error in input order wins).
        let mut items = input
            .images
            .par_iter()
            .enumerate()
            .map(|(i, source)| {
                let field = format!("input.images[{i}]");
                let bytes = match parse_source(source).map_err(|m| ModelError::invalid(&field, m))? {
                    ImageSource::Data(bytes) => bytes,
                    ImageSource::Stored(_) => {
                        return Err(ModelError::invalid(&field, "the stored input could not be read on the executor"));
                    }
                };
                let image = decode(&bytes, &field)?;
                Ok(ClipItem::Image(self.preprocessor.pixels(&image)))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Result<Vec<_>, ModelError>>()?;
        if !input.texts.is_empty() {
            let tower = self.text.as_ref().ok_or_else(|| {
                ModelError::invalid(
                    "input.texts",
                    "this model serves images only (its directory has no tokenizer.json)",
                )
            })?;
            for (i, text) in input.texts.iter().enumerate() {
                let field = format!("input.texts[{i}]");
                check_text(text, &field)?;
                let encoding = tower
                    .tokenizer
                    .encode(text.as_str(), true)
                    .map_err(|e| ModelError::invalid(&field, format!("cannot tokenize: {e}")))?;
                let ids = encoding.get_ids().to_vec();
                if ids.len() > tower.max_tokens {
                    return Err(ModelError::invalid(
                        &field,
                        format!("is {} tokens, over the model's {}", ids.len(), tower.max_tokens),
                    ));
                }
                items.push(ClipItem::Text(ids));
            }
        }
        Ok(items)
    }

    fn image_features(&self, images: &[&Vec<f32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let s = self.image_size;
        let flat: Vec<f32> = images.iter().flat_map(|p| p.iter().copied()).collect();
        let pixels = Tensor::from_vec(flat, (images.len(), 3, s, s), &self.device)?.to_dtype(self.dtype)?;
        let pooled = self.vision.forward(&pixels)?;
        let features = self.visual_projection.forward(&pooled)?;
        normalized_rows(&features)
    }

    fn text_features(&self, ids: &[u32]) -> Result<Vec<f32>, ModelError> {
        let tower = self.text.as_ref().ok_or_else(|| ModelError::Runtime("no text tower".into()))?;
        let at = match tower.eos {
            Some(eos) => ids.iter().position(|&t| t == eos).unwrap_or(0),
            // The first largest id, as torch's argmax picks it.
            None => ids.iter().enumerate().fold(0, |best, (i, &t)| if t > ids[best] { i } else { best }),
        };
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let hidden = tower.model.forward_with_mask(&input, usize::MAX)?;
        let pooled = hidden.i((.., at, ..))?;
        let features = tower.projection.forward(&pooled)?;
        Ok(normalized_rows(&features)?.remove(0))
    }
}

/// The vision transformer, on the engine's stacked-rows layers: every linear layer is one
/// matrix product over all the pass's images' tokens (candle's CLIP multiplies each image's
/// 50 rows on their own), the patch embedding a product over the flattened patches, and
/// attention in f32.
struct VisionTower {
    patch: Dense,
    class: Tensor,
    positions: Tensor,
    pre_norm: LayerNorm,
    layers: Vec<VisionLayer>,
    post_norm: LayerNorm,
    patch_size: usize,
    hidden: usize,
    heads: usize,
}

struct VisionLayer {
    norm1: LayerNorm,
    qkv: Dense,
    out: Dense,
    norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
}

fn dense(vb: &VarBuilder, parts: &[&str], rows: usize, cols: usize) -> candle_core::Result<Dense> {
    let weights = parts.iter().map(|p| vb.get((rows, cols), &format!("{p}.weight"))).collect::<Result<Vec<_>, _>>()?;
    let biases = parts.iter().map(|p| vb.get(rows, &format!("{p}.bias"))).collect::<Result<Vec<_>, _>>()?;
    Dense::fused(&weights, Some(&biases))
}

impl VisionTower {
    fn load(vb: VarBuilder, c: &ClipVisionConfig) -> candle_core::Result<VisionTower> {
        let (hidden, p) = (c.embed_dim, c.patch_size);
        let seq = (c.image_size / p).pow(2) + 1;
        let e = vb.pp("embeddings");
        let patch = e.get((hidden, c.num_channels, p, p), "patch_embedding.weight")?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layers.{i}"));
                let a = l.pp("self_attn");
                Ok(VisionLayer {
                    norm1: candle_nn::layer_norm(hidden, 1e-5, l.pp("layer_norm1"))?,
                    qkv: dense(&a, &["q_proj", "k_proj", "v_proj"], hidden, hidden)?,
                    out: dense(&a, &["out_proj"], hidden, hidden)?,
                    norm2: candle_nn::layer_norm(hidden, 1e-5, l.pp("layer_norm2"))?,
                    fc1: dense(&l.pp("mlp"), &["fc1"], c.intermediate_size, hidden)?,
                    fc2: dense(&l.pp("mlp"), &["fc2"], hidden, c.intermediate_size)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(VisionTower {
            patch: Dense::new(patch.reshape((hidden, c.num_channels * p * p))?),
            class: e.get(hidden, "class_embedding")?.reshape((1, 1, hidden))?,
            positions: e.get((seq, hidden), "position_embedding.weight")?,
            pre_norm: candle_nn::layer_norm(hidden, 1e-5, vb.pp("pre_layrnorm"))?,
            layers,
            post_norm: candle_nn::layer_norm(hidden, 1e-5, vb.pp("post_layernorm"))?,
            patch_size: p,
            hidden,
            heads: c.num_attention_heads,
        })
    }

    /// `pixels` (b x 3 x size x size) to the pooled class tokens (b x hidden), as
    /// transformers' `CLIPVisionTransformer` computes `pooler_output`.
    fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, _) = pixels.dims4()?;
        let (p, hidden) = (self.patch_size, self.hidden);
        let g = h / p;
        let seq = g * g + 1;
        // The patch convolution (stride = kernel) as one product over the flattened patches.
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let x = self.patch.forward(&patches)?.reshape((b, g * g, hidden))?;
        let class = self.class.broadcast_as((b, 1, hidden))?.contiguous()?;
        let x = Tensor::cat(&[&class, &x], 1)?.broadcast_add(&self.positions)?;
        let mut x = self.pre_norm.forward(&x.reshape((b * seq, hidden))?)?;
        for layer in &self.layers {
            x = layer.forward(&x, b, seq, self.heads)?;
        }
        let class = x.reshape((b, seq, hidden))?.i((.., 0, ..))?.contiguous()?;
        self.post_norm.forward(&class)
    }
}

impl VisionLayer {
    /// `x`: the pass's tokens stacked (b * seq x hidden).
    fn forward(&self, x: &Tensor, b: usize, seq: usize, heads: usize) -> candle_core::Result<Tensor> {
        let hidden = x.dim(1)?;
        let hd = hidden / heads;
        let dtype = x.dtype();
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?;
        let qkv = qkv.reshape((b, seq, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?.to_dtype(DType::F32)?;
        let q = (qkv.i(0)?.contiguous()? * (hd as f64).powf(-0.5))?;
        let (k, v) = (qkv.i(1)?.contiguous()?, qkv.i(2)?.contiguous()?);
        let weights = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let attended = weights.matmul(&v)?.permute((0, 2, 1, 3))?.contiguous()?.reshape((b * seq, hidden))?;
        let x = (x + self.out.forward(&attended.to_dtype(dtype)?)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?;
        let h = (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?;
        x + self.fc2.forward(&h)?
    }
}

/// Each row of `x` (n x d) divided by its L2 norm, in f32.
fn normalized_rows(x: &Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
    let x = x.to_dtype(DType::F32)?;
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
    Ok(x.broadcast_div(&norm)?.to_vec2::<f32>()?)
}

impl PassModel for ClipEmbedder {
    type Item = ClipItem;
    const UNIT: &'static str = "inputs";

    /// Every image of the pass in one batch through the vision tower; each text on its own.
    fn embed_batch(&self, batch: &[&ClipItem]) -> Result<Vec<Vec<f32>>, ModelError> {
        let images: Vec<&Vec<f32>> =
            batch.iter().filter_map(|item| if let ClipItem::Image(p) = item { Some(p) } else { None }).collect();
        let mut image_vectors = if images.is_empty() { Vec::new() } else { self.image_features(&images)? }.into_iter();
        batch
            .iter()
            .map(|item| match item {
                ClipItem::Image(_) => image_vectors.next().ok_or_else(|| ModelError::Runtime("missing vector".into())),
                ClipItem::Text(ids) => self.text_features(ids),
            })
            .collect()
    }

    fn output(&self, vectors: Vec<Value>) -> Value {
        json!({"embeddings": vectors, "dimensions": self.dimensions})
    }
}

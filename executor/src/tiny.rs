//! A tiny, random, but complete Hugging Face Llama model directory, written in code: the
//! model `ferry dev` serves as its demo `tiny-llama`, and the fixture of every test that
//! runs the real loading and generation code without downloading a model.
//!
//! [`write_tiny_llama`] writes what [`crate::models::llama::LlamaModel::load`] reads from a
//! real checkpoint (`config.json`, `model.safetensors`, `tokenizer.json`), small enough that
//! loading it and generating a hundred tokens takes milliseconds on a CPU. It needs nothing
//! beyond this crate's own dependencies (`serde_json`, `safetensors`).
//!
//! Choices, and why:
//!
//! - **Shape** ([`TINY_CONFIG`]): hidden 64, 2 layers, 4 attention heads over 2 key/value
//!   heads (so grouped-query attention is exercised), intermediate 128, context
//!   [`TINY_CONTEXT`] (128) positions, RoPE theta 10000, untied `lm_head`.
//! - **Weights** are deterministic for a seed (a splitmix64 stream, uniform values), scaled
//!   like a trained network rather than like a fresh one: linear layers have standard
//!   deviation `1/sqrt(fan_in)` and embeddings 1, so every layer changes the logits
//!   noticeably (logits spread over about one unit). With the usual `N(0, 0.02)` init at this
//!   width the attention layers barely move the output and a test comparing, say, cached
//!   and uncached decoding could not tell a broken cache from a working one. Norm weights
//!   are 1.
//! - **The `lm_head` rows of the special tokens (`<unk>`, `<s>`, `</s>`) are zero**: their
//!   logit is exactly 0 while ordinary tokens spread around it, so greedy decoding never
//!   picks them and sampling picks them rarely. Tests therefore get full-length outputs. To
//!   test stopping on an end-of-sequence token, point `eos_token_id` (in `config.json` or a
//!   `generation_config.json`) at an ordinary token the model is known to produce.
//! - **Tokenizer**: a SentencePiece-style BPE like Llama 2's, built in code: a `Metaspace`
//!   pre-tokenizer (spaces become `▁`, one is prepended to the text) and the matching
//!   `Metaspace` decoder, so `decode(encode(text))` gives the text back (without the
//!   prepended space). The vocabulary (a few hundred entries, [`tiny_vocab`]) holds the
//!   special tokens `<unk>` = 0, `<s>` = 1 (BOS), `</s>` = 2 (EOS), the letters, digits and
//!   some punctuation, a few non-ASCII characters (`é`, `ü`, `日`, ...) as whole tokens,
//!   and about a hundred common English words as `▁word` tokens reached through merges.
//!   Characters outside the vocabulary encode to `<unk>` (no byte fallback, so decoding is
//!   stable as the output grows: the text of a prefix of the ids is a prefix of the text).
//! - **BOS is added by the tokenizer itself**: [`write_tiny_llama`]'s `tokenizer.json` has a
//!   `TemplateProcessing` post-processor that puts `<s>` before the text when it is encoded
//!   with special tokens, as Llama 2's does. [`write_tiny_llama_no_bos`] writes the same
//!   model with no post-processor, for checking that the executor never adds a BOS the
//!   tokenizer does not.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};

/// Id of `<unk>` in the tiny tokenizer.
pub const TINY_UNK_ID: u32 = 0;
/// Id of `<s>` (BOS) in the tiny tokenizer.
pub const TINY_BOS_ID: u32 = 1;
/// Id of `</s>` (EOS) in the tiny tokenizer (`config.json`'s `eos_token_id`).
pub const TINY_EOS_ID: u32 = 2;
/// `max_position_embeddings` of the tiny model: its context length in tokens.
pub const TINY_CONTEXT: usize = 128;

/// The tiny model's dimensions.
#[derive(Debug, Clone, Copy)]
pub struct TinyConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
}

/// What [`write_tiny_llama`] writes.
pub const TINY_CONFIG: TinyConfig = TinyConfig {
    hidden_size: 64,
    intermediate_size: 128,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: TINY_CONTEXT,
};

/// Writes a complete tiny random Llama model directory (`config.json`, `model.safetensors`,
/// `tokenizer.json`) into `dir`, creating it if needed. The weights depend only on `seed`.
/// The tokenizer adds `<s>` (BOS) itself when encoding with special tokens.
pub fn write_tiny_llama(dir: &Path, seed: u64) -> io::Result<()> {
    write_tiny(dir, seed, true)
}

/// Like [`write_tiny_llama`], but the tokenizer has no post-processor: encoding never adds a
/// BOS token.
pub fn write_tiny_llama_no_bos(dir: &Path, seed: u64) -> io::Result<()> {
    write_tiny(dir, seed, false)
}

/// A random Llama of the given shape with the tiny tokenizer (benchmarks use bigger shapes
/// than [`TINY_CONFIG`]; decode speed depends on the shape, not on the weights).
pub fn write_llama(dir: &Path, seed: u64, cfg: TinyConfig) -> io::Result<()> {
    write_shaped(dir, seed, true, cfg)
}

fn write_tiny(dir: &Path, seed: u64, with_bos: bool) -> io::Result<()> {
    write_shaped(dir, seed, with_bos, TINY_CONFIG)
}

fn write_shaped(dir: &Path, seed: u64, with_bos: bool, cfg: TinyConfig) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let vocab = tiny_vocab();
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "vocab_size": vocab.len(),
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "bos_token_id": TINY_BOS_ID,
        "eos_token_id": TINY_EOS_ID,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
    });
    write_json(&dir.join("config.json"), &config)?;
    write_json(&dir.join("tokenizer.json"), &tiny_tokenizer_json(with_bos))?;
    write_json(&dir.join("tokenizer_config.json"), &tiny_tokenizer_config())?;
    write_weights(&dir.join("model.safetensors"), vocab.len(), seed, cfg)
}

/// `tokenizer_config.json`: the special tokens and a plain chat template (`role: content`
/// lines, then `assistant:`), so chats and the OpenAI chat route work on the demo model.
pub fn tiny_tokenizer_config() -> Value {
    json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}\
                          {% if add_generation_prompt %}assistant:{% endif %}",
    })
}

fn write_json(path: &Path, value: &Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    std::fs::write(path, text)
}

/// Common words that get a `▁word` token of their own (each of their prefixes too).
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "with", "as",
    "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "hot", "word", "but", "what", "some",
    "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how", "said", "an", "each",
    "she", "which", "do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "write", "would",
    "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could",
    "go", "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water", "than", "call",
    "first", "who", "may", "down", "side", "been", "now", "find", "hello", "world", "ferry", "boat", "river", "once",
    "upon", "story", "café", "über",
];

/// Single characters in the vocabulary (besides `▁`).
const CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()éüñß日本語€—";

/// The tiny tokenizer's vocabulary, in id order, and the BPE merges building the words.
fn vocab_and_merges() -> (Vec<String>, Vec<(String, String)>) {
    let mut vocab: Vec<String> = ["<unk>", "<s>", "</s>", "▁"].iter().map(|s| s.to_string()).collect();
    vocab.extend(CHARS.chars().map(String::from));
    let mut merges = Vec::new();
    for word in WORDS {
        let mut piece = String::from("▁");
        for c in word.chars() {
            let next = format!("{piece}{c}");
            if !vocab.contains(&next) {
                vocab.push(next.clone());
                merges.push((piece.clone(), c.to_string()));
            }
            piece = next;
        }
    }
    (vocab, merges)
}

/// The tiny tokenizer's vocabulary, in id order (`<unk>`, `<s>`, `</s>`, `▁`, characters,
/// word pieces). Its length is the model's `vocab_size`.
pub fn tiny_vocab() -> Vec<String> {
    vocab_and_merges().0
}

/// The tiny tokenizer's `tokenizer.json`, with or without the post-processor adding `<s>`.
pub fn tiny_tokenizer_json(with_bos: bool) -> Value {
    let (vocab, merges) = vocab_and_merges();
    let vocab_map: serde_json::Map<String, Value> =
        vocab.iter().enumerate().map(|(id, token)| (token.clone(), json!(id))).collect();
    let merges: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let post_processor = if with_bos {
        json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [TINY_BOS_ID], "tokens": ["<s>"]}}
        })
    } else {
        Value::Null
    };
    let metaspace = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(TINY_UNK_ID, "<unk>"), special(TINY_BOS_ID, "<s>"), special(TINY_EOS_ID, "</s>")],
        "normalizer": null,
        "pre_tokenizer": metaspace,
        "post_processor": post_processor,
        "decoder": metaspace,
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": "<unk>",
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab_map,
            "merges": merges,
        }
    })
}

/// splitmix64: a tiny, good-enough PRNG, so the weights need no `rand`.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn next_signed_unit(&mut self) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        2.0 * u - 1.0
    }
}

/// How a tensor is initialized.
enum Init {
    Ones,
    /// Uniform with this standard deviation.
    Uniform(f32),
}

fn write_weights(path: &Path, vocab_size: usize, seed: u64, c: TinyConfig) -> io::Result<()> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let head_dim = h / c.num_attention_heads;
    let (q_out, kv_out) = (head_dim * c.num_attention_heads, head_dim * c.num_key_value_heads);
    let linear = |fan_in: usize| Init::Uniform(1.0 / (fan_in as f32).sqrt());

    let mut specs: Vec<(String, Vec<usize>, Init)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab_size, h], Init::Uniform(1.0)),
        ("model.norm.weight".into(), vec![h], Init::Ones),
        ("lm_head.weight".into(), vec![vocab_size, h], linear(h)),
    ];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        specs.push((format!("{p}.self_attn.q_proj.weight"), vec![q_out, h], linear(h)));
        specs.push((format!("{p}.self_attn.k_proj.weight"), vec![kv_out, h], linear(h)));
        specs.push((format!("{p}.self_attn.v_proj.weight"), vec![kv_out, h], linear(h)));
        specs.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q_out], linear(q_out)));
        specs.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h], linear(h)));
        specs.push((format!("{p}.mlp.up_proj.weight"), vec![i, h], linear(h)));
        specs.push((format!("{p}.mlp.down_proj.weight"), vec![h, i], linear(i)));
        specs.push((format!("{p}.input_layernorm.weight"), vec![h], Init::Ones));
        specs.push((format!("{p}.post_attention_layernorm.weight"), vec![h], Init::Ones));
    }
    // A fixed order (by name), so the values depend on the seed only.
    specs.sort_by(|a, b| a.0.cmp(&b.0));

    let mut rng = SplitMix64(seed);
    let sqrt3 = 3f32.sqrt();
    let mut data: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, shape, init) in specs {
        let n: usize = shape.iter().product();
        let mut values: Vec<f32> = match init {
            Init::Ones => vec![1.0; n],
            Init::Uniform(std) => (0..n).map(|_| rng.next_signed_unit() * std * sqrt3).collect(),
        };
        if name == "lm_head.weight" {
            // Zero rows for <unk>, <s>, </s>: see the module docs.
            for id in [TINY_UNK_ID, TINY_BOS_ID, TINY_EOS_ID] {
                let row = id as usize * h;
                values[row..row + h].fill(0.0);
            }
        }
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.insert(name, (shape, bytes));
    }
    let views = data
        .iter()
        .map(|(name, (shape, bytes))| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v)).map_err(io::Error::other)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(io::Error::other)
}

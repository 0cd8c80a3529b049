//! GGUF files (llama.cpp's format) as the catalog sees them: the header's metadata, read
//! without the tensors, so the API and `ferry dev` learn a file's family (`general.architecture`)
//! and its chat template (`tokenizer.chat_template`) the same way the executor does, without
//! candle. The executor reads the tensors with candle's reader.
//!
//! A model is a GGUF model when its catalog `path` is a `*.gguf` file, or a directory (an S3
//! model's cache, say) that holds exactly one `*.gguf` file and no `config.json`
//! ([`gguf_file`]). Its `tokenizer.json` (and `tokenizer_config.json`, `chat_template.jinja`,
//! `generation_config.json` when present) sits beside the file.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The GGUF architectures the executor serves, with the Hugging Face family each is (llama.cpp
/// writes Mistral checkpoints as `llama`, so a catalog entry may name either for those).
pub const ARCHITECTURES: &[(&str, &[&str])] = &[
    ("llama", &["LlamaForCausalLM", "MistralForCausalLM"]),
    ("qwen2", &["Qwen2ForCausalLM"]),
    ("qwen3", &["Qwen3ForCausalLM"]),
];

/// Why a GGUF file's header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read it: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a GGUF file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: GGUF architecture {arch:?} is not served by Ferry; supported: {list}", list = supported())]
    Unsupported { path: PathBuf, arch: String },
}

/// A metadata value. Arrays are kept only where asked for (the token list); others are
/// skipped over and recorded by their length.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
    /// An array not kept: its element count.
    Skipped(u64),
}

impl MetaValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            MetaValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// A GGUF file's metadata.
#[derive(Debug, Clone, Default)]
pub struct GgufMeta {
    pub values: BTreeMap<String, MetaValue>,
}

/// The strings and arrays a header may hold: beyond these it is not a model file but a
/// corrupt one (the largest real vocabularies are ~260,000 tokens).
const MAX_STRING: u64 = 16 << 20;
const MAX_ARRAY: u64 = 1 << 24;

/// Keys whose string arrays are kept.
const KEPT_ARRAYS: &[&str] = &["tokenizer.ggml.tokens"];

impl GgufMeta {
    /// Reads the header's metadata (versions 2 and 3, little-endian, as llama.cpp writes).
    pub fn read(path: &Path) -> Result<GgufMeta, GgufError> {
        let file = std::fs::File::open(path).map_err(|source| GgufError::Io { path: path.to_owned(), source })?;
        let mut r = Reader { inner: BufReader::new(file), path };
        if r.bytes::<4>()? != *b"GGUF" {
            return Err(r.format("the file does not start with GGUF"));
        }
        let version = u32::from_le_bytes(r.bytes()?);
        if !(2..=3).contains(&version) {
            return Err(r.format(format!("version {version} (2 and 3 are read)")));
        }
        let _tensors = r.u64()?;
        let count = r.u64()?;
        if count > MAX_ARRAY {
            return Err(r.format(format!("{count} metadata entries")));
        }
        let mut values = BTreeMap::new();
        for _ in 0..count {
            let key = r.string()?;
            let kind = u32::from_le_bytes(r.bytes()?);
            let keep = KEPT_ARRAYS.contains(&key.as_str());
            let value = r.value(kind, keep)?;
            values.insert(key, value);
        }
        Ok(GgufMeta { values })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.values.get(key)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }

    /// The token a `tokenizer.ggml.*_token_id` key names, as text.
    pub fn token(&self, id_key: &str) -> Option<&str> {
        let id = usize::try_from(self.get(id_key)?.as_i64()?).ok()?;
        match self.get("tokenizer.ggml.tokens")? {
            MetaValue::Strings(tokens) => tokens.get(id).map(String::as_str),
            _ => None,
        }
    }
}

/// The Hugging Face architectures a GGUF architecture is served as (`None`: not served).
pub fn families(gguf_arch: &str) -> Option<&'static [&'static str]> {
    ARCHITECTURES.iter().find(|(a, _)| *a == gguf_arch).map(|(_, f)| *f)
}

/// Whether a catalog architecture can be served from a GGUF file.
pub fn serves(hf_arch: &str) -> bool {
    ARCHITECTURES.iter().any(|(_, f)| f.contains(&hf_arch))
}

/// The file's Hugging Face architecture (the first of its family's names), refused with the
/// supported list when the executor cannot serve it.
pub fn hf_architecture(path: &Path, meta: &GgufMeta) -> Result<&'static str, GgufError> {
    let arch = meta
        .architecture()
        .ok_or_else(|| GgufError::Format { path: path.to_owned(), message: "no general.architecture".into() })?;
    families(arch).map(|f| f[0]).ok_or_else(|| GgufError::Unsupported { path: path.to_owned(), arch: arch.to_string() })
}

fn supported() -> String {
    ARCHITECTURES.iter().map(|(a, f)| format!("{a} ({})", f.join(", "))).collect::<Vec<_>>().join(", ")
}

/// The GGUF file a model path names: the path itself when it is a `*.gguf` file, or the one
/// `*.gguf` file of a directory without a `config.json`. `None`: not a GGUF model.
pub fn gguf_file(path: &Path) -> Option<PathBuf> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return Some(path.to_owned());
    }
    if !path.is_dir() || path.join("config.json").exists() {
        return None;
    }
    let mut found = std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The directory a GGUF model's other files sit in.
pub fn files_dir(gguf: &Path) -> PathBuf {
    match gguf.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

struct Reader<'a, R> {
    inner: R,
    path: &'a Path,
}

impl<R: Read> Reader<'_, R> {
    fn format(&self, message: impl Into<String>) -> GgufError {
        GgufError::Format { path: self.path.to_owned(), message: message.into() }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b).map_err(|e| self.format(format!("the header ends early ({e})")))?;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| self.format(format!("the header ends early ({e})")))?;
        if copied != n {
            return Err(self.format("the header ends early"));
        }
        Ok(())
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(self.format(format!("a string of {len} bytes")));
        }
        let mut v = vec![0u8; len as usize];
        self.inner.read_exact(&mut v).map_err(|e| self.format(format!("the header ends early ({e})")))?;
        while v.last() == Some(&0) {
            v.pop();
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    /// The size of a fixed-size value type (`None`: strings and arrays).
    fn fixed_size(kind: u32) -> Option<u64> {
        match kind {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        }
    }

    fn value(&mut self, kind: u32, keep_array: bool) -> Result<MetaValue, GgufError> {
        Ok(match kind {
            0 => MetaValue::Int(self.bytes::<1>()?[0] as i64),
            1 => MetaValue::Int(self.bytes::<1>()?[0] as i8 as i64),
            2 => MetaValue::Int(u16::from_le_bytes(self.bytes()?) as i64),
            3 => MetaValue::Int(i16::from_le_bytes(self.bytes()?) as i64),
            4 => MetaValue::Int(u32::from_le_bytes(self.bytes()?) as i64),
            5 => MetaValue::Int(i32::from_le_bytes(self.bytes()?) as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.bytes()?) as f64),
            7 => MetaValue::Bool(self.bytes::<1>()?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                let inner = u32::from_le_bytes(self.bytes()?);
                let n = self.u64()?;
                if n > MAX_ARRAY {
                    return Err(self.format(format!("an array of {n} values")));
                }
                match (inner, Self::fixed_size(inner)) {
                    (8, _) if keep_array => {
                        MetaValue::Strings((0..n).map(|_| self.string()).collect::<Result<_, _>>()?)
                    }
                    (_, Some(size)) => {
                        self.skip(n * size)?;
                        MetaValue::Skipped(n)
                    }
                    (8, None) => {
                        for _ in 0..n {
                            let len = self.u64()?;
                            self.skip(len)?;
                        }
                        MetaValue::Skipped(n)
                    }
                    _ => return Err(self.format(format!("an array of value type {inner}"))),
                }
            }
            10 => MetaValue::Int(u64::from_le_bytes(self.bytes()?) as i64),
            11 => MetaValue::Int(i64::from_le_bytes(self.bytes()?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.bytes()?)),
            other => return Err(self.format(format!("value type {other}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with `kvs` (already encoded as GGUF key/value bytes).
    fn header(kvs: &[Vec<u8>]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((kvs.len() as u64).to_le_bytes());
        for kv in kvs {
            b.extend(kv);
        }
        b
    }

    fn s(text: &str) -> Vec<u8> {
        let mut b = (text.len() as u64).to_le_bytes().to_vec();
        b.extend(text.as_bytes());
        b
    }

    fn kv_str(key: &str, value: &str) -> Vec<u8> {
        [s(key), 8u32.to_le_bytes().to_vec(), s(value)].concat()
    }

    fn kv_u32(key: &str, value: u32) -> Vec<u8> {
        [s(key), 4u32.to_le_bytes().to_vec(), value.to_le_bytes().to_vec()].concat()
    }

    fn kv_strings(key: &str, values: &[&str]) -> Vec<u8> {
        let mut b = [s(key), 9u32.to_le_bytes().to_vec(), 8u32.to_le_bytes().to_vec()].concat();
        b.extend((values.len() as u64).to_le_bytes());
        for v in values {
            b.extend(s(v));
        }
        b
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-gguf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_the_architecture_template_and_tokens_skipping_other_arrays() {
        let dir = temp_dir("read");
        let floats = {
            let mut b = [s("tokenizer.ggml.scores"), 9u32.to_le_bytes().to_vec(), 6u32.to_le_bytes().to_vec()].concat();
            b.extend(3u64.to_le_bytes());
            b.extend([0u8; 12]);
            b
        };
        let bytes = header(&[
            kv_str("general.architecture", "qwen2"),
            floats,
            kv_strings("tokenizer.ggml.tokens", &["<s>", "</s>", "hi"]),
            kv_strings("tokenizer.ggml.merges", &["h i"]),
            kv_u32("tokenizer.ggml.eos_token_id", 1),
            kv_str("tokenizer.chat_template", "{{ messages }}"),
        ]);
        let path = write(&dir, "m.gguf", &bytes);
        let meta = GgufMeta::read(&path).unwrap();
        assert_eq!(meta.architecture(), Some("qwen2"));
        assert_eq!(meta.token("tokenizer.ggml.eos_token_id"), Some("</s>"));
        assert_eq!(meta.get("tokenizer.ggml.scores"), Some(&MetaValue::Skipped(3)));
        assert_eq!(meta.get("tokenizer.ggml.merges"), Some(&MetaValue::Skipped(1)));
        assert_eq!(meta.get("tokenizer.chat_template").and_then(MetaValue::as_str), Some("{{ messages }}"));
        assert_eq!(hf_architecture(&path, &meta).unwrap(), "Qwen2ForCausalLM");
    }

    #[test]
    fn refuses_other_files_truncated_headers_and_unserved_architectures() {
        let dir = temp_dir("refuse");
        let not = write(&dir, "not.gguf", b"PK\x03\x04 a zip");
        assert!(matches!(GgufMeta::read(&not), Err(GgufError::Format { .. })));
        let full = header(&[kv_str("general.architecture", "gemma2")]);
        let cut = write(&dir, "cut.gguf", &full[..full.len() - 3]);
        let err = GgufMeta::read(&cut).unwrap_err().to_string();
        assert!(err.contains("ends early"), "{err}");
        let gemma = write(&dir, "gemma.gguf", &full);
        let meta = GgufMeta::read(&gemma).unwrap();
        let err = hf_architecture(&gemma, &meta).unwrap_err().to_string();
        assert!(err.contains("\"gemma2\"") && err.contains("qwen3 (Qwen3ForCausalLM)"), "{err}");
        let huge = [s("k"), 8u32.to_le_bytes().to_vec(), (1u64 << 40).to_le_bytes().to_vec()].concat();
        let huge = write(&dir, "huge.gguf", &header(&[huge]));
        assert!(GgufMeta::read(&huge).unwrap_err().to_string().contains("a string of"));
    }

    #[test]
    fn a_gguf_model_is_a_gguf_file_or_a_directory_of_one() {
        let dir = temp_dir("which");
        assert_eq!(gguf_file(&dir.join("x.GGUF")), Some(dir.join("x.GGUF")));
        assert_eq!(gguf_file(&dir), None);
        write(&dir, "a.gguf", b"");
        write(&dir, "tokenizer.json", b"{}");
        assert_eq!(gguf_file(&dir), Some(dir.join("a.gguf")));
        write(&dir, "b.gguf", b"");
        assert_eq!(gguf_file(&dir), None, "two files: which one is ambiguous");
        std::fs::remove_file(dir.join("b.gguf")).unwrap();
        write(&dir, "config.json", b"{}");
        assert_eq!(gguf_file(&dir), None, "a Hugging Face directory");
        assert_eq!(files_dir(Path::new("m.gguf")), PathBuf::from("."));
        assert_eq!(files_dir(&dir.join("a.gguf")), dir);
    }
}

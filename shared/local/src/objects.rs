//! The embedded results store: objects as files under a directory (`ferry dev` keeps it in
//! its private state dir), and URLs to them that `ferry dev` serves without credentials
//! while their signature holds, as a presigned S3 URL does.
//!
//! A URL is `{base}/dev/objects/{key}?expires={ms}&signature={hex}`, the signature an
//! HMAC-SHA256 of `"{key}\n{expires}"` under a random secret of this store, checked in
//! constant time ([`DirObjects::verify`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::auth::{constant_time_eq, hmac_sha256};
use ferry_core::job::Millis;
use ferry_core::objects::{ObjectError, ObjectStore, ObjectUrl};

/// The path prefix of the URLs [`DirObjects::url`] signs.
pub const URL_PATH: &str = "/dev/objects/";

/// Objects as files under one directory.
pub struct DirObjects {
    root: PathBuf,
    secret: [u8; 32],
    /// The HTTP address that serves [`URL_PATH`] (known once `ferry dev` has bound it).
    base: OnceLock<String>,
}

impl DirObjects {
    /// Objects under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> DirObjects {
        let mut secret = [0u8; 32];
        secret[..16].copy_from_slice(&ulid::Ulid::new().random().to_be_bytes()[..16]);
        secret[16..].copy_from_slice(&ulid::Ulid::new().random().to_be_bytes()[..16]);
        DirObjects { root: root.into(), secret, base: OnceLock::new() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Signs URLs under `base` (`http://127.0.0.1:PORT`) from now on; the first call wins.
    pub fn serve_at(&self, base: &str) {
        let _ = self.base.set(base.trim_end_matches('/').to_string());
    }

    /// Whether `signature` signs `key` until `expires`, and `expires` is still ahead of `now`.
    pub fn verify(&self, key: &str, expires: Millis, signature: &str, now: Millis) -> bool {
        now < expires && constant_time_eq(self.sign(key, expires).as_bytes(), signature.as_bytes())
    }

    fn sign(&self, key: &str, expires: Millis) -> String {
        hex::encode(hmac_sha256(&self.secret, format!("{key}\n{expires}").as_bytes()))
    }

    /// The file of `key`, for keys of the shape Ferry makes (`inputs/ID.json`,
    /// `outputs/ID/N.json`): anything else (`..`, absolute paths, odd characters) is None.
    fn path(&self, key: &str) -> Option<PathBuf> {
        let ok = !key.is_empty()
            && key.len() <= 256
            && key.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            });
        ok.then(|| self.root.join(key))
    }
}

fn io_error(key: &str, e: std::io::Error) -> ObjectError {
    ObjectError::Unavailable(format!("object {key}: {e}"))
}

#[async_trait]
impl ObjectStore for DirObjects {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), ObjectError> {
        let path = self.path(key).ok_or_else(|| ObjectError::Refused(format!("invalid object key {key:?}")))?;
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io_error(&key, e))?;
            }
            // Written aside and renamed, so a reader never sees half an object.
            let partial = path.with_extension(format!("partial-{}", ulid::Ulid::new()));
            std::fs::write(&partial, &body).map_err(|e| io_error(&key, e))?;
            std::fs::rename(&partial, &path).map_err(|e| io_error(&key, e))
        })
        .await
        .map_err(|e| ObjectError::Unavailable(e.to_string()))?
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ObjectError> {
        let Some(path) = self.path(key) else { return Ok(None) };
        let read = tokio::task::spawn_blocking(move || std::fs::read(path));
        match read.await.map_err(|e| ObjectError::Unavailable(e.to_string()))? {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(key, e)),
        }
    }

    async fn url(&self, key: &str, ttl: Duration, now: Millis) -> Result<Option<ObjectUrl>, ObjectError> {
        let Some(base) = self.base.get() else { return Ok(None) };
        let expires_at = now + ttl.as_millis() as u64;
        let signature = self.sign(key, expires_at);
        Ok(Some(ObjectUrl {
            url: format!("{base}{URL_PATH}{key}?expires={expires_at}&signature={signature}"),
            expires_at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_round_trip_and_urls_verify_until_they_expire() {
        let dir = std::env::temp_dir().join(format!("ferry-objects-{}", ulid::Ulid::new()));
        let store = DirObjects::new(&dir);
        assert_eq!(store.get("outputs/A/1.json").await.unwrap(), None);
        store.put("outputs/A/1.json", b"[1,2]".to_vec()).await.unwrap();
        assert_eq!(store.get("outputs/A/1.json").await.unwrap(), Some(b"[1,2]".to_vec()));
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "a b", ""] {
            assert!(store.put(bad, vec![]).await.is_err(), "{bad:?}");
            assert_eq!(store.get(bad).await.unwrap(), None, "{bad:?}");
        }
        assert_eq!(store.url("outputs/A/1.json", Duration::from_secs(60), 1_000).await.unwrap(), None);
        store.serve_at("http://127.0.0.1:9/");
        let url = store.url("outputs/A/1.json", Duration::from_secs(60), 1_000).await.unwrap().unwrap();
        assert_eq!(url.expires_at, 61_000);
        let signature = url.url.rsplit_once("signature=").unwrap().1;
        assert!(url.url.starts_with("http://127.0.0.1:9/dev/objects/outputs/A/1.json?expires=61000&"));
        assert!(store.verify("outputs/A/1.json", 61_000, signature, 60_999));
        assert!(!store.verify("outputs/A/1.json", 61_000, signature, 61_000), "expired");
        assert!(!store.verify("outputs/A/2.json", 61_000, signature, 1_000), "another key");
        assert!(!store.verify("outputs/A/1.json", 62_000, signature, 1_000), "another expiry");
        assert!(!DirObjects::new(&dir).verify("outputs/A/1.json", 61_000, signature, 1_000), "another store");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

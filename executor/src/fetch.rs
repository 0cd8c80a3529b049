//! Model directories stored in S3: a catalog entry with `s3_uri: "s3://bucket/prefix"` and no
//! `path` is copied, object by object, into a local cache directory the first time an
//! executor needs it, then loaded from there like any other directory. A manifest beside the
//! files (`.ferry-manifest.json`: each file's S3 ETag and size) says what the cache holds: a
//! file whose object still has that ETag is not downloaded again, so a restarted executor on
//! the same host (or a volume kept between tasks) starts without the copy, and retrained
//! weights of the same shape (same size, new ETag) are fetched. Executors sharing a host
//! take an exclusive lock on the model's cache (`<dir>.lock`) while they sync it, and write
//! each file under a name of their own before renaming it into place.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::models::ModelError;

/// `s3://bucket/prefix` split into (bucket, prefix without a trailing `/`).
pub fn parse_s3_uri(uri: &str) -> Result<(String, String), ModelError> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| ModelError::Load(format!("{uri}: an S3 location starts with s3://")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(ModelError::Load(format!("{uri}: no bucket")));
    }
    Ok((bucket.to_string(), prefix.trim_end_matches('/').to_string()))
}

/// The cache directory for a model: `<cache>/<model id with '/' as '--'>`.
pub fn cache_dir(cache: &Path, model_id: &str) -> PathBuf {
    cache.join(model_id.replace('/', "--"))
}

/// What the cache holds of a model: each file (relative path) with the ETag and size of the
/// object it was downloaded from.
type Manifest = BTreeMap<String, CachedFile>;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CachedFile {
    etag: String,
    size: u64,
}

const MANIFEST: &str = ".ferry-manifest.json";

/// Copies every object under the URI's prefix into `dir` (keeping the relative paths), and
/// returns how many bytes were downloaded. Keys that would leave `dir` are refused. Holds
/// the model's cache lock throughout, so two executors on one host never write it at once.
pub async fn sync_s3_dir(s3: &aws_sdk_s3::Client, uri: &str, dir: &Path) -> Result<u64, ModelError> {
    let (bucket, prefix) = parse_s3_uri(uri)?;
    let list_prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    let mut objects = Vec::new();
    let mut pages = s3.list_objects_v2().bucket(&bucket).prefix(&list_prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ModelError::Load(format!("listing {uri}: {}", err_text(&e))))?;
        for object in page.contents() {
            if let Some(key) = object.key() {
                let etag = object.e_tag().unwrap_or_default().to_string();
                objects.push((key.to_string(), object.size().unwrap_or(-1), etag));
            }
        }
    }
    if objects.is_empty() {
        return Err(ModelError::Load(format!("{uri}: no objects under this prefix")));
    }
    let _lock = lock_cache(dir).await?;
    let manifest_path = dir.join(MANIFEST);
    let mut manifest: Manifest =
        std::fs::read(&manifest_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
    let mut downloaded = 0u64;
    for (key, size, etag) in objects {
        let relative = key.strip_prefix(&list_prefix).unwrap_or(&key);
        if relative.is_empty() || relative.ends_with('/') || relative == MANIFEST {
            continue; // a "directory" marker
        }
        let rel = Path::new(relative);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(ModelError::Load(format!(
                "{uri}: refusing object key {key:?} (it leaves the model directory)"
            )));
        }
        let target = dir.join(rel);
        let want = CachedFile { etag, size: size.max(0) as u64 };
        let cached = manifest.get(relative).is_some_and(|c| *c == want && !c.etag.is_empty())
            && std::fs::metadata(&target).is_ok_and(|m| m.len() == want.size);
        if cached {
            continue;
        }
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| ModelError::Load(format!("creating {}: {e}", parent.display())))?;
        }
        downloaded += download(s3, &bucket, &key, &target).await?;
        manifest.insert(relative.to_string(), want);
        write_manifest(&manifest_path, &manifest)?;
    }
    Ok(downloaded)
}

/// One object into `target`: written under a name no other process uses, then renamed into
/// place, so a crash or a concurrent writer never leaves a truncated file under its name.
async fn download(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, target: &Path) -> Result<u64, ModelError> {
    let object = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| ModelError::Load(format!("downloading s3://{bucket}/{key}: {}", err_text(&e))))?;
    let partial = unique_partial(target);
    let write_err = |e: std::io::Error| ModelError::Load(format!("writing {}: {e}", partial.display()));
    let mut file = tokio::fs::File::create(&partial).await.map_err(write_err)?;
    let mut body = object.body;
    let mut bytes = 0u64;
    while let Some(chunk) =
        body.try_next().await.map_err(|e| ModelError::Load(format!("downloading s3://{bucket}/{key}: {e}")))?
    {
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(write_err)?;
    }
    file.flush().await.map_err(write_err)?;
    drop(file);
    tokio::fs::rename(&partial, target)
        .await
        .map_err(|e| ModelError::Load(format!("writing {}: {e}", target.display())))?;
    Ok(bytes)
}

fn unique_partial(target: &Path) -> PathBuf {
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    target.with_file_name(format!(".{name}.{}.{}.ferry-partial", std::process::id(), ulid::Ulid::new()))
}

fn write_manifest(path: &Path, manifest: &Manifest) -> Result<(), ModelError> {
    let tmp = unique_partial(path);
    let bytes = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| ModelError::Load(format!("writing {}: {e}", path.display())))
}

/// An exclusive lock on the model's cache (`<dir>.lock`), held until dropped; waits for an
/// executor that holds it.
async fn lock_cache(dir: &Path) -> Result<std::fs::File, ModelError> {
    let path = dir.with_extension("lock");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ModelError::Load(format!("creating {}: {e}", parent.display())))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ModelError::Load(format!("opening {}: {e}", path.display())))?;
    tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .map_err(|e| ModelError::Load(format!("locking the model cache: {e}")))?
        .map_err(|e| ModelError::Load(format!("locking {}: {e}", path.display())))
}

fn err_text<E: std::error::Error>(e: &E) -> String {
    aws_sdk_s3::error::DisplayErrorContext(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(parse_s3_uri("s3://b/models/llama/").unwrap(), ("b".into(), "models/llama".into()));
        assert_eq!(parse_s3_uri("s3://b").unwrap(), ("b".into(), String::new()));
        assert!(parse_s3_uri("https://b/x").is_err());
        assert!(parse_s3_uri("s3:///x").is_err());
        assert_eq!(cache_dir(Path::new("/c"), "org/model"), PathBuf::from("/c/org--model"));
    }
}

//! Model directories stored in S3: a catalog entry with `s3_uri: "s3://bucket/prefix"` and no
//! `path` is copied, object by object, into a local cache directory the first time an
//! executor needs it, then loaded from there like any other directory. Files already in the
//! cache with the object's size are not downloaded again, so a restarted executor on the same
//! host (or a volume kept between tasks) starts without the copy.

use std::path::{Component, Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::models::ModelError;

/// An S3 client for `sdk`. With an endpoint override (an emulator such as moto, or an
/// S3-compatible store) it uses path-style addressing, which those expect.
pub fn s3_client(sdk: &ferry_aws::SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk).force_path_style(sdk.endpoint_url().is_some()).build();
    aws_sdk_s3::Client::from_conf(config)
}

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

/// Copies every object under the URI's prefix into `dir` (keeping the relative paths), and
/// returns how many bytes were downloaded. Keys that would leave `dir` are refused.
pub async fn sync_s3_dir(s3: &aws_sdk_s3::Client, uri: &str, dir: &Path) -> Result<u64, ModelError> {
    let (bucket, prefix) = parse_s3_uri(uri)?;
    let list_prefix = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    let mut objects = Vec::new();
    let mut pages = s3.list_objects_v2().bucket(&bucket).prefix(&list_prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ModelError::Load(format!("listing {uri}: {}", err_text(&e))))?;
        for object in page.contents() {
            if let Some(key) = object.key() {
                objects.push((key.to_string(), object.size().unwrap_or(-1)));
            }
        }
    }
    if objects.is_empty() {
        return Err(ModelError::Load(format!("{uri}: no objects under this prefix")));
    }
    let mut downloaded = 0u64;
    for (key, size) in objects {
        let relative = key.strip_prefix(&list_prefix).unwrap_or(&key);
        if relative.is_empty() || relative.ends_with('/') {
            continue; // a "directory" marker
        }
        let rel = Path::new(relative);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(ModelError::Load(format!(
                "{uri}: refusing object key {key:?} (it leaves the model directory)"
            )));
        }
        let target = dir.join(rel);
        if size >= 0 && std::fs::metadata(&target).is_ok_and(|m| m.len() == size as u64) {
            continue;
        }
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| ModelError::Load(format!("creating {}: {e}", parent.display())))?;
        }
        let object = s3
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| ModelError::Load(format!("downloading s3://{bucket}/{key}: {}", err_text(&e))))?;
        // Written beside and renamed into place: a crash never leaves a truncated file
        // that the size check would take for complete.
        let partial = target.with_extension("ferry-partial");
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| ModelError::Load(format!("writing {}: {e}", partial.display())))?;
        let mut body = object.body;
        while let Some(chunk) =
            body.try_next().await.map_err(|e| ModelError::Load(format!("downloading s3://{bucket}/{key}: {e}")))?
        {
            downloaded += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| ModelError::Load(format!("writing {}: {e}", partial.display())))?;
        }
        file.flush().await.map_err(|e| ModelError::Load(format!("writing {}: {e}", partial.display())))?;
        drop(file);
        tokio::fs::rename(&partial, &target)
            .await
            .map_err(|e| ModelError::Load(format!("writing {}: {e}", target.display())))?;
    }
    Ok(downloaded)
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

//! KMS's `Encrypt` and `Decrypt`, for what one table item must keep from anyone who can read
//! the table: the tenants' webhook signing secrets are sealed under the deployment's key with
//! the tenant in the encryption context, so reading them takes `kms:Decrypt` on that key for
//! that context as well as the item.
//!
//! Two JSON calls (`TrentService.Encrypt`, `TrentService.Decrypt`) signed with SigV4 from the
//! process's SDK configuration (its credentials, region and endpoint: moto in the tests).

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::SdkConfig;

/// Why a KMS call failed.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("KMS is not configured: {0}")]
    Config(String),
    /// The call was refused (access denied, a wrong key or context, a disabled key).
    #[error("KMS {operation} refused ({code}): {message}")]
    Refused { operation: &'static str, code: String, message: String },
    /// KMS could not be reached, throttled, or answered something unreadable.
    #[error("KMS {operation} failed: {message}")]
    Unavailable { operation: &'static str, message: String },
}

/// A KMS key to seal with.
#[derive(Clone)]
pub struct KmsKey {
    http: reqwest::Client,
    sdk: SdkConfig,
    endpoint: String,
    region: String,
    key_id: String,
}

impl std::fmt::Debug for KmsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKey").field("endpoint", &self.endpoint).field("key_id", &self.key_id).finish()
    }
}

impl KmsKey {
    /// The key `key_id` (an id, ARN or alias) through `sdk`'s region, credentials and endpoint.
    pub fn new(sdk: &SdkConfig, key_id: &str) -> Result<KmsKey, KmsError> {
        let region = sdk.region().ok_or_else(|| KmsError::Config("no region".into()))?.to_string();
        let endpoint = match sdk.endpoint_url() {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://kms.{region}.amazonaws.com"),
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| KmsError::Config(e.to_string()))?;
        Ok(KmsKey { http, sdk: sdk.clone(), endpoint, region, key_id: key_id.to_string() })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// `plaintext` encrypted under the key, bound to `context`.
    pub async fn encrypt(&self, plaintext: &[u8], context: &BTreeMap<&str, &str>) -> Result<Vec<u8>, KmsError> {
        let body = json!({"KeyId": self.key_id, "Plaintext": B64.encode(plaintext), "EncryptionContext": context});
        let out = self.call("Encrypt", &body).await?;
        decode(&out, "CiphertextBlob", "Encrypt")
    }

    /// `ciphertext` decrypted, if it was sealed under this key with `context`.
    pub async fn decrypt(&self, ciphertext: &[u8], context: &BTreeMap<&str, &str>) -> Result<Vec<u8>, KmsError> {
        let body =
            json!({"KeyId": self.key_id, "CiphertextBlob": B64.encode(ciphertext), "EncryptionContext": context});
        let out = self.call("Decrypt", &body).await?;
        decode(&out, "Plaintext", "Decrypt")
    }

    /// One KMS JSON call, signed. Public for tests that make keys on moto (`CreateKey`).
    pub async fn call(&self, operation: &'static str, body: &Value) -> Result<Value, KmsError> {
        let unavailable = |message: String| KmsError::Unavailable { operation, message };
        let body = body.to_string();
        let target = format!("TrentService.{operation}");
        let provider = self.sdk.credentials_provider().ok_or_else(|| KmsError::Config("no credentials".into()))?;
        let credentials = provider.provide_credentials().await.map_err(|e| KmsError::Config(e.to_string()))?;
        let identity = credentials.into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("kms")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| KmsError::Config(e.to_string()))?
            .into();
        let url = format!("{}/", self.endpoint);
        let headers = [("content-type", "application/x-amz-json-1.1"), ("x-amz-target", target.as_str())];
        let signable = SignableRequest::new("POST", &url, headers.into_iter(), SignableBody::Bytes(body.as_bytes()))
            .map_err(|e| KmsError::Config(e.to_string()))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| KmsError::Config(e.to_string()))?.into_parts();
        let mut request = http::Request::builder().method("POST").uri(&url).body(()).expect("a valid request");
        instructions.apply_to_request_http1x(&mut request);
        let mut call = self.http.post(&url).body(body);
        for (name, value) in headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(request.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())))
        {
            call = call.header(name, value);
        }
        let response = call.send().await.map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| unavailable(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let code = value["__type"].as_str().unwrap_or_default().rsplit('#').next().unwrap_or_default().to_string();
        let message = value["message"].as_str().or(value["Message"].as_str()).unwrap_or(&text).to_string();
        if status.is_server_error() || code.contains("Throttling") || code == "KMSInternalException" {
            return Err(unavailable(format!("{status} {code}: {message}")));
        }
        Err(KmsError::Refused { operation, code, message })
    }
}

fn decode(out: &Value, field: &str, operation: &'static str) -> Result<Vec<u8>, KmsError> {
    let text = out[field]
        .as_str()
        .ok_or_else(|| KmsError::Unavailable { operation, message: format!("the answer has no {field}") })?;
    B64.decode(text).map_err(|e| KmsError::Unavailable { operation, message: format!("{field}: {e}") })
}

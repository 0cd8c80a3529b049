//! The results store on S3 (`FERRY_RESULTS_BUCKET`): large job inputs and outputs as
//! objects, and presigned GET URLs to them. The bucket encrypts at rest by default (SSE-KMS
//! with the deployment's key, `infra/s3.tf`) and expires objects by prefix after the
//! jobs' retention, so nothing here sets either per object.

use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use ferry_core::job::Millis;
use ferry_core::objects::{ObjectError, ObjectStore, ObjectUrl};

use crate::SdkConfig;

/// Codes S3 answers a call that cannot succeed as it is with.
const REFUSAL_CODES: [&str; 5] =
    ["AccessDenied", "NoSuchBucket", "InvalidBucketName", "KMS.DisabledException", "InvalidRequest"];

/// An S3 client for `sdk`. With an endpoint override (an emulator such as moto, or an
/// S3-compatible store) it uses path-style addressing, which those expect.
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk).force_path_style(sdk.endpoint_url().is_some()).build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Objects in one bucket.
#[derive(Clone)]
pub struct S3Objects {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Objects {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> S3Objects {
        S3Objects { client, bucket: bucket.into() }
    }
}

fn object_err<E, R>(operation: &str, key: &str, err: SdkError<E, R>) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = format!("S3 {operation} {key}: {}", DisplayErrorContext(&err));
    tracing::error!(operation, key, error = %message, "S3 call failed");
    match err.code() {
        Some(code) if REFUSAL_CODES.contains(&code) => ObjectError::Refused(message),
        _ => ObjectError::Unavailable(message),
    }
}

#[async_trait]
impl ObjectStore for S3Objects {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| object_err("PutObject", key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ObjectError> {
        let out = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(object_err("GetObject", key, e)),
        };
        let body =
            out.body.collect().await.map_err(|e| ObjectError::Unavailable(format!("S3 GetObject {key}: {e}")))?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    async fn url(&self, key: &str, ttl: Duration, now: Millis) -> Result<Option<ObjectUrl>, ObjectError> {
        let config = PresigningConfig::builder()
            .start_time(UNIX_EPOCH + Duration::from_millis(now))
            .expires_in(ttl)
            .build()
            .map_err(|e| ObjectError::Refused(format!("presigning {key}: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| object_err("GetObject (presign)", key, e))?;
        Ok(Some(ObjectUrl { url: request.uri().to_string(), expires_at: now + ttl.as_millis() as u64 }))
    }

    fn redirects(&self) -> bool {
        true
    }
}

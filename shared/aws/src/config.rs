//! SDK configuration and the settings read from the environment.
//!
//! A deployed function reads everything from its environment ([`sdk_config_from_env`],
//! [`AwsSettings::from_lookup`]); tests and `ferry dev --backend aws` point at an emulator
//! with [`sdk_config_for_endpoint`], which reads nothing from the process environment, so
//! two test suites in one process never fight over `AWS_*` variables.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

use crate::AwsError;

/// The table name used when `FERRY_TABLE` is unset.
pub const DEFAULT_TABLE: &str = "ferry-jobs";
/// The queue name used when neither `FERRY_QUEUE_URL` nor `FERRY_QUEUE_NAME` is set.
pub const DEFAULT_QUEUE_NAME: &str = "ferry-work";

/// The region used against emulators: any valid region works there, but one is needed to sign.
const TEST_REGION: &str = "us-east-1";

/// The standard SDK configuration chain: region, credentials and endpoint from the
/// environment, profile files or instance metadata. Honours `AWS_ENDPOINT_URL` (and the
/// per-service `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL_SQS`).
pub async fn sdk_config_from_env() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// Configuration for an emulator at `endpoint` (e.g. `http://127.0.0.1:5000`): region
/// us-east-1, static credentials `test`/`test`, and nothing taken from the process
/// environment or profile files. Explicit credentials also keep the SDK from probing the
/// instance metadata endpoint, which would stall for seconds off EC2.
pub async fn sdk_config_for_endpoint(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        // An empty environment also hides HOME, so no profile file is read either.
        .empty_test_environment()
        .region(Region::new(TEST_REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "ferry-static"))
        .load()
        .await
}

/// Where the backend's resources are: the table name and the work queue's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub table: String,
    pub queue_url: String,
}

impl AwsSettings {
    /// Reads `FERRY_TABLE` (default `ferry-jobs`) and `FERRY_QUEUE_URL`, or failing that
    /// `FERRY_QUEUE_NAME` (default `ferry-work`), which is resolved with GetQueueUrl:
    /// queue URLs differ between AWS, moto and ElasticMQ, so they are never built by hand.
    pub async fn from_env(sqs: &aws_sdk_sqs::Client) -> Result<AwsSettings, AwsError> {
        Self::from_lookup(sqs, |name| std::env::var(name).ok()).await
    }

    /// [`AwsSettings::from_env`] over any variable lookup, so it can be tested without
    /// touching the process environment.
    pub async fn from_lookup(
        sqs: &aws_sdk_sqs::Client,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AwsSettings, AwsError> {
        let non_empty = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let table = table_from_lookup(&lookup);
        let queue_url = match non_empty("FERRY_QUEUE_URL") {
            Some(url) => url,
            None => {
                let name = non_empty("FERRY_QUEUE_NAME").unwrap_or_else(|| DEFAULT_QUEUE_NAME.to_string());
                resolve_queue_url(sqs, &name).await?
            }
        };
        Ok(AwsSettings { table, queue_url })
    }
}

/// `FERRY_TABLE`, or the default table name.
pub fn table_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> String {
    lookup("FERRY_TABLE").filter(|v| !v.trim().is_empty()).unwrap_or_else(|| DEFAULT_TABLE.to_string())
}

/// Looks a queue's URL up by name.
pub async fn resolve_queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String, AwsError> {
    let out =
        sqs.get_queue_url().queue_name(name).send().await.map_err(|e| AwsError::service("SQS", "GetQueueUrl", e))?;
    out.queue_url.ok_or_else(|| AwsError::Config(format!("GetQueueUrl returned no URL for queue {name:?}")))
}

//! SDK configuration and backend assembly.
//!
//! A deployed function reads everything from its environment ([`AwsBackend::from_env`]);
//! tests and `ferry dev --backend aws` point at an emulator with
//! [`sdk_config_for_endpoint`], which reads nothing from the process environment, so two
//! test suites in one process never fight over `AWS_*` variables.

use std::sync::Arc;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

use crate::AwsError;
use crate::connections::DynamoConnectionStore;
use crate::dynamo::{DynamoApiKeyStore, DynamoJobStore};
use crate::sqs::SqsWorkQueue;

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

/// The ports that live in the one DynamoDB table, over one client: jobs (and their
/// events), API keys, WebSocket connections. The `ws` Lambda needs only these.
#[derive(Debug, Clone)]
pub struct TableStores {
    pub jobs: Arc<DynamoJobStore>,
    pub keys: Arc<DynamoApiKeyStore>,
    pub connections: Arc<DynamoConnectionStore>,
}

impl TableStores {
    pub fn new(dynamo: aws_sdk_dynamodb::Client, table: &str) -> Self {
        TableStores {
            jobs: Arc::new(DynamoJobStore::new(dynamo.clone(), table)),
            keys: Arc::new(DynamoApiKeyStore::new(dynamo.clone(), table)),
            connections: Arc::new(DynamoConnectionStore::new(dynamo, table)),
        }
    }

    /// The stores for `sdk`, on `FERRY_TABLE`.
    pub fn from_env(sdk: &SdkConfig) -> Self {
        Self::from_lookup(sdk, |name| std::env::var(name).ok())
    }

    /// [`TableStores::from_env`] over any variable lookup.
    pub fn from_lookup(sdk: &SdkConfig, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let table = table_from_lookup(lookup);
        tracing::info!(%table, "DynamoDB stores configured");
        Self::new(aws_sdk_dynamodb::Client::new(sdk), &table)
    }
}

/// Looks a queue's URL up by name.
pub async fn resolve_queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String, AwsError> {
    let out =
        sqs.get_queue_url().queue_name(name).send().await.map_err(|e| AwsError::service("SQS", "GetQueueUrl", e))?;
    out.queue_url.ok_or_else(|| AwsError::Config(format!("GetQueueUrl returned no URL for queue {name:?}")))
}

/// The three AWS-backed ports, sharing clients (each SDK client holds a connection pool
/// and credentials cache, so they are built once per process, not per request).
#[derive(Debug, Clone)]
pub struct AwsBackend {
    pub jobs: Arc<DynamoJobStore>,
    pub keys: Arc<DynamoApiKeyStore>,
    pub connections: Arc<DynamoConnectionStore>,
    pub queue: Arc<SqsWorkQueue>,
}

impl AwsBackend {
    /// Everything from the environment: [`sdk_config_from_env`] and [`AwsSettings::from_env`].
    pub async fn from_env() -> Result<AwsBackend, AwsError> {
        Self::from_sdk(&sdk_config_from_env().await).await
    }

    /// Clients from `sdk`, the table and queue from [`AwsSettings::from_env`].
    pub async fn from_sdk(sdk: &SdkConfig) -> Result<AwsBackend, AwsError> {
        Self::from_lookup(sdk, |name| std::env::var(name).ok()).await
    }

    /// [`AwsBackend::from_sdk`] over any variable lookup.
    pub async fn from_lookup(sdk: &SdkConfig, lookup: impl Fn(&str) -> Option<String>) -> Result<AwsBackend, AwsError> {
        let dynamo = aws_sdk_dynamodb::Client::new(sdk);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let settings = AwsSettings::from_lookup(&sqs, lookup).await?;
        tracing::info!(table = %settings.table, queue_url = %settings.queue_url, "AWS backend configured");
        Ok(Self::from_clients(dynamo, sqs, &settings.table, &settings.queue_url))
    }

    /// The backend for a known table and queue URL.
    pub async fn connect(sdk: &SdkConfig, table: &str, queue_url: &str) -> AwsBackend {
        Self::from_clients(aws_sdk_dynamodb::Client::new(sdk), aws_sdk_sqs::Client::new(sdk), table, queue_url)
    }

    /// The backend over clients the caller already has.
    pub fn from_clients(
        dynamo: aws_sdk_dynamodb::Client,
        sqs: aws_sdk_sqs::Client,
        table: &str,
        queue_url: &str,
    ) -> AwsBackend {
        let TableStores { jobs, keys, connections } = TableStores::new(dynamo, table);
        AwsBackend { jobs, keys, connections, queue: Arc::new(SqsWorkQueue::new(sqs, queue_url)) }
    }
}

//! `ferry-aws`: the AWS adapters for the ports in [`ferry_core::ports`].
//!
//! - [`DynamoJobStore`] and [`DynamoApiKeyStore`]: jobs, idempotency bindings and API keys
//!   in one DynamoDB table (key `pk`, tenant index `gsi1`), see [`dynamo`].
//! - [`DynamoJobStore`] is also the `EventStore` (progress events next to their job), and
//!   [`DynamoConnectionStore`] keeps WebSocket connections and subscriptions, see [`connections`].
//! - [`SqsWorkQueue`]: the work queue on SQS, see [`sqs`].
//! - [`ApiGatewayNotifier`]: pushes to WebSocket connections (Management API), see [`notifier`].
//! - [`S3Objects`]: large inputs and outputs in the results bucket, see [`s3`](mod@s3).
//! - [`EcsLauncher`]: starts, lists and stops executor tasks on ECS (the `Launcher` port), see [`ecs`].
//! - [`config`]: SDK configuration from the environment (a Lambda) or for an explicit
//!   endpoint (tests, `ferry dev --backend aws` on moto), and the settings a process reads.
//! - [`root`]: all of the above as one `Ports` ([`AwsPorts::ports`]), and the Lambdas' roots.
//! - [`stream`]: reading the jobs table's DynamoDB stream records (the dispatcher Lambda's trigger).
//! - [`bootstrap`](mod@bootstrap): creating the table and the queues when they are missing.
//!
//! Adapters report failures as the ports' own `StoreError` / `QueueError`; only bootstrap
//! and configuration, which run before any handler, use [`AwsError`].

pub mod bootstrap;
pub mod config;
pub mod connections;
pub mod dynamo;
mod dynamo_codec;
mod dynamo_error;
mod dynamo_fleet;
mod dynamo_index;
pub mod ecs;
pub mod kms;
pub mod notifier;
pub mod root;
pub mod s3;
pub mod sqs;
pub mod stream;

pub use bootstrap::{QueueUrls, bootstrap, ensure_bucket, ensure_queues, ensure_table};
pub use config::{
    AwsSettings, DEFAULT_TABLE, Timeouts, sdk_config_for_endpoint, sdk_config_for_endpoint_as,
    sdk_config_for_endpoint_with, sdk_config_from_env,
};
pub use connections::DynamoConnectionStore;
pub use dynamo::{DynamoApiKeyStore, DynamoDeliveries, DynamoJobStore, DynamoWebhookSecrets};
pub use ecs::EcsLauncher;
pub use notifier::ApiGatewayNotifier;
pub use root::{AwsPorts, api_root_from_lookup, root_from_lookup, webhooks_root_from_lookup, ws_ports_from_lookup};
pub use s3::{S3Objects, s3_client};
pub use sqs::{SqsQueue, SqsWebhookQueue, SqsWorkQueue};

/// Re-exported so callers can build clients without naming the SDK crates themselves.
pub use aws_config::SdkConfig;

/// Errors from configuration and bootstrap, i.e. everything that happens before a port
/// is used. Port methods never return this: they speak `StoreError` / `QueueError`.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// A setting is missing or malformed.
    #[error("configuration error: {0}")]
    Config(String),
    /// An AWS call failed. `message` is the SDK error with its whole source chain.
    #[error("{service} {operation} failed: {message}")]
    Service { service: &'static str, operation: &'static str, message: String },
    /// A resource exists but does not have the shape Ferry needs (for example a table
    /// created by hand without the tenant index).
    #[error("incompatible resource: {0}")]
    Incompatible(String),
    /// A resource did not become ready in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl AwsError {
    /// Wraps an SDK error, keeping its full source chain in the message (the SDK's own
    /// `Display` only says "service error").
    pub(crate) fn service(
        service: &'static str,
        operation: &'static str,
        err: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        AwsError::Service {
            service,
            operation,
            message: aws_smithy_types::error::display::DisplayErrorContext(err).to_string(),
        }
    }
}

impl From<aws_smithy_types::error::operation::BuildError> for AwsError {
    /// A request builder missing a required field is a bug in this crate, but surfacing
    /// it as an error beats a panic during a cold start.
    fn from(err: aws_smithy_types::error::operation::BuildError) -> Self {
        AwsError::Config(format!("request could not be built: {err}"))
    }
}

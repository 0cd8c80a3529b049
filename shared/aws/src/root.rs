//! The AWS adapter set as one [`Ports`], built in one place ([`AwsPorts::ports`]) over
//! clients made once per process, and the roots the Lambdas run on, read from their
//! environment ([`root_from_lookup`], [`ws_ports_from_lookup`]).

use std::sync::Arc;

use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::deliver::WebhookQueue;
use ferry_core::fleet::Launcher;
use ferry_core::pool::Pools;
use ferry_core::ports::{NoNotifier, NoQueue, Notifier, Queues, SystemClock, SystemResolver, WorkQueue};
use ferry_core::root::{Ports, Root};

use crate::config::{AwsSettings, table_from_lookup};
use crate::{
    ApiGatewayNotifier, AwsError, DynamoApiKeyStore, DynamoConnectionStore, DynamoDeliveries, DynamoJobStore,
    DynamoWebhookSecrets, EcsLauncher, S3Objects, SdkConfig, SqsWebhookQueue, SqsWorkQueue,
};
use ferry_core::objects::{NoObjects, ObjectStore};

/// An environment lookup: the process environment in a binary, a map (or a recorder) in tests.
pub type Lookup<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// A process's AWS clients and its table. Cheap to clone (the clients share their
/// connection pools and credential caches).
#[derive(Clone)]
pub struct AwsPorts {
    sdk: SdkConfig,
    dynamo: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    table: String,
    stream_fanout: bool,
    results_bucket: Option<String>,
    webhook_queue_url: Option<String>,
    webhook_key: Option<crate::kms::KmsKey>,
}

impl AwsPorts {
    /// The clients for `sdk`, over the jobs table `table`.
    pub fn new(sdk: &SdkConfig, table: &str) -> AwsPorts {
        AwsPorts {
            sdk: sdk.clone(),
            dynamo: aws_sdk_dynamodb::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            table: table.to_string(),
            stream_fanout: false,
            results_bucket: None,
            webhook_queue_url: None,
            webhook_key: None,
        }
    }

    /// Large inputs and outputs go to the S3 bucket `bucket` (`FERRY_RESULTS_BUCKET`);
    /// without one (or with an empty name) they are refused with a clear error.
    pub fn with_results_bucket(mut self, bucket: Option<&str>) -> AwsPorts {
        self.results_bucket = bucket.map(str::trim).filter(|b| !b.is_empty()).map(String::from);
        self
    }

    /// Progress events this process stores are marked for the dispatcher Lambda, which
    /// pushes them from the table's stream (executors that cannot reach the Management API).
    pub fn with_stream_fanout(mut self) -> AwsPorts {
        self.stream_fanout = true;
        self
    }

    /// Webhook deliveries are queued on the SQS queue at `url` (`FERRY_WEBHOOK_QUEUE_URL`);
    /// without one, nothing is queued (a redelivery is refused with a clear error).
    pub fn with_webhook_queue(mut self, url: Option<&str>) -> AwsPorts {
        self.webhook_queue_url = url.map(str::trim).filter(|u| !u.is_empty()).map(String::from);
        self
    }

    /// Tenants' webhook secrets are sealed with the KMS key `key_id` (`FERRY_WEBHOOK_KEY_ID`:
    /// an id, ARN or alias); without one (or with an empty one) they are stored as they are,
    /// under the table's encryption at rest.
    pub fn with_webhook_key(mut self, key_id: Option<&str>) -> Result<AwsPorts, AwsError> {
        self.webhook_key = match key_id.map(str::trim).filter(|k| !k.is_empty()) {
            Some(id) => Some(crate::kms::KmsKey::new(&self.sdk, id).map_err(|e| AwsError::Config(e.to_string()))?),
            None => None,
        };
        Ok(self)
    }

    /// The webhook queue, or [`NoQueue`] without one.
    pub fn webhook_queue(&self) -> Arc<WebhookQueue> {
        match &self.webhook_queue_url {
            Some(url) => Arc::new(SqsWebhookQueue::new(self.sqs.clone(), url)),
            None => Arc::new(NoQueue),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.sqs
    }

    /// The SQS queue at `url`.
    pub fn queue(&self, url: impl Into<String>) -> Arc<dyn WorkQueue> {
        Arc::new(SqsWorkQueue::new(self.sqs.clone(), url))
    }

    /// Each pool's queue: its own `queue_url`, else the `default` queue; and dead-letter
    /// queues: a pool's `dlq_url`, else `default_dlq` for the pools on the default queue.
    pub fn queues(&self, pools: &Pools, default: &str, default_dlq: Option<&str>) -> Queues {
        let mut queues = Queues::single(self.queue(default));
        for p in pools.iter() {
            if let Some(url) = &p.queue_url {
                queues = queues.with_pool(p.name.clone(), self.queue(url.clone()));
            }
            let dlq = p.dlq_url.as_deref().or(if p.queue_url.is_none() { default_dlq } else { None });
            if let Some(url) = dlq {
                queues = queues.with_dlq(p.name.clone(), self.queue(url));
            }
        }
        queues
    }

    /// Executors on ECS (RunTask, ListTasks, DescribeTasks, StopTask).
    pub fn ecs(&self) -> Arc<dyn Launcher> {
        Arc::new(EcsLauncher::new(aws_sdk_ecs::Client::new(&self.sdk)))
    }

    /// The WebSocket API's Management endpoint, or no push at all (events are still stored).
    pub fn notifier(&self, endpoint: Option<&str>) -> Arc<dyn Notifier> {
        notifier(&self.sdk, endpoint)
    }

    /// The results bucket's objects, or [`NoObjects`] without one.
    pub fn objects(&self) -> Arc<dyn ObjectStore> {
        match &self.results_bucket {
            Some(bucket) => Arc::new(S3Objects::new(crate::s3_client(&self.sdk), bucket)),
            None => Arc::new(NoObjects),
        }
    }

    /// Every port: the table's stores (jobs and their events, connections, API keys, the
    /// fleet's records), the results bucket, with `queues`, `launcher` and `notifier`, on
    /// the system clock.
    pub fn ports(&self, queues: Queues, launcher: Arc<dyn Launcher>, notifier: Arc<dyn Notifier>) -> Ports {
        let jobs = Arc::new(DynamoJobStore::new(self.dynamo.clone(), &self.table));
        let events = match self.stream_fanout {
            true => Arc::new(DynamoJobStore::new(self.dynamo.clone(), &self.table).with_stream_fanout()),
            false => jobs.clone(),
        };
        Ports {
            jobs: jobs.clone(),
            events,
            connections: Arc::new(DynamoConnectionStore::new(self.dynamo.clone(), &self.table)),
            keys: Arc::new(DynamoApiKeyStore::new(self.dynamo.clone(), &self.table)),
            webhook_secrets: Arc::new(
                DynamoWebhookSecrets::new(self.dynamo.clone(), &self.table).sealed_with(self.webhook_key.clone()),
            ),
            deliveries: Arc::new(DynamoDeliveries::new(self.dynamo.clone(), &self.table)),
            webhook_queue: self.webhook_queue(),
            resolver: Arc::new(SystemResolver),
            objects: self.objects(),
            queues,
            pools: jobs,
            launcher,
            notifier,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Posts to WebSocket connections through the Management API at `endpoint`; with none,
/// pushes nothing ([`NoNotifier`]: events are still stored for replay).
pub fn notifier(sdk: &SdkConfig, endpoint: Option<&str>) -> Arc<dyn Notifier> {
    match endpoint.filter(|e| !e.trim().is_empty()) {
        Some(endpoint) => Arc::new(ApiGatewayNotifier::new(sdk, endpoint)),
        None => Arc::new(NoNotifier),
    }
}

/// What the api and dispatcher Lambdas run on, from their environment: the table
/// (`FERRY_TABLE`), the default queue (`FERRY_QUEUE_URL`, or `FERRY_QUEUE_NAME` looked up)
/// and its dead-letter queue (`FERRY_DLQ_URL`), each pool's own queues (`FERRY_POOLS`), ECS,
/// the Management endpoint (`FERRY_WS_MANAGEMENT_ENDPOINT`), the catalog (`FERRY_MODELS`)
/// and the service's settings. The only call it makes is GetQueueUrl, for a queue given by
/// name.
pub async fn root_from_lookup(sdk: &SdkConfig, env: Lookup<'_>) -> Result<Root, AwsError> {
    lambda_root(AwsPorts::new(sdk, &table_from_lookup(env)), env).await
}

/// The api Lambda's root: [`root_from_lookup`]'s, with the results bucket
/// (`FERRY_RESULTS_BUCKET`) it stores large inputs in and signs output URLs of, and the KMS
/// key that seals webhook secrets (`FERRY_WEBHOOK_KEY_ID`). (The dispatcher handles no input,
/// output or secret, so it has neither.)
pub async fn api_root_from_lookup(sdk: &SdkConfig, env: Lookup<'_>) -> Result<Root, AwsError> {
    let bucket = env("FERRY_RESULTS_BUCKET");
    if bucket.as_deref().is_none_or(|v| v.trim().is_empty()) {
        tracing::warn!("FERRY_RESULTS_BUCKET is not set: inputs over 64 KiB are refused with 413");
    }
    let aws = AwsPorts::new(sdk, &table_from_lookup(env))
        .with_results_bucket(bucket.as_deref())
        .with_webhook_key(webhook_key_from_lookup(env).as_deref())?;
    lambda_root(aws, env).await
}

/// The api's and the dispatcher's root over `aws`, from the rest of their environment (the
/// webhook queue: `FERRY_WEBHOOK_QUEUE_URL`).
async fn lambda_root(aws: AwsPorts, env: Lookup<'_>) -> Result<Root, AwsError> {
    let config_err = |e: &dyn std::fmt::Display| AwsError::Config(e.to_string());
    let webhook_queue = env("FERRY_WEBHOOK_QUEUE_URL");
    if webhook_queue.as_deref().is_none_or(|v| v.trim().is_empty()) {
        tracing::warn!("FERRY_WEBHOOK_QUEUE_URL is not set: webhooks are not delivered");
    }
    let aws = aws.with_webhook_queue(webhook_queue.as_deref());
    let settings = AwsSettings::from_lookup(&aws.sqs, env).await?;
    let default_dlq = env("FERRY_DLQ_URL").filter(|v| !v.trim().is_empty());
    let notifier = aws.notifier(env("FERRY_WS_MANAGEMENT_ENDPOINT").as_deref());
    if env("FERRY_WS_MANAGEMENT_ENDPOINT").is_none_or(|v| v.trim().is_empty()) {
        tracing::warn!("FERRY_WS_MANAGEMENT_ENDPOINT is not set: progress is stored, not pushed to WebSocket clients");
    }
    let catalog = Catalog::from_lookup(env).map_err(|e| config_err(&e))?;
    let pools = Pools::from_lookup(env).map_err(|e| config_err(&e))?.with_catalog(&catalog);
    let config = Config::from_lookup(env).map_err(|e| config_err(&e))?;
    let queues = aws.queues(&pools, &settings.queue_url, default_dlq.as_deref());
    tracing::info!(table = %aws.table, queue_url = %settings.queue_url, "AWS ports configured");
    Ok(Root::new(aws.ports(queues, aws.ecs(), notifier), catalog, pools, config))
}

/// What the `webhooks` Lambda runs on: the table (`FERRY_TABLE`), the webhook queue
/// (`FERRY_WEBHOOK_QUEUE_URL`, required), the results bucket whose output URLs its job views
/// sign (`FERRY_RESULTS_BUCKET`), the key the tenants' secrets are sealed with
/// (`FERRY_WEBHOOK_KEY_ID`) and the service's settings. It sends no work, launches nothing and
/// reads no catalog (job views need none).
pub fn webhooks_root_from_lookup(sdk: &SdkConfig, env: Lookup<'_>) -> Result<Root, AwsError> {
    let queue = env("FERRY_WEBHOOK_QUEUE_URL")
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| AwsError::Config("FERRY_WEBHOOK_QUEUE_URL is required: the webhook queue's URL".into()))?;
    let aws = AwsPorts::new(sdk, &table_from_lookup(env))
        .with_results_bucket(env("FERRY_RESULTS_BUCKET").as_deref())
        .with_webhook_queue(Some(&queue))
        .with_webhook_key(webhook_key_from_lookup(env).as_deref())?;
    let config = Config::from_lookup(env).map_err(|e| AwsError::Config(e.to_string()))?;
    let ports = aws.ports(Queues::none(), Arc::new(ferry_core::fleet::NoLauncher), Arc::new(NoNotifier));
    tracing::info!(table = %aws.table, "AWS ports configured");
    Ok(Root::new(ports, Catalog::default(), Pools::default(), config))
}

/// What the `ws` Lambda runs on: the table's ports and the Management API
/// (`FERRY_WS_MANAGEMENT_ENDPOINT`, required: replies are posted through it). It sends no
/// work and launches nothing, so it reads no queue or pool settings.
pub fn ws_ports_from_lookup(sdk: &SdkConfig, env: Lookup<'_>) -> Result<Ports, AwsError> {
    let endpoint = env("FERRY_WS_MANAGEMENT_ENDPOINT").filter(|v| !v.trim().is_empty()).ok_or_else(|| {
        AwsError::Config(
            "FERRY_WS_MANAGEMENT_ENDPOINT is required: the WebSocket API's Management endpoint, \
             https://{api-id}.execute-api.{region}.amazonaws.com/{stage}"
                .into(),
        )
    })?;
    let aws = AwsPorts::new(sdk, &table_from_lookup(env));
    tracing::info!(table = %aws.table, "AWS ports configured");
    Ok(aws.ports(Queues::none(), Arc::new(ferry_core::fleet::NoLauncher), aws.notifier(Some(&endpoint))))
}

/// `FERRY_WEBHOOK_KEY_ID`, warning when it is not set (webhook secrets are then stored unsealed).
pub fn webhook_key_from_lookup(env: Lookup<'_>) -> Option<String> {
    let key = env("FERRY_WEBHOOK_KEY_ID").filter(|v| !v.trim().is_empty());
    if key.is_none() {
        tracing::warn!(
            "FERRY_WEBHOOK_KEY_ID is not set: webhook secrets are stored unsealed (the table's encryption only)"
        );
    }
    key
}

//! The backends the conformance suite runs against: the embedded adapters, and the AWS
//! adapters on moto. Each call builds a fresh, isolated backend (new in-memory state, or
//! a uniquely named table and queue pair), so tests never see each other's data and can
//! run in parallel without resetting anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::fleet::{Launcher, NoLauncher};
use ferry_core::pool::Pools;
use ferry_core::ports::{Clock, NoNotifier, Notifier, Queues, WorkQueue};
use ferry_core::publish::ProgressHub;
use ferry_core::root::{Ports, Root};

use crate::moto;

/// Receives after which a message is dead-lettered, the same on both backends so one
/// test case holds for both.
pub const MAX_RECEIVE_COUNT: u32 = 3;

/// One set of adapters behind the port traits: the composition root's [`Ports`], built by
/// each adapter set's own builder (as every binary builds them), with no launcher and no
/// notifier; cases swap in what they need ([`Backend::with_notifier`], ...).
#[derive(Clone)]
pub struct Backend {
    pub ports: Ports,
    /// The `cpu` pool's queue (the one every job of the demo catalog goes to).
    pub queue: Arc<dyn WorkQueue>,
    /// Where `queue` dead-letters messages after [`MAX_RECEIVE_COUNT`] receives.
    pub dlq: Arc<dyn WorkQueue>,
    /// `"embedded"` or `"aws"`, for messages and the rare documented divergence.
    pub name: &'static str,
    /// The DynamoDB table (and bucket) name on moto; empty for the embedded backend.
    pub table: String,
}

impl std::ops::Deref for Backend {
    type Target = Ports;
    fn deref(&self) -> &Ports {
        &self.ports
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Backend {
    /// The same adapters, pushing progress through `notifier`.
    pub fn with_notifier(&self, notifier: Arc<dyn Notifier>) -> Backend {
        Backend { ports: Ports { notifier, ..self.ports.clone() }, ..self.clone() }
    }

    /// The same adapters, launching executors with `launcher`.
    pub fn with_launcher(&self, launcher: Arc<dyn Launcher>) -> Backend {
        Backend { ports: Ports { launcher, ..self.ports.clone() }, ..self.clone() }
    }

    /// The same adapters on `clock`.
    pub fn with_clock(&self, clock: Arc<dyn Clock>) -> Backend {
        Backend { ports: Ports { clock, ..self.ports.clone() }, ..self.clone() }
    }

    /// The same adapters, with the `cpu` pool's sends (or receives) failing on demand.
    pub fn with_failing_queue(&self) -> (Backend, Arc<crate::faults::QueueFails>) {
        let queue = crate::faults::QueueFails::new(self.queue.clone());
        let as_queue: Arc<dyn WorkQueue> = queue.clone();
        let queues =
            Queues::single(as_queue.clone()).with_pool("cpu", as_queue.clone()).with_dlq("cpu", self.dlq.clone());
        (Backend { ports: Ports { queues, ..self.ports.clone() }, queue: as_queue, ..self.clone() }, queue)
    }

    /// The same adapters, with the writes of a job's end failing on demand.
    pub fn with_failing_finish(&self) -> (Backend, Arc<crate::faults::FinishFails>) {
        let jobs = crate::faults::FinishFails::new(self.ports.jobs.clone());
        (Backend { ports: Ports { jobs: jobs.clone(), ..self.ports.clone() }, ..self.clone() }, jobs)
    }

    /// The same adapters with no results store (a deployment without `FERRY_RESULTS_BUCKET`).
    pub fn without_objects(&self) -> Backend {
        let objects = Arc::new(ferry_core::objects::NoObjects);
        Backend { ports: Ports { objects, ..self.ports.clone() }, ..self.clone() }
    }

    /// The progress path over these stores, pushing through `notifier`.
    pub fn hub(&self, notifier: Arc<dyn Notifier>) -> Arc<ProgressHub> {
        self.with_notifier(notifier).ports.hub()
    }

    /// The composition root over these ports, with `catalog`, default pools and config.
    pub fn root(&self, catalog: Catalog) -> Root {
        Root::new(self.ports.clone(), catalog, Pools::default(), Config::default())
    }
}

/// Fresh in-process adapters (large inputs and outputs in a new directory under the
/// system's temporary directory).
pub fn embedded() -> Backend {
    let objects = Arc::new(ferry_local::DirObjects::new(
        std::env::temp_dir().join("ferry-test-objects").join(ulid::Ulid::new().to_string()),
    ));
    let ports = ferry_local::ports(
        &["cpu".to_string()],
        MAX_RECEIVE_COUNT,
        Arc::new(NoLauncher),
        Arc::new(NoNotifier),
        objects,
    );
    let queue = ports.queues.for_pool("cpu").clone();
    let dlq = ports.queues.dlq("cpu").expect("the cpu pool's dead-letter queue").clone();
    Backend { ports, queue, dlq, name: "embedded", table: String::new() }
}

/// The AWS adapters on this process's shared moto server, over a new table, a new queue
/// with its dead-letter queue and a new results bucket. `None` when moto is not installed (outside CI; see
/// [`moto::shared`]). Panics when bootstrap fails: that is a test failure, not a skip.
pub async fn aws() -> Option<Backend> {
    let server = moto::shared()?;
    let sdk = ferry_aws::sdk_config_for_endpoint(&server.endpoint).await;
    let name = unique_name();
    ferry_aws::ensure_table(&aws_sdk_dynamodb::Client::new(&sdk), &name)
        .await
        .unwrap_or_else(|e| panic!("creating table {name} on moto at {}: {e}", server.endpoint));
    ferry_aws::ensure_bucket(&ferry_aws::s3_client(&sdk), &name)
        .await
        .unwrap_or_else(|e| panic!("creating bucket {name} on moto at {}: {e}", server.endpoint));
    // `bootstrap` would do both, but with the production maxReceiveCount; the suite needs
    // the embedded backend's.
    let aws = ferry_aws::AwsPorts::new(&sdk, &name).with_results_bucket(Some(&name));
    let urls = ferry_aws::ensure_queues(aws.sqs(), &name, MAX_RECEIVE_COUNT)
        .await
        .unwrap_or_else(|e| panic!("creating queue {name} on moto at {}: {e}", server.endpoint));
    let webhooks = aws.sqs().create_queue().queue_name(format!("{name}-webhooks")).send().await;
    let webhooks = webhooks.unwrap_or_else(|e| panic!("creating the webhook queue on moto: {e}"));
    let key = moto_kms_key(&sdk).await;
    let aws = aws.with_webhook_queue(webhooks.queue_url()).with_webhook_key(Some(&key)).unwrap();
    let (queue, dlq) = (aws.queue(urls.queue_url), aws.queue(urls.dlq_url));
    let queues = Queues::single(queue.clone()).with_pool("cpu", queue.clone()).with_dlq("cpu", dlq.clone());
    let ports = aws.ports(queues, Arc::new(NoLauncher), Arc::new(NoNotifier));
    Some(Backend { ports, queue, dlq, name: "aws", table: name })
}

/// [`aws`], with every AWS call going through a fault-injecting proxy in front of moto
/// (a [`crate::recorder::Recorder`]: [`crate::recorder::Recorder::inject`]), with `timeouts`.
pub async fn aws_through_proxy(timeouts: ferry_aws::Timeouts) -> Option<(Backend, crate::recorder::Recorder)> {
    let server = moto::shared()?;
    let direct = ferry_aws::sdk_config_for_endpoint(&server.endpoint).await;
    let name = unique_name();
    ferry_aws::ensure_table(&aws_sdk_dynamodb::Client::new(&direct), &name).await.unwrap();
    ferry_aws::ensure_bucket(&ferry_aws::s3_client(&direct), &name).await.unwrap();
    let urls = ferry_aws::ensure_queues(&aws_sdk_sqs::Client::new(&direct), &name, MAX_RECEIVE_COUNT).await.unwrap();
    let proxy = crate::recorder::Recorder::start(&server.endpoint).await;
    let sdk = ferry_aws::sdk_config_for_endpoint_with(&proxy.endpoint, &timeouts).await;
    let aws = ferry_aws::AwsPorts::new(&sdk, &name).with_results_bucket(Some(&name));
    let (queue, dlq) = (aws.queue(urls.queue_url), aws.queue(urls.dlq_url));
    let queues = Queues::single(queue.clone()).with_pool("cpu", queue.clone()).with_dlq("cpu", dlq.clone());
    let ports = aws.ports(queues, Arc::new(NoLauncher), Arc::new(NoNotifier));
    Some((Backend { ports, queue, dlq, name: "aws", table: name }, proxy))
}

/// A new symmetric KMS key on the moto server `sdk` points at: its id.
pub async fn moto_kms_key(sdk: &ferry_aws::SdkConfig) -> String {
    let kms = ferry_aws::kms::KmsKey::new(sdk, "none yet").unwrap();
    let made = kms.call("CreateKey", &serde_json::json!({"Description": "ferry tests"})).await;
    let made = made.unwrap_or_else(|e| panic!("creating a KMS key on moto: {e}"));
    made["KeyMetadata"]["KeyId"].as_str().expect("a key id").to_string()
}

/// A table and queue name no other test (in this process or another) uses: a ULID,
/// lower-cased, is unique across processes and valid for both services.
pub fn unique_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("ferry-{}-{seq}", ulid::Ulid::new().to_string().to_ascii_lowercase())
}

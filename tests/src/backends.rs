//! The backends the conformance suite runs against: the embedded adapters, and the AWS
//! adapters on moto. Each call builds a fresh, isolated backend (new in-memory state, or
//! a uniquely named table and queue pair), so tests never see each other's data and can
//! run in parallel without resetting anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::fleet::PoolStore;
use ferry_core::ports::{ApiKeyStore, ConnectionStore, EventStore, JobStore, Notifier, Queues, SystemClock, WorkQueue};
use ferry_core::publish::ProgressHub;
use ferry_core::service::JobService;

use crate::moto;

/// Receives after which a message is dead-lettered, the same on both backends so one
/// test case holds for both.
pub const MAX_RECEIVE_COUNT: u32 = 3;

/// One set of adapters behind the port traits.
#[derive(Clone)]
pub struct Backend {
    pub jobs: Arc<dyn JobStore>,
    /// The same store as `jobs` (an append moves the job's `last_seq`), as its other port.
    pub events: Arc<dyn EventStore>,
    pub connections: Arc<dyn ConnectionStore>,
    pub keys: Arc<dyn ApiKeyStore>,
    pub queue: Arc<dyn WorkQueue>,
    /// Where `queue` dead-letters messages after [`MAX_RECEIVE_COUNT`] receives.
    pub dlq: Arc<dyn WorkQueue>,
    /// The fleet's records (the same table as `jobs` on AWS).
    pub pools: Arc<dyn PoolStore>,
    /// `"embedded"` or `"aws"`, for messages and the rare documented divergence.
    pub name: &'static str,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Backend {
    /// The progress path over these stores, pushing through `notifier`.
    pub fn hub(&self, notifier: Arc<dyn Notifier>) -> ProgressHub {
        ProgressHub {
            jobs: self.jobs.clone(),
            events: self.events.clone(),
            connections: self.connections.clone(),
            notifier,
            clock: Arc::new(SystemClock),
        }
    }

    /// The job service over these stores with `catalog`, default config, publishing status
    /// changes through `hub`.
    pub fn service(&self, catalog: Catalog, hub: Arc<ProgressHub>) -> JobService {
        JobService {
            jobs: self.jobs.clone(),
            queues: Queues::single(self.queue.clone()).with_dlq("cpu", self.dlq.clone()),
            clock: Arc::new(SystemClock),
            catalog: Arc::new(catalog),
            config: Config::default(),
            progress: Some(hub),
            fleet: None,
        }
    }
}

/// Fresh in-process adapters.
pub fn embedded() -> Backend {
    use ferry_local::{MemoryApiKeyStore, MemoryConnectionStore, MemoryJobStore, MemoryQueue};
    let dlq = Arc::new(MemoryQueue::new());
    let queue = MemoryQueue::with_dead_letter(dlq.clone(), MAX_RECEIVE_COUNT);
    let jobs = Arc::new(MemoryJobStore::new());
    Backend {
        jobs: jobs.clone(),
        events: jobs,
        connections: Arc::new(MemoryConnectionStore::new()),
        keys: Arc::new(MemoryApiKeyStore::new()),
        queue: Arc::new(queue),
        dlq,
        pools: Arc::new(ferry_local::MemoryPoolStore::new()),
        name: "embedded",
    }
}

/// The AWS adapters on this process's shared moto server, over a new table and a new
/// queue with its dead-letter queue. `None` when moto is not installed (outside CI; see
/// [`moto::shared`]). Panics when bootstrap fails: that is a test failure, not a skip.
pub async fn aws() -> Option<Backend> {
    let server = moto::shared()?;
    let sdk = ferry_aws::sdk_config_for_endpoint(&server.endpoint).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);

    let name = unique_name();
    ferry_aws::ensure_table(&dynamo, &name)
        .await
        .unwrap_or_else(|e| panic!("creating table {name} on moto at {}: {e}", server.endpoint));
    // `bootstrap` would do both, but with the production maxReceiveCount; the suite needs
    // the embedded backend's.
    let urls = ferry_aws::ensure_queues(&sqs, &name, MAX_RECEIVE_COUNT)
        .await
        .unwrap_or_else(|e| panic!("creating queue {name} on moto at {}: {e}", server.endpoint));

    let jobs = Arc::new(ferry_aws::DynamoJobStore::new(dynamo.clone(), &name));
    let dynamo_for_pools = dynamo.clone();
    Some(Backend {
        jobs: jobs.clone(),
        events: jobs,
        connections: Arc::new(ferry_aws::DynamoConnectionStore::new(dynamo.clone(), &name)),
        keys: Arc::new(ferry_aws::DynamoApiKeyStore::new(dynamo.clone(), &name)),
        queue: Arc::new(ferry_aws::SqsWorkQueue::new(sqs.clone(), urls.queue_url)),
        dlq: Arc::new(ferry_aws::SqsWorkQueue::new(sqs, urls.dlq_url)),
        pools: Arc::new(ferry_aws::DynamoJobStore::new(dynamo_for_pools, &name)),
        name: "aws",
    })
}

/// A table and queue name no other test (in this process or another) uses: a ULID,
/// lower-cased, is unique across processes and valid for both services.
pub fn unique_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("ferry-{}-{seq}", ulid::Ulid::new().to_string().to_ascii_lowercase())
}

//! The fleet as the Lambdas assemble it from their environment: the pools
//! (`FERRY_POOLS` / `FERRY_POOLS_FILE`, plus defaults for the catalog's other pools), each
//! pool's SQS queue and dead-letter queue, the pool records in the jobs table, and the ECS
//! launcher. The api Lambda uses it read-only (`GET /v1/pools`, `queue_state`); the
//! dispatcher Lambda reconciles and runs the watchdog with it.

use std::sync::Arc;

use ferry_core::catalog::Catalog;
use ferry_core::dispatch::Dispatcher;
use ferry_core::pool::Pools;
use ferry_core::ports::{Clock, Queues};
use ferry_core::queue_state::Fleet;

use crate::config::AwsBackend;
use crate::{AwsError, DynamoJobStore, EcsLauncher, SdkConfig, SqsWorkQueue};

/// Pools, queues, the pool store and the launcher, built once per process.
#[derive(Clone)]
pub struct AwsFleet {
    pub pools: Pools,
    pub queues: Queues,
    pub store: Arc<DynamoJobStore>,
    pub launcher: Arc<EcsLauncher>,
}

impl AwsFleet {
    /// From `lookup` (the environment): pools from `FERRY_POOLS[_FILE]` with the catalog's
    /// pools added; a pool without its own `queue_url` uses the backend's queue (and
    /// `FERRY_DLQ_URL`, if set, as its dead-letter queue).
    pub fn from_lookup(
        sdk: &SdkConfig,
        backend: &AwsBackend,
        catalog: &Catalog,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AwsFleet, AwsError> {
        let pools = Pools::from_lookup(&lookup).map_err(|e| AwsError::Config(e.to_string()))?.with_catalog(catalog);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let mut queues = Queues::single(backend.queue.clone());
        let default_dlq = lookup("FERRY_DLQ_URL").filter(|v| !v.trim().is_empty());
        for p in pools.iter() {
            if let Some(url) = &p.queue_url {
                queues = queues.with_pool(p.name.clone(), Arc::new(SqsWorkQueue::new(sqs.clone(), url.clone())));
            }
            let dlq = p.dlq_url.clone().or_else(|| p.queue_url.is_none().then(|| default_dlq.clone()).flatten());
            if let Some(url) = dlq {
                queues = queues.with_dlq(p.name.clone(), Arc::new(SqsWorkQueue::new(sqs.clone(), url)));
            }
        }
        let launcher = EcsLauncher::new(aws_sdk_ecs::Client::new(sdk));
        Ok(AwsFleet { pools, queues, store: backend.jobs.clone(), launcher: Arc::new(launcher) })
    }

    /// What job views need to explain queued jobs.
    pub fn view(&self) -> Fleet {
        Fleet { pools: self.pools.clone(), store: self.store.clone() }
    }

    /// The dispatcher over ECS.
    pub fn dispatcher(&self, clock: Arc<dyn Clock>) -> Dispatcher {
        Dispatcher {
            pools: self.pools.clone(),
            queues: self.queues.clone(),
            store: self.store.clone(),
            launcher: self.launcher.clone(),
            clock,
        }
    }
}

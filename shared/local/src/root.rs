//! The embedded adapter set as one [`Ports`]: what `ferry dev` and the fast tests run on.

use std::sync::Arc;

use ferry_core::deliver::WebhookMessage;
use ferry_core::fleet::Launcher;
use ferry_core::objects::ObjectStore;
use ferry_core::ports::{Notifier, Queues, SystemClock, SystemResolver, WorkQueue};
use ferry_core::root::Ports;

use crate::{
    MemoryApiKeyStore, MemoryConnectionStore, MemoryDeliveries, MemoryJobStore, MemoryPoolStore, MemoryQueue,
    MemoryWebhookSecrets,
};

/// In-memory ports: one job store (also the event store), connections, keys and pool
/// records; a queue and a dead-letter queue for each of `pools` (a message received
/// `max_receive_count` times without being deleted moves to the dead-letter queue, as SQS
/// redrive does); the system clock; `launcher` and `notifier` as given. Pools not named
/// share the queue of `cpu` (or of the first pool). Large inputs and outputs go to `objects`
/// (a [`crate::DirObjects`]).
pub fn ports(
    pools: &[String],
    max_receive_count: u32,
    launcher: Arc<dyn Launcher>,
    notifier: Arc<dyn Notifier>,
    objects: Arc<dyn ObjectStore>,
) -> Ports {
    let named: Vec<&str> = if pools.is_empty() { vec!["cpu"] } else { pools.iter().map(String::as_str).collect() };
    let default = named.iter().find(|p| **p == "cpu").unwrap_or(&named[0]).to_string();
    let per_pool: Vec<(&str, Arc<dyn WorkQueue>, Arc<dyn WorkQueue>)> = named
        .iter()
        .map(|pool| {
            let dlq = Arc::new(MemoryQueue::new());
            let queue: Arc<dyn WorkQueue> = Arc::new(MemoryQueue::with_dead_letter(dlq.clone(), max_receive_count));
            (*pool, queue, dlq as Arc<dyn WorkQueue>)
        })
        .collect();
    let default_queue = per_pool.iter().find(|(p, _, _)| *p == default).map(|(_, q, _)| q.clone()).expect("a pool");
    let queues = per_pool
        .into_iter()
        .fold(Queues::single(default_queue), |qs, (pool, queue, dlq)| qs.with_pool(pool, queue).with_dlq(pool, dlq));
    let jobs = Arc::new(MemoryJobStore::new());
    Ports {
        jobs: jobs.clone(),
        events: jobs,
        connections: Arc::new(MemoryConnectionStore::new()),
        keys: Arc::new(MemoryApiKeyStore::new()),
        webhook_secrets: Arc::new(MemoryWebhookSecrets::new()),
        deliveries: Arc::new(MemoryDeliveries::new()),
        webhook_queue: Arc::new(MemoryQueue::<WebhookMessage>::with_dead_letter(
            Arc::new(MemoryQueue::new()),
            ferry_core::deliver::MAX_RECEIVES,
        )),
        resolver: Arc::new(SystemResolver),
        objects,
        queues,
        pools: Arc::new(MemoryPoolStore::new()),
        launcher,
        notifier,
        clock: Arc::new(SystemClock),
    }
}

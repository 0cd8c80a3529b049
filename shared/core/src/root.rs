//! The composition root. [`Ports`] holds every port a Ferry process runs on; each adapter
//! set builds it in one place (`ferry_aws::AwsPorts::ports` on AWS, `ferry_local::ports` in
//! memory, `ferry_local::remote::RemoteStack::ports` for `ferry dev`'s executor processes).
//! [`Root`] adds the settings (catalog, pools, config), and everything built over the ports
//! is derived from it by a method, never assembled by hand: the progress hub, the job
//! service, the fleet view, the dispatcher, the watchdog and the WebSocket API (the HTTP API
//! is `ferry_http::Api::new(&root)`).
//!
//! Building is pure: nothing here starts a task or makes a call. Processes that run
//! background work (`ferry dev`'s reconcile loop, executors) start it separately.

use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::deliver::{DeliverySettings, WebhookDeliveryStore, WebhookQueue, WebhookTransport, Webhooks};
use crate::dispatch::Dispatcher;
use crate::fleet::{Launcher, PoolStore};
use crate::objects::ObjectStore;
use crate::pool::Pools;
use crate::ports::{
    ApiKeyStore, Clock, ConnectionStore, EventStore, JobStore, Notifier, Queues, Resolver, WebhookSecretStore,
};
use crate::publish::ProgressHub;
use crate::queue_state::Fleet;
use crate::service::JobService;
use crate::watchdog::Watchdog;
use crate::ws::WsApi;

/// Every port of a process. A process that has no use for one holds its null adapter
/// ([`crate::ports::NoQueue`], [`crate::fleet::NoLauncher`], [`crate::ports::NoNotifier`]),
/// which fails each call with a clear error, so every method below is total.
#[derive(Clone)]
pub struct Ports {
    /// Job records (with their idempotency bindings).
    pub jobs: Arc<dyn JobStore>,
    /// Progress events. The same store as `jobs` in every adapter set (an append moves the
    /// job's `last_seq`), possibly configured differently (events marked for the stream).
    pub events: Arc<dyn EventStore>,
    /// WebSocket connections and their subscriptions.
    pub connections: Arc<dyn ConnectionStore>,
    /// Hashed API keys.
    pub keys: Arc<dyn ApiKeyStore>,
    /// Tenants' webhook signing secrets ([`crate::ports::NoWebhookSecrets`] in executors).
    pub webhook_secrets: Arc<dyn WebhookSecretStore>,
    /// Webhook deliveries ([`crate::deliver::NoDeliveries`] where none are made).
    pub deliveries: Arc<dyn WebhookDeliveryStore>,
    /// The webhook queue ([`crate::ports::NoQueue`] where nothing is delivered).
    pub webhook_queue: Arc<WebhookQueue>,
    /// Resolves webhook hosts ([`crate::ports::SystemResolver`] but in tests).
    pub resolver: Arc<dyn Resolver>,
    /// Large inputs and outputs (the results bucket; [`crate::objects::NoObjects`] where
    /// none is configured).
    pub objects: Arc<dyn ObjectStore>,
    /// The work queues: one per pool, with their dead-letter queues.
    pub queues: Queues,
    /// The dispatcher's pool records and the executors' heartbeats.
    pub pools: Arc<dyn PoolStore>,
    /// Starts, lists and stops executor tasks (ECS, local processes).
    pub launcher: Arc<dyn Launcher>,
    /// Pushes messages to WebSocket connections (the Management API, or the local gateway).
    pub notifier: Arc<dyn Notifier>,
    pub clock: Arc<dyn Clock>,
}

impl Ports {
    /// The progress path over these ports.
    pub fn hub(&self) -> Arc<ProgressHub> {
        Arc::new(ProgressHub {
            jobs: self.jobs.clone(),
            events: self.events.clone(),
            connections: self.connections.clone(),
            notifier: self.notifier.clone(),
            clock: self.clock.clone(),
        })
    }

    /// The WebSocket API (the `ws` Lambda's handler, and `ferry dev`'s local gateway's).
    pub fn ws(&self) -> WsApi {
        WsApi { hub: self.hub(), keys: self.keys.clone() }
    }
}

/// The ports and the settings every service over them reads.
#[derive(Clone)]
pub struct Root {
    pub ports: Ports,
    pub catalog: Arc<Catalog>,
    /// The pools, every catalog pool included (with defaults when not configured).
    pub pools: Pools,
    pub config: Config,
}

impl Root {
    /// The root over `ports`; the catalog's pools that `pools` does not configure get the
    /// defaults.
    pub fn new(ports: Ports, catalog: Catalog, pools: Pools, config: Config) -> Root {
        let pools = pools.with_catalog(&catalog);
        Root { ports, catalog: Arc::new(catalog), pools, config }
    }

    pub fn hub(&self) -> Arc<ProgressHub> {
        self.ports.hub()
    }

    /// What job views need to explain queued jobs (`queue_state`).
    pub fn fleet(&self) -> Fleet {
        Fleet { pools: self.pools.clone(), store: self.ports.pools.clone() }
    }

    /// The job service: lifecycle rules over the ports, publishing status changes.
    pub fn service(&self) -> JobService {
        JobService {
            jobs: self.ports.jobs.clone(),
            objects: self.ports.objects.clone(),
            queues: self.ports.queues.clone(),
            clock: self.ports.clock.clone(),
            catalog: self.catalog.clone(),
            config: self.config.clone(),
            progress: self.hub(),
            fleet: self.fleet(),
            resolver: self.ports.resolver.clone(),
        }
    }

    /// Webhook delivery, posting through `transport`.
    pub fn webhooks(&self, transport: Arc<dyn WebhookTransport>, settings: DeliverySettings) -> Webhooks {
        Webhooks {
            service: self.service(),
            deliveries: self.ports.deliveries.clone(),
            secrets: self.ports.webhook_secrets.clone(),
            queue: self.ports.webhook_queue.clone(),
            transport,
            settings,
        }
    }

    /// The dispatcher: launches executors per pool as the backlog calls for.
    pub fn dispatcher(&self) -> Dispatcher {
        Dispatcher {
            pools: self.pools.clone(),
            queues: self.ports.queues.clone(),
            store: self.ports.pools.clone(),
            launcher: self.ports.launcher.clone(),
            clock: self.ports.clock.clone(),
        }
    }

    /// The watchdog, stopping tasks whose cancel is not acknowledged within `cancel_grace_ms`.
    pub fn watchdog(&self, cancel_grace_ms: u64) -> Watchdog {
        Watchdog {
            service: self.service(),
            pools: self.pools.clone(),
            launcher: self.ports.launcher.clone(),
            cancel_grace_ms,
            resend_after_ms: crate::watchdog::DEFAULT_RESEND_AFTER_MS,
        }
    }
}

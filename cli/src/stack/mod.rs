//! The local stack `ferry dev` serves: the composition root over the embedded adapters
//! (default) or the AWS adapters pointed at `AWS_ENDPOINT_URL` (for example a moto server,
//! with missing tables and queues created), and on it the same HTTP and WebSocket APIs the
//! Lambdas run. [`build`] only builds (and registers the API keys); [`Stack::run`] starts
//! the background work: in-process executors, or the dispatcher's reconcile loop that
//! launches executor processes.

mod fleet;
mod options;

use std::sync::Arc;

use anyhow::Context;
use ferry_core::TenantId;
use ferry_core::auth::hash_api_key;
use ferry_core::deliver;
use ferry_core::fleet::{Launcher, NoLauncher};
use ferry_core::ports::{ApiKeyRecord, JobStore, Notifier, WorkQueue};
use ferry_core::root::{Ports, Root};
use ferry_core::ws::WsApi;
use ferry_executor::worker::{S3Models, Shutdown, Worker, WorkerConfig};
use ferry_http::Api;
use ferry_http::webhook_client::HttpTransport;
use ferry_local::DirObjects;
use ferry_local::gateway::{LocalNotifier, Registry};

pub use self::options::{
    BackendKind, DEMO_LLAMA, DEV_API_KEY, DEV_TENANT, ScaleOptions, StackOptions, build_catalog, dev_worker_config,
    parse_key_arg, resolve_dev_models,
};
use crate::launcher::ProcessLauncher;

/// A built stack, with the handles `ferry dev`, the tests and the demo use.
pub struct Stack {
    /// Every port, the catalog, the pools (the catalog's included) and the config.
    pub root: Root,
    /// The HTTP API (the api Lambda's handler).
    pub api: Arc<Api>,
    /// The WebSocket API (the ws Lambda's handler), for the local gateway.
    pub ws: Arc<WsApi>,
    /// The local gateway's open WebSocket connections (where the embedded notifier posts).
    pub registry: Arc<Registry>,
    /// The accepted keys, in clear (only `ferry dev` knows them; stores hold hashes).
    pub api_keys: Vec<(String, TenantId)>,
    /// The process launcher (with `scale`).
    pub launcher: Option<Arc<ProcessLauncher>>,
    /// The in-process executors, one per pool (with `executors`); [`Stack::run`] runs them.
    pub workers: Vec<Arc<Worker>>,
    /// The token of the loopback ports endpoint executor processes use (embedded backend
    /// with `scale`).
    pub ports_token: Option<String>,
    /// The token `ferry dev`'s local Management API and its progress driver require
    /// (`x-ferry-dev-token`, a bearer token, or as the access key id of a SigV4 signature),
    /// printed at start; its notifier and executor processes sign with it.
    pub dev_token: String,
    /// The embedded results store (large inputs and outputs), whose signed URLs the HTTP
    /// server answers at `/dev/objects/` (embedded backend).
    pub objects: Option<Arc<DirObjects>>,
    scale: Option<ScaleOptions>,
}

impl Drop for Stack {
    /// The embedded store's objects live as long as the in-memory jobs that refer to them.
    fn drop(&mut self) {
        if let Some(objects) = &self.objects {
            let _ = std::fs::remove_dir_all(objects.root());
        }
    }
}

impl Stack {
    pub fn jobs(&self) -> &Arc<dyn JobStore> {
        &self.root.ports.jobs
    }

    /// The queue of the `cpu` pool (the demo catalog's only pool).
    pub fn queue(&self) -> &Arc<dyn WorkQueue> {
        self.root.ports.queues.for_pool("cpu")
    }

    /// The ports executor processes reach over loopback, with their token (embedded
    /// backend with `scale`): what `ferry dev` serves on `POST /internal/v1/ports`.
    pub fn served_ports(&self) -> Option<(Ports, String)> {
        self.ports_token.clone().map(|token| (self.root.ports.clone(), token))
    }

    /// Runs the stack's background work until `shutdown` is set: the in-process executors,
    /// and with `scale` the dispatcher and the watchdog on a timer. Returns once the
    /// executors have stopped (they release running jobs after their grace period) and the
    /// executor processes have been asked to stop.
    pub async fn run(&self, shutdown: Shutdown) {
        let mut tasks = tokio::task::JoinSet::new();
        for w in &self.workers {
            let (w, stop) = (w.clone(), shutdown.clone());
            tasks.spawn(async move {
                w.run(stop).await;
            });
        }
        if let (Some(scale), Some(launcher)) = (&self.scale, &self.launcher) {
            let (root, scale, launcher, stop) = (self.root.clone(), scale.clone(), launcher.clone(), shutdown.clone());
            tasks.spawn(fleet::reconcile_loop(root, scale, stop, launcher));
        }
        match self.webhooks() {
            Ok(Some((webhooks, changes))) => {
                let stop = shutdown.clone();
                tasks.spawn(deliver::follow_changes(webhooks.clone(), changes, async move { stop.wait().await }));
                let stop = shutdown.clone();
                tasks.spawn(deliver::run_queue(webhooks, async move { stop.wait().await }));
            }
            Ok(None) => tracing::warn!("this backend has no change feed here: webhooks are not delivered by ferry dev"),
            Err(e) => {
                tracing::error!(error = %e, "the webhook transport could not be built: webhooks are not delivered")
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// The webhook deliverer, and the job store's change feed it queues from (the embedded
    /// store's; on AWS the dispatcher Lambda reads the table's stream instead).
    fn webhooks(&self) -> anyhow::Result<Option<(deliver::Webhooks, ferry_core::ports::JobChanges)>> {
        let Some(changes) = self.root.ports.jobs.changes() else { return Ok(None) };
        let transport = HttpTransport::new(self.root.config.webhook_policy, self.root.ports.resolver.clone())?;
        Ok(Some((self.root.webhooks(Arc::new(transport), Default::default()), changes)))
    }
}

/// Builds the stack and registers its keys; starts nothing.
pub async fn build(opts: &StackOptions) -> anyhow::Result<Stack> {
    let mut catalog = build_catalog(opts)?;
    if opts.executors || opts.scale.is_some() {
        resolve_dev_models(&mut catalog)?;
    }
    // `--max-batch-sequences` is every model's engine capacity unless its entry names one:
    // the executors (in process, or launched with this catalog) and the pools' default
    // jobs_per_task then agree.
    if let Some(n) = opts.worker.max_batch_sequences {
        for m in catalog.models.iter_mut().filter(|m| m.task != ferry_core::job::Task::Handler) {
            m.max_batch_sequences.get_or_insert(n as u32);
        }
    }
    let mut pools = opts.pools.clone().with_catalog(&catalog);
    if let Some(t) = opts.scale.as_ref().and_then(|s| s.idle_timeout_s) {
        pools = pools.map(|p| p.idle_timeout_s = t);
    }
    let api_keys = if opts.api_keys.is_empty() {
        vec![(DEV_API_KEY.to_string(), TenantId::new(DEV_TENANT)?)]
    } else {
        opts.api_keys.iter().map(|a| parse_key_arg(a)).collect::<anyhow::Result<Vec<_>>>()?
    };
    let registry = Arc::new(Registry::default());
    let sdk = match (opts.backend, &opts.aws_endpoint, &opts.management_endpoint) {
        (BackendKind::Aws, Some(endpoint), _) => Some(ferry_aws::sdk_config_for_endpoint(endpoint).await),
        (BackendKind::Aws, None, _) => Some(ferry_aws::sdk_config_from_env().await?),
        // The SDK notifier against the local gateway's Management API needs a configuration.
        (BackendKind::Embedded, _, Some(endpoint)) => Some(ferry_aws::sdk_config_for_endpoint(endpoint).await),
        (BackendKind::Embedded, _, None) => None,
    };
    let dev_token = format!("fdt_{}", ulid::Ulid::new().to_string().to_ascii_lowercase());
    let notifier: Arc<dyn Notifier> = match &opts.management_endpoint {
        Some(endpoint) => {
            let signer = ferry_aws::sdk_config_for_endpoint_as(endpoint, &dev_token).await;
            ferry_aws::root::notifier(&signer, Some(endpoint))
        }
        None => Arc::new(LocalNotifier { registry: registry.clone() }),
    };
    // Each pool gets its own queue and dead-letter queue, as the dispatcher counts a pool's
    // backlog from its queue. On AWS their URLs go to the executor processes.
    let names = pools.names();
    let (queues, queue_urls) = match (opts.backend, &sdk) {
        (BackendKind::Aws, Some(sdk)) => {
            let (q, urls) = fleet::aws_queues(sdk, opts, &names).await?;
            (Some(q), urls)
        }
        _ => (None, vec![]),
    };
    let ports_token =
        (opts.backend == BackendKind::Embedded && opts.scale.is_some()).then(|| ulid::Ulid::new().to_string());
    let (launcher, process_launcher): (Arc<dyn Launcher>, _) = match &opts.scale {
        Some(scale) => {
            let l = Arc::new(fleet::process_launcher(
                opts,
                scale,
                &catalog,
                ports_token.as_deref(),
                &dev_token,
                &queue_urls,
            )?);
            (l.clone(), Some(l))
        }
        None if opts.executors => (Arc::new(fleet::InProcessTasks(in_process_ids(opts, &pools, &catalog))), None),
        None => (Arc::new(NoLauncher), None),
    };
    let (ports, objects) = match (queues, &sdk) {
        (Some(queues), Some(sdk)) => {
            ferry_aws::ensure_bucket(&ferry_aws::s3_client(sdk), &opts.results_bucket)
                .await
                .context("creating the results bucket")?;
            let aws = ferry_aws::AwsPorts::new(sdk, &opts.table).with_results_bucket(Some(&opts.results_bucket));
            (aws.ports(queues, launcher, notifier), None)
        }
        _ => {
            let objects = Arc::new(DirObjects::new(options::objects_dir()));
            if let Some(url) = &opts.api_url {
                objects.serve_at(url);
            }
            let max_receives = ferry_aws::bootstrap::MAX_RECEIVE_COUNT;
            (ferry_local::ports(&names, max_receives, launcher, notifier, objects.clone()), Some(objects))
        }
    };
    // Under `ferry dev` webhooks may go to loopback over http (never to metadata addresses).
    let config =
        ferry_core::config::Config { webhook_policy: ferry_core::webhook::UrlPolicy::LOCAL, ..opts.config.clone() };
    let root = Root::new(ports, catalog, pools, config);
    for (key, tenant) in &api_keys {
        let record =
            ApiKeyRecord { key_hash: hash_api_key(key), tenant: tenant.clone(), created_at: root.ports.clock.now() };
        root.ports.keys.put(&record).await.context("registering API keys")?;
    }
    let workers = match opts.executors {
        true => in_process_workers(opts, &root, sdk.as_ref().filter(|_| opts.backend == BackendKind::Aws)),
        false => vec![],
    };
    Ok(Stack {
        api: Arc::new(Api::new(&root)),
        ws: Arc::new(root.ports.ws()),
        root,
        registry,
        api_keys,
        launcher: process_launcher,
        workers,
        ports_token,
        dev_token,
        objects,
        scale: opts.scale.clone(),
    })
}

/// The in-process executors' ids, by pool: one per pool that serves a catalog model.
fn in_process_ids(
    opts: &StackOptions,
    pools: &ferry_core::pool::Pools,
    catalog: &ferry_core::catalog::Catalog,
) -> Vec<(String, String)> {
    let serving = pools.names().into_iter().filter(|p| catalog.models.iter().any(|m| &m.pool == p));
    serving.map(|pool| (pool.clone(), format!("{}-{pool}", opts.worker.executor_id))).collect()
}

/// One in-process executor per pool with models. Under `--backend aws`, catalog entries
/// with an `s3_uri` are fetched from S3 (the emulator's) into the dev model cache.
fn in_process_workers(opts: &StackOptions, root: &Root, sdk: Option<&ferry_aws::SdkConfig>) -> Vec<Arc<Worker>> {
    in_process_ids(opts, &root.pools, &root.catalog)
        .into_iter()
        .map(|(pool, executor_id)| {
            let config = WorkerConfig { pool, executor_id, api_url: opts.api_url.clone(), ..opts.worker.clone() };
            let s3 = sdk.map(|sdk| S3Models {
                client: ferry_aws::s3_client(sdk),
                cache: options::state_dir().join("models").join("s3"),
            });
            Worker::with_s3(root, config, s3)
        })
        .collect()
}

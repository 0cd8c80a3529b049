//! Builds the local stack `ferry dev` serves: the same [`Api`] the Lambda runs, over the
//! embedded adapters (default) or the AWS adapters pointed at `AWS_ENDPOINT_URL` (for
//! example a moto server), with missing tables and queues created.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_core::TenantId;
use ferry_core::api::Api;
use ferry_core::auth::hash_api_key;
use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::ports::{
    ApiKeyRecord, ApiKeyStore, Clock, ConnectionStore, EventStore, JobStore, Notifier, SystemClock, WorkQueue,
};
use ferry_core::publish::ProgressHub;
use ferry_core::service::JobService;
use ferry_core::ws::WsApi;
use ferry_executor::worker::{S3Models, Shutdown, Worker, WorkerConfig};

use crate::gateway::{LocalNotifier, Registry};

/// The key `ferry dev` accepts when given none, and the CLI's default key: the dev server
/// listens on loopback only, so a well-known key is a convenience, not a hole.
pub const DEV_API_KEY: &str = "fry_dev_local_key";
/// The tenant of keys given without one.
pub const DEV_TENANT: &str = "dev";

/// Which adapters the stack runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// In-process store and queue: nothing else to run.
    Embedded,
    /// DynamoDB and SQS through the AWS SDK (`AWS_ENDPOINT_URL` for an emulator).
    Aws,
}

/// How to build the stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub backend: BackendKind,
    /// `KEY` or `KEY=TENANT`; empty means [`DEV_API_KEY`] for tenant [`DEV_TENANT`].
    pub api_keys: Vec<String>,
    /// `ID=DIR` Hugging Face model directories.
    pub models: Vec<String>,
    pub models_file: Option<PathBuf>,
    /// DynamoDB table and SQS queue names (AWS backend).
    pub table: String,
    pub queue: String,
    /// An explicit AWS endpoint; `None` reads the environment.
    pub aws_endpoint: Option<String>,
    /// Where progress is posted: a Management API endpoint (`ferry dev` passes its own
    /// gateway's, `http://{ws addr}`, under `--backend aws`, so the SDK's wire path is used),
    /// or `None` to post straight into the gateway's connection registry.
    pub management_endpoint: Option<String>,
    /// Run in-process executors for the catalog's pools (`ferry dev` does unless
    /// `--no-executor`), so submitted jobs complete with no other process.
    pub executors: bool,
    /// How the in-process executors run (their pool is set per pool).
    pub worker: WorkerConfig,
    pub config: Config,
}

impl StackOptions {
    /// Embedded adapters, the dev key, the demo catalog, default config.
    pub fn embedded() -> Self {
        StackOptions {
            backend: BackendKind::Embedded,
            api_keys: vec![],
            models: vec![],
            models_file: None,
            table: "ferry-jobs".into(),
            queue: "ferry-work".into(),
            aws_endpoint: None,
            management_endpoint: None,
            executors: false,
            worker: dev_worker_config(),
            config: Config::default(),
        }
    }
}

/// A built stack, with handles tests and the demo use.
pub struct Stack {
    pub api: Arc<Api>,
    pub jobs: Arc<dyn JobStore>,
    pub queue: Arc<dyn WorkQueue>,
    pub keys: Arc<dyn ApiKeyStore>,
    /// Stored progress events (the same object as `jobs`: an append moves the job's `last_seq`).
    pub events: Arc<dyn EventStore>,
    /// WebSocket connections and their subscriptions.
    pub connections: Arc<dyn ConnectionStore>,
    /// The accepted keys, in clear (only `ferry dev` knows them; stores hold hashes).
    pub api_keys: Vec<(String, TenantId)>,
    pub clock: Arc<dyn Clock>,
    /// The AWS SDK configuration (AWS backend only).
    pub sdk: Option<ferry_aws::SdkConfig>,
    /// The local gateway's open WebSocket connections.
    pub registry: Arc<Registry>,
    /// The progress path: the API publishes status changes through it, the gateway's
    /// subscribe replays through it, and executors publish through it.
    pub hub: Arc<ProgressHub>,
    /// The WebSocket API (the `ws` Lambda's handler).
    pub ws: Arc<WsApi>,
    /// The in-process executors, one per pool (empty unless `executors` was asked for).
    pub workers: Vec<Arc<Worker>>,
    /// Stops the executors (they release running jobs after their grace period).
    pub stop_workers: Shutdown,
}

/// `ferry dev`'s executors: poll often, never exit for idleness, 5 s grace on Ctrl-C.
pub fn dev_worker_config() -> WorkerConfig {
    WorkerConfig {
        executor_id: format!("dev-{}", ulid::Ulid::new()),
        idle_timeout: Duration::from_secs(365 * 86_400),
        grace_period: Duration::from_secs(5),
        poll_wait: Duration::from_secs(2),
        ..WorkerConfig::default()
    }
}

/// The id of the demo catalog's text-generation model, which `ferry dev` serves from a tiny
/// random-weight Llama it writes itself when no directory is given (its text is gibberish;
/// `--model tiny-llama=DIR` serves a real one).
pub const DEMO_LLAMA: &str = "tiny-llama";

/// Gives catalog entries without a `path` one `ferry dev` can serve: the demo Llama is
/// written to a cache directory (once). Others stay as they are (their jobs fail with a
/// clear error saying the catalog gives no path).
pub fn resolve_dev_models(catalog: &mut Catalog) -> anyhow::Result<()> {
    for spec in &mut catalog.models {
        if spec.path.is_none() && spec.s3_uri.is_none() && spec.id == DEMO_LLAMA {
            let dir = std::env::temp_dir().join("ferry-dev-models").join(DEMO_LLAMA);
            if !dir.join("model.safetensors").exists() {
                // Written beside and renamed into place, so two `ferry dev`s starting at once
                // never read a half-written model.
                let tmp = dir.with_extension(ulid::Ulid::new().to_string());
                ferry_executor::testing::write_tiny_llama(&tmp, 42)
                    .with_context(|| format!("writing the demo model to {}", tmp.display()))?;
                if std::fs::rename(&tmp, &dir).is_err() {
                    // Another process got there first (or an old, partial directory is in the way).
                    let _ = std::fs::remove_dir_all(&tmp);
                    if !dir.join("model.safetensors").exists() {
                        bail!("cannot write the demo model to {}", dir.display());
                    }
                }
            }
            spec.path = Some(dir);
        }
    }
    Ok(())
}

/// Parses `KEY` or `KEY=TENANT`.
pub fn parse_key_arg(arg: &str) -> anyhow::Result<(String, TenantId)> {
    let (key, tenant) = arg.split_once('=').unwrap_or((arg, DEV_TENANT));
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) || key.len() > 256 {
        bail!("API keys are 1 to 256 visible ASCII characters");
    }
    let tenant = TenantId::new(tenant).with_context(|| format!("bad tenant in --api-key {key}=..."))?;
    Ok((key.to_string(), tenant))
}

/// The catalog: a file and/or `--model` directories, else `FERRY_MODELS[_FILE]`, else the demo.
pub fn build_catalog(opts: &StackOptions) -> anyhow::Result<Catalog> {
    let mut models = match &opts.models_file {
        Some(path) => Catalog::from_file(path)?.models,
        None if opts.models.is_empty() => return Ok(Catalog::from_env()?),
        None => vec![],
    };
    for arg in &opts.models {
        models.push(Catalog::spec_from_arg(arg)?);
    }
    Ok(Catalog::new(models)?)
}

/// Builds the stack and registers its keys.
pub async fn build(opts: &StackOptions) -> anyhow::Result<Stack> {
    let mut catalog = build_catalog(opts)?;
    if opts.executors {
        resolve_dev_models(&mut catalog)?;
    }
    let catalog = Arc::new(catalog);
    let api_keys = if opts.api_keys.is_empty() {
        vec![(DEV_API_KEY.to_string(), TenantId::new(DEV_TENANT)?)]
    } else {
        opts.api_keys.iter().map(|a| parse_key_arg(a)).collect::<anyhow::Result<Vec<_>>>()?
    };
    type Adapters =
        (Arc<dyn JobStore>, Arc<dyn EventStore>, Arc<dyn WorkQueue>, Arc<dyn ApiKeyStore>, Arc<dyn ConnectionStore>);
    let mut sdk_config = None;
    let (jobs, events, queue, keys, connections): Adapters = match opts.backend {
        BackendKind::Embedded => {
            let dlq = Arc::new(ferry_local::MemoryQueue::new());
            let store = Arc::new(ferry_local::MemoryJobStore::new());
            (
                store.clone(),
                store,
                Arc::new(ferry_local::MemoryQueue::with_dead_letter(dlq, 5)),
                Arc::new(ferry_local::MemoryApiKeyStore::new()),
                Arc::new(ferry_local::MemoryConnectionStore::new()),
            )
        }
        BackendKind::Aws => {
            let sdk = match &opts.aws_endpoint {
                Some(endpoint) => ferry_aws::sdk_config_for_endpoint(endpoint).await,
                None => ferry_aws::sdk_config_from_env().await,
            };
            let urls = ferry_aws::bootstrap(&sdk, &opts.table, &opts.queue)
                .await
                .context("creating the DynamoDB table and SQS queues")?;
            let b = ferry_aws::AwsBackend::connect(&sdk, &opts.table, &urls.queue_url).await;
            sdk_config = Some(sdk);
            (b.jobs.clone(), b.jobs, b.queue, b.keys, b.connections)
        }
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let registry = Arc::new(Registry::default());
    let notifier: Arc<dyn Notifier> = match &opts.management_endpoint {
        None => Arc::new(LocalNotifier { registry: registry.clone() }),
        Some(endpoint) => {
            let sdk = match &sdk_config {
                Some(sdk) => sdk.clone(),
                None => ferry_aws::sdk_config_for_endpoint(endpoint).await,
            };
            Arc::new(ferry_aws::ApiGatewayNotifier::new(&sdk, endpoint))
        }
    };
    let hub = Arc::new(ProgressHub {
        jobs: jobs.clone(),
        events: events.clone(),
        connections: connections.clone(),
        notifier,
        clock: clock.clone(),
    });
    let ws = Arc::new(WsApi { hub: hub.clone(), keys: keys.clone() });
    for (key, tenant) in &api_keys {
        let record = ApiKeyRecord { key_hash: hash_api_key(key), tenant: tenant.clone(), created_at: clock.now() };
        keys.put(&record).await.context("registering API keys")?;
    }
    let service = JobService {
        jobs: jobs.clone(),
        queue: queue.clone(),
        clock: clock.clone(),
        catalog: catalog.clone(),
        config: opts.config.clone(),
        progress: Some(hub.clone()),
    };
    let stop_workers = Shutdown::default();
    let mut workers = Vec::new();
    if opts.executors {
        let mut pools: Vec<&str> = catalog.models.iter().map(|m| m.pool.as_str()).collect();
        pools.sort();
        pools.dedup();
        for pool in pools {
            let config = WorkerConfig {
                pool: pool.to_string(),
                executor_id: format!("{}-{pool}", opts.worker.executor_id),
                ..opts.worker.clone()
            };
            // Under --backend aws, catalog entries with an `s3_uri` are fetched from S3 (the
            // emulator's, with AWS_ENDPOINT_URL) into the dev model cache.
            let s3 = sdk_config.as_ref().map(|sdk| S3Models {
                client: ferry_executor::fetch::s3_client(sdk),
                cache: std::env::temp_dir().join("ferry-dev-models").join("s3"),
            });
            let worker = Worker::with_s3(service.clone(), hub.clone(), config, s3);
            let (w, stop) = (worker.clone(), stop_workers.clone());
            tokio::spawn(async move { w.run(stop).await });
            workers.push(worker);
        }
    }
    let api = Arc::new(Api::new(service, keys.clone()).with_events(events.clone()));
    Ok(Stack {
        api,
        jobs,
        queue,
        keys,
        events,
        connections,
        api_keys,
        clock,
        sdk: sdk_config,
        registry,
        hub,
        ws,
        workers,
        stop_workers,
    })
}

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
use ferry_core::dispatch::Dispatcher;
use ferry_core::fleet::{ExecutorTask, LaunchError, Launched, PoolStore, TaskState};
use ferry_core::pool::{PoolConfig, Pools};
use ferry_core::ports::{
    ApiKeyRecord, ApiKeyStore, Clock, ConnectionStore, EventStore, JobStore, Notifier, Queues, SystemClock, WorkQueue,
};
use ferry_core::publish::ProgressHub;
use ferry_core::queue_state::Fleet;
use ferry_core::service::JobService;
use ferry_core::watchdog::Watchdog;
use ferry_core::ws::WsApi;
use ferry_executor::worker::{S3Models, Shutdown, Worker, WorkerConfig};

use crate::gateway::{LocalNotifier, Registry};
use crate::launcher::ProcessLauncher;

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
    /// The pools (min warm, max tasks, idle timeout...); the catalog's other pools get defaults.
    pub pools: Pools,
    /// Scale to zero with real executor processes: a reconcile loop (the dispatcher and the
    /// watchdog) launches them as the backlog calls for; they exit when idle.
    pub scale: Option<ScaleOptions>,
}

/// How `ferry dev` launches executor processes.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Where the executors reach the stack's in-memory ports (the HTTP API's address,
    /// `http://127.0.0.1:PORT`); only the embedded backend needs it.
    pub stack_url: String,
    /// The executors' Management endpoint (the local gateway), for live progress.
    pub management_endpoint: Option<String>,
    /// How often the dispatcher reconciles (the Lambda runs on every new job and every minute).
    pub reconcile_every: Duration,
    /// How often the watchdog runs.
    pub watchdog_every: Duration,
    /// How long an executor waits for a cancel acknowledgement before its process is killed.
    pub cancel_grace: Duration,
    /// The executors' lease (seconds): a killed executor's job is retried after it lapses.
    pub lease_s: u64,
    /// The executors' message visibility timeout (seconds): a killed executor's message
    /// counts as in-flight backlog (keeping an executor up) until it lapses.
    pub visibility_s: u64,
    /// Overrides every pool's `idle_timeout_s` (`ferry dev --idle-timeout`).
    pub idle_timeout_s: Option<u64>,
    /// Extra environment for the executors.
    pub env: Vec<(String, String)>,
    /// Where executor logs go.
    pub log_dir: PathBuf,
    /// The executor program and its leading arguments; default
    /// [`ProcessLauncher::find_program`].
    pub program: Option<(PathBuf, Vec<String>)>,
}

impl ScaleOptions {
    pub fn new(stack_url: impl Into<String>) -> Self {
        ScaleOptions {
            stack_url: stack_url.into(),
            management_endpoint: None,
            reconcile_every: Duration::from_millis(500),
            watchdog_every: Duration::from_secs(2),
            cancel_grace: Duration::from_secs(10),
            lease_s: 15,
            visibility_s: 15,
            idle_timeout_s: None,
            env: vec![],
            log_dir: std::env::temp_dir().join("ferry-dev-executors"),
            program: None,
        }
    }
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
            pools: Pools::default(),
            scale: None,
        }
    }
}

/// A built stack, with handles tests and the demo use.
pub struct Stack {
    pub api: Arc<Api>,
    pub jobs: Arc<dyn JobStore>,
    /// The first pool's queue (the demo catalog's only pool, `cpu`).
    pub queue: Arc<dyn WorkQueue>,
    /// Every pool's queue.
    pub queues: Queues,
    /// The pools, the catalog's included.
    pub pools: Pools,
    /// The dispatcher's records and the executors' heartbeats.
    pub pool_store: Arc<dyn PoolStore>,
    /// The dispatcher over the process launcher (with `scale`), or read-only over no tasks.
    pub dispatcher: Arc<Dispatcher>,
    /// The process launcher (with `scale`).
    pub launcher: Option<Arc<ProcessLauncher>>,
    /// The in-memory ports for executor processes, and their token (embedded backend).
    pub ports: Option<(ferry_local::remote::Ports, String)>,
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
                ferry_executor::tiny::write_tiny_llama(&tmp, 42)
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
    if opts.executors || opts.scale.is_some() {
        resolve_dev_models(&mut catalog)?;
    }
    let catalog = Arc::new(catalog);
    let mut pools = opts.pools.clone().with_catalog(&catalog);
    if let Some(t) = opts.scale.as_ref().and_then(|s| s.idle_timeout_s) {
        pools = pools.map(|p| p.idle_timeout_s = t);
    }
    let first_pool = pools.names().into_iter().find(|p| p == "cpu").or_else(|| pools.names().into_iter().next());
    let first_pool = first_pool.unwrap_or_else(|| "cpu".into());
    let api_keys = if opts.api_keys.is_empty() {
        vec![(DEV_API_KEY.to_string(), TenantId::new(DEV_TENANT)?)]
    } else {
        opts.api_keys.iter().map(|a| parse_key_arg(a)).collect::<anyhow::Result<Vec<_>>>()?
    };
    type Adapters = (Arc<dyn JobStore>, Arc<dyn EventStore>, Arc<dyn ApiKeyStore>, Arc<dyn ConnectionStore>);
    let mut sdk_config = None;
    // Each pool gets its own queue and dead-letter queue, as the dispatcher counts a pool's
    // backlog from its queue.
    let mut pool_queues: Vec<(String, Arc<dyn WorkQueue>, Arc<dyn WorkQueue>, Option<String>)> = Vec::new();
    let (jobs, events, keys, connections, pool_store): (_, _, _, _, Arc<dyn PoolStore>) = match opts.backend {
        BackendKind::Embedded => {
            let store = Arc::new(ferry_local::MemoryJobStore::new());
            for pool in pools.names() {
                let dlq = Arc::new(ferry_local::MemoryQueue::new());
                let queue = Arc::new(ferry_local::MemoryQueue::with_dead_letter(dlq.clone(), 5));
                pool_queues.push((pool, queue, dlq, None));
            }
            let adapters: Adapters = (
                store.clone(),
                store,
                Arc::new(ferry_local::MemoryApiKeyStore::new()),
                Arc::new(ferry_local::MemoryConnectionStore::new()),
            );
            (adapters.0, adapters.1, adapters.2, adapters.3, Arc::new(ferry_local::MemoryPoolStore::new()))
        }
        BackendKind::Aws => {
            let sdk = match &opts.aws_endpoint {
                Some(endpoint) => ferry_aws::sdk_config_for_endpoint(endpoint).await,
                None => ferry_aws::sdk_config_from_env().await,
            };
            let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
            let sqs = aws_sdk_sqs::Client::new(&sdk);
            ferry_aws::ensure_table(&dynamo, &opts.table).await.context("creating the DynamoDB table")?;
            for pool in pools.names() {
                // The first pool keeps the plain queue name (what `ferry aws bootstrap` makes).
                let name = if pool == first_pool { opts.queue.clone() } else { format!("{}-{pool}", opts.queue) };
                let urls = ferry_aws::ensure_queues(&sqs, &name, ferry_aws::bootstrap::MAX_RECEIVE_COUNT)
                    .await
                    .with_context(|| format!("creating the SQS queue {name}"))?;
                let queue = Arc::new(ferry_aws::SqsWorkQueue::new(sqs.clone(), urls.queue_url.clone()));
                let dlq = Arc::new(ferry_aws::SqsWorkQueue::new(sqs.clone(), urls.dlq_url));
                pool_queues.push((pool, queue, dlq, Some(urls.queue_url)));
            }
            let first_url =
                pool_queues.iter().find(|q| q.0 == first_pool).and_then(|q| q.3.clone()).unwrap_or_default();
            let b = ferry_aws::AwsBackend::connect(&sdk, &opts.table, &first_url).await;
            let pool_store = Arc::new(ferry_aws::DynamoJobStore::new(dynamo, &opts.table));
            sdk_config = Some(sdk);
            (b.jobs.clone(), b.jobs, b.keys, b.connections, pool_store)
        }
    };
    let queue = pool_queues.iter().find(|q| q.0 == first_pool).map(|q| q.1.clone()).context("no pool")?;
    let mut queues = Queues::single(queue.clone());
    for (pool, q, dlq, _) in &pool_queues {
        queues = queues.with_pool(pool.clone(), q.clone()).with_dlq(pool.clone(), dlq.clone());
    }
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
        queues: queues.clone(),
        clock: clock.clone(),
        catalog: catalog.clone(),
        config: opts.config.clone(),
        progress: Some(hub.clone()),
        fleet: Some(Fleet { pools: pools.clone(), store: pool_store.clone() }),
    };
    let stop_workers = Shutdown::default();
    let mut workers = Vec::new();
    if opts.executors {
        for pool in pools.names().into_iter().filter(|p| catalog.models.iter().any(|m| &m.pool == p)) {
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
            worker.report_to(pool_store.clone());
            let (w, stop) = (worker.clone(), stop_workers.clone());
            tokio::spawn(async move { w.run(stop).await });
            workers.push(worker);
        }
    }
    let ports = (opts.backend == BackendKind::Embedded).then(|| {
        let ports = ferry_local::remote::Ports {
            jobs: jobs.clone(),
            events: events.clone(),
            connections: connections.clone(),
            queues: queues.clone(),
            pools: pool_store.clone(),
        };
        (ports, ulid::Ulid::new().to_string())
    });
    let launcher = match &opts.scale {
        Some(scale) => Some(Arc::new(process_launcher(opts, scale, &catalog, &ports, &pool_queues)?)),
        None => None,
    };
    let dispatcher = Arc::new(Dispatcher {
        pools: pools.clone(),
        queues: queues.clone(),
        store: pool_store.clone(),
        launcher: match &launcher {
            Some(l) => l.clone(),
            None => Arc::new(InProcessTasks(workers.clone())),
        },
        clock: clock.clone(),
    });
    if let (Some(scale), Some(launcher)) = (&opts.scale, &launcher) {
        let watchdog = Watchdog {
            service: service.clone(),
            pools: pools.clone(),
            launcher: Some(launcher.clone()),
            cancel_grace_ms: scale.cancel_grace.as_millis() as u64,
        };
        tokio::spawn(reconcile_loop(
            dispatcher.clone(),
            watchdog,
            scale.clone(),
            stop_workers.clone(),
            launcher.clone(),
        ));
    }
    let api = Arc::new(Api::new(service, keys.clone()).with_events(events.clone()).with_pools(dispatcher.clone()));
    Ok(Stack {
        api,
        jobs,
        queue,
        queues,
        pools,
        pool_store,
        dispatcher,
        launcher,
        ports,
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

/// The process launcher, with the environment executors need to reach this stack.
fn process_launcher(
    opts: &StackOptions,
    scale: &ScaleOptions,
    catalog: &Catalog,
    ports: &Option<(ferry_local::remote::Ports, String)>,
    pool_queues: &[(String, Arc<dyn WorkQueue>, Arc<dyn WorkQueue>, Option<String>)],
) -> anyhow::Result<ProcessLauncher> {
    std::fs::create_dir_all(&scale.log_dir).with_context(|| format!("creating {}", scale.log_dir.display()))?;
    // The executors read the same catalog, with the demo model's resolved directory.
    let catalog_file = scale.log_dir.join(format!("catalog-{}.json", ulid::Ulid::new()));
    std::fs::write(&catalog_file, serde_json::to_vec(catalog)?)
        .with_context(|| format!("writing {}", catalog_file.display()))?;
    let w = &opts.worker;
    let mut env = vec![
        ("FERRY_MODELS_FILE".to_string(), catalog_file.display().to_string()),
        ("FERRY_DEVICE".into(), w.device.clone()),
        ("FERRY_CONCURRENCY".into(), w.concurrency.to_string()),
        ("FERRY_LEASE_S".into(), scale.lease_s.to_string()),
        ("FERRY_VISIBILITY_TIMEOUT_S".into(), scale.visibility_s.to_string()),
        ("FERRY_GRACE_PERIOD_S".into(), w.grace_period.as_secs().to_string()),
        ("FERRY_LOG".into(), std::env::var("FERRY_LOG").unwrap_or_else(|_| "info".into())),
    ];
    if let Some(endpoint) = &scale.management_endpoint {
        env.push(("FERRY_WS_MANAGEMENT_ENDPOINT".into(), endpoint.clone()));
    }
    if let Some((_, token)) = ports {
        env.push(("FERRY_STACK_URL".into(), scale.stack_url.clone()));
        env.push(("FERRY_STACK_TOKEN".into(), token.clone()));
    } else {
        env.push(("FERRY_TABLE".into(), opts.table.clone()));
        if let Some(endpoint) = &opts.aws_endpoint {
            for (k, v) in [
                ("AWS_ENDPOINT_URL", endpoint.as_str()),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "test"),
                ("AWS_SECRET_ACCESS_KEY", "test"),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ] {
                env.push((k.into(), v.into()));
            }
        }
    }
    env.extend(scale.env.iter().cloned());
    let program = scale.program.clone().unwrap_or_else(ProcessLauncher::find_program);
    let mut launcher = ProcessLauncher::new(program, env, scale.log_dir.clone());
    for (pool, _, _, url) in pool_queues {
        if let Some(url) = url {
            launcher = launcher.with_pool_env(pool, vec![("FERRY_QUEUE_URL".into(), url.clone())]);
        }
    }
    Ok(launcher)
}

/// The dispatcher and the watchdog, on a timer, until `stop`; then the executors are asked
/// to stop (SIGTERM: they release their jobs) and given their grace period.
async fn reconcile_loop(
    dispatcher: Arc<Dispatcher>,
    watchdog: Watchdog,
    scale: ScaleOptions,
    stop: Shutdown,
    launcher: Arc<ProcessLauncher>,
) {
    let mut tick = tokio::time::interval(scale.reconcile_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_watchdog = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait() => break,
        }
        dispatcher.reconcile_all().await;
        if last_watchdog.elapsed() >= scale.watchdog_every {
            last_watchdog = std::time::Instant::now();
            if let Err(e) = watchdog.run().await {
                tracing::warn!(error = %e, "watchdog pass failed");
            }
        }
    }
    launcher.terminate_all(Duration::from_secs(8)).await;
}

/// `GET /v1/pools` without a launcher: the in-process executors, always running.
struct InProcessTasks(Vec<Arc<Worker>>);

#[async_trait::async_trait]
impl ferry_core::fleet::Launcher for InProcessTasks {
    async fn launch(&self, _: &PoolConfig, _: u32) -> Result<Launched, LaunchError> {
        Err(LaunchError::Misconfigured("ferry dev runs fixed in-process executors here".into()))
    }
    async fn list(&self, pool: &PoolConfig) -> Result<Vec<ExecutorTask>, LaunchError> {
        Ok(self
            .0
            .iter()
            .filter(|w| w.config.pool == pool.name)
            .map(|w| ExecutorTask { id: w.config.executor_id.clone(), state: TaskState::Running })
            .collect())
    }
    async fn stop(&self, _: &PoolConfig, _: &str, _: &str) -> Result<(), LaunchError> {
        Ok(())
    }
}

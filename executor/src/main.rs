//! `ferry-executor`: the ECS worker. Builds the AWS clients once, then runs the shared work
//! loop ([`ferry_executor::worker::Worker::run`]) until it has been idle for
//! `--idle-timeout` (exit 0: scale to zero) or SIGTERM arrives (ECS stop, Spot
//! interruption: no new work, running jobs get `--grace-period`, then are released).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::ports::{Clock, SystemClock};
use ferry_core::publish::ProgressHub;
use ferry_core::service::JobService;
use ferry_executor::worker::{Exit, S3Models, Shutdown, Worker, WorkerConfig};

/// Every flag also reads its environment variable (the ECS task definition sets them).
#[derive(Debug, Parser)]
#[command(name = "ferry-executor", version, about = "Runs Ferry jobs from the work queue on candle models")]
struct Args {
    /// The work queue's URL (else `FERRY_QUEUE_NAME` is resolved).
    #[arg(long, env = "FERRY_QUEUE_URL")]
    queue_url: Option<String>,
    /// The jobs table.
    #[arg(long, env = "FERRY_TABLE", default_value = ferry_aws::DEFAULT_TABLE)]
    table: String,
    /// The pool this executor serves (its models are the catalog's models of this pool).
    #[arg(long, env = "FERRY_POOL", default_value = "cpu")]
    pool: String,
    /// `cpu`, `cuda` or `cuda:N` for models whose catalog entry names no device.
    #[arg(long, env = "FERRY_DEVICE", default_value = "cpu")]
    device: String,
    /// The model catalog (`{"models": [...]}`); else `FERRY_MODELS` inline JSON.
    #[arg(long, env = "FERRY_MODELS_FILE")]
    models_file: Option<PathBuf>,
    /// Jobs run at once.
    #[arg(long, env = "FERRY_CONCURRENCY", default_value_t = 1)]
    concurrency: usize,
    /// Exit after this many seconds without work (scale to zero).
    #[arg(long, env = "FERRY_IDLE_TIMEOUT_S", default_value_t = 60)]
    idle_timeout: u64,
    /// On SIGTERM, seconds running jobs may go on before they are released (ECS gives 30 s
    /// by default between SIGTERM and SIGKILL; keep this below `stopTimeout`).
    #[arg(long, env = "FERRY_GRACE_PERIOD_S", default_value_t = 25)]
    grace_period: u64,
    /// Job lease in seconds (renewed at two thirds).
    #[arg(long, env = "FERRY_LEASE_S", default_value_t = 60)]
    lease: u64,
    /// The WebSocket API's Management endpoint, to push progress to subscribers.
    #[arg(long, env = "FERRY_WS_MANAGEMENT_ENDPOINT")]
    ws_management_endpoint: Option<String>,
    /// Where models stored in S3 (`s3_uri` in the catalog) are copied before loading.
    #[arg(long, env = "FERRY_MODEL_CACHE", default_value = "/tmp/ferry-models")]
    model_cache: PathBuf,
    /// Recorded on claimed jobs (default: a new ULID).
    #[arg(long, env = "FERRY_EXECUTOR_ID")]
    executor_id: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    ferry_core::telemetry::init(true);
    let args = Args::parse();
    let catalog = match &args.models_file {
        Some(path) => Catalog::from_file(path)?,
        None => Catalog::from_env()?,
    };
    let sdk = ferry_aws::sdk_config_from_env().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue_url = match &args.queue_url {
        Some(url) => url.clone(),
        None => ferry_aws::AwsSettings::from_lookup(&sqs, |k| std::env::var(k).ok()).await?.queue_url,
    };
    let backend =
        ferry_aws::AwsBackend::from_clients(aws_sdk_dynamodb::Client::new(&sdk), sqs, &args.table, &queue_url);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let notifier: Arc<dyn ferry_core::ports::Notifier> = match &args.ws_management_endpoint {
        Some(endpoint) => Arc::new(ferry_aws::ApiGatewayNotifier::new(&sdk, endpoint)),
        None => {
            tracing::warn!("FERRY_WS_MANAGEMENT_ENDPOINT is not set: progress is stored for replay but not pushed");
            Arc::new(ferry_core::ports::NoNotifier)
        }
    };
    let hub = Arc::new(ProgressHub {
        jobs: backend.jobs.clone(),
        events: backend.jobs.clone(),
        connections: backend.connections.clone(),
        notifier,
        clock: clock.clone(),
    });
    let service = JobService {
        jobs: backend.jobs,
        queue: backend.queue,
        clock,
        catalog: Arc::new(catalog),
        config: Config::from_env()?,
        progress: Some(hub.clone()),
    };
    let config = WorkerConfig {
        executor_id: args.executor_id.unwrap_or_else(|| format!("executor-{}", ulid::Ulid::new())),
        pool: args.pool,
        device: args.device,
        concurrency: args.concurrency.max(1),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        grace_period: Duration::from_secs(args.grace_period),
        lease: Duration::from_secs(args.lease.max(3)),
        ..WorkerConfig::default()
    };
    tracing::info!(executor_id = %config.executor_id, pool = %config.pool, device = %config.device, "executor starting");
    let s3 = S3Models { client: ferry_executor::fetch::s3_client(&sdk), cache: args.model_cache.clone() };
    let worker = Worker::with_s3(service, hub, config, Some(s3));
    let shutdown = Shutdown::default();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_stop_signal().await.context("installing signal handlers").ok();
        tracing::info!("stop signal: taking no new work");
        on_signal.trigger();
    });
    let exit = worker.run(shutdown).await;
    tracing::info!(?exit, "executor stopped");
    Ok(match exit {
        Exit::Idle | Exit::Shutdown => ExitCode::SUCCESS,
    })
}

/// SIGTERM (ECS, Spot) or SIGINT (a terminal).
async fn wait_for_stop_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}

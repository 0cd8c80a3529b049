//! The executor program: its flags (each with its environment variable, as the ECS task
//! definition sets them) and its `main`, shared by the `ferry-executor` binary and
//! `ferry executor` (so `ferry dev` can always launch one, even when only the `ferry`
//! binary was built). Builds the clients once, then runs the shared work loop
//! ([`crate::worker::Worker::run`]) until it has been idle for `--idle-timeout` (exit 0:
//! scale to zero) or SIGTERM arrives (ECS stop, Spot interruption: no new work, running
//! jobs get `--grace-period`, then are released).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::fleet::NoLauncher;
use ferry_core::pool::Pools;
use ferry_core::ports::Queues;
use ferry_core::root::{Ports, Root};

use crate::worker::{Exit, S3Models, Shutdown, Worker, WorkerConfig};

/// Every flag also reads its environment variable (the ECS task definition sets them).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The work queue's URL (else `FERRY_QUEUE_NAME` is resolved).
    #[arg(long, env = "FERRY_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// The jobs table.
    #[arg(long, env = "FERRY_TABLE", default_value = ferry_aws::DEFAULT_TABLE)]
    pub table: String,
    /// The pool this executor serves (its models are the catalog's models of this pool).
    #[arg(long, env = "FERRY_POOL", default_value = "cpu")]
    pub pool: String,
    /// `cpu`, `cuda` or `cuda:N` for models whose catalog entry names no device.
    #[arg(long, env = "FERRY_DEVICE", default_value = "cpu")]
    pub device: String,
    /// The model catalog (`{"models": [...]}`); else `FERRY_MODELS` inline JSON.
    #[arg(long, env = "FERRY_MODELS_FILE")]
    pub models_file: Option<PathBuf>,
    /// Jobs run at once (default: as many as the engines of this pool's models batch).
    #[arg(long, env = "FERRY_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Sequences a model's engine decodes together in one forward pass, for models whose
    /// catalog entry gives no `max_batch_sequences` (default 32 on CPU, 64 on CUDA; 1 turns
    /// batching off).
    #[arg(long, env = "FERRY_MAX_BATCH_SEQUENCES", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch_sequences: Option<u32>,
    /// Exit after this many seconds without work (scale to zero).
    #[arg(long, env = "FERRY_IDLE_TIMEOUT_S", default_value_t = 60)]
    pub idle_timeout: u64,
    /// On SIGTERM, seconds running jobs may go on before they are released (ECS gives 30 s
    /// by default between SIGTERM and SIGKILL; keep this below `stopTimeout`).
    #[arg(long, env = "FERRY_GRACE_PERIOD_S", default_value_t = 25)]
    pub grace_period: u64,
    /// Job lease in seconds (renewed at two thirds).
    #[arg(long, env = "FERRY_LEASE_S", default_value_t = 60)]
    pub lease: u64,
    /// Seconds a received message stays hidden from other executors (extended at two
    /// thirds while the job runs). After a crash the message reappears this much later.
    #[arg(long, env = "FERRY_VISIBILITY_TIMEOUT_S", default_value_t = 120)]
    pub visibility_timeout: u64,
    /// The WebSocket API's Management endpoint, to push progress to subscribers.
    #[arg(long, env = "FERRY_WS_MANAGEMENT_ENDPOINT")]
    pub ws_management_endpoint: Option<String>,
    /// Sign Management API calls with this access key id instead of the task's credentials:
    /// the token of `ferry dev`'s local Management API (set by `ferry dev`; never on AWS).
    #[arg(long, env = "FERRY_WS_MANAGEMENT_KEY", hide_env_values = true)]
    pub ws_management_key: Option<String>,
    /// Where models stored in S3 (`s3_uri` in the catalog) are copied before loading.
    #[arg(long, env = "FERRY_MODEL_CACHE", default_value = "/tmp/ferry-models")]
    pub model_cache: PathBuf,
    /// Where handlers' private scratch directories (`FERRY_WORK_DIR`) are made.
    #[arg(long, env = "FERRY_HANDLER_WORK_DIR", default_value = "/tmp/ferry-handlers")]
    pub handler_work_dir: PathBuf,
    /// Recorded on claimed jobs and in the heartbeat (default: the ECS task ARN from the
    /// task metadata endpoint, else a new ULID).
    #[arg(long, env = "FERRY_EXECUTOR_ID")]
    pub executor_id: Option<String>,
    /// Run on `ferry dev`'s in-memory stack at this address instead of AWS (set by the
    /// processes `ferry dev` launches).
    #[arg(long, env = "FERRY_STACK_URL")]
    pub stack_url: Option<String>,
    /// The S3 bucket large inputs and outputs are stored in (over 64 KiB; `infra/s3.tf`).
    /// Without one, a job whose output is that large fails `result_not_stored`.
    #[arg(long, env = "FERRY_RESULTS_BUCKET")]
    pub results_bucket: Option<String>,
    /// The HTTP API's base URL (`https://ID.execute-api.REGION.amazonaws.com`): `result`
    /// events of outputs too large for a WebSocket frame point at its
    /// `/v1/jobs/{id}/output` (the path alone without it).
    #[arg(long, env = "FERRY_API_URL")]
    pub api_url: Option<String>,
    /// The token `ferry dev` hands its executors for `--stack-url`.
    #[arg(long, env = "FERRY_STACK_TOKEN", hide_env_values = true)]
    pub stack_token: Option<String>,
}

/// Runs the executor until it is idle or stopped (the binary's `main`, and `ferry executor`).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let sdk = match &args.stack_url {
        Some(_) => None,
        None => Some(ferry_aws::sdk_config_from_env().await?),
    };
    let worker = build(&args, sdk.as_ref()).await?;
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
        // Non-zero: ECS records the task as failed and the service replaces it.
        Exit::Unreachable => ExitCode::from(3),
    })
}

/// The worker `run` runs: on AWS with `sdk` (None: on `ferry dev`'s stack, `--stack-url`).
pub async fn build(args: &Args, sdk: Option<&ferry_aws::SdkConfig>) -> anyhow::Result<Arc<Worker>> {
    let catalog = match &args.models_file {
        Some(path) => Catalog::from_file(path)?,
        None => Catalog::from_env()?,
    };
    let (ports, s3) = match (&args.stack_url, sdk) {
        (Some(url), _) => (stack_ports(url, args.stack_token.as_deref().unwrap_or_default(), args).await, None),
        (None, Some(sdk)) => aws_ports(args, sdk).await?,
        (None, None) => anyhow::bail!("no AWS configuration and no --stack-url"),
    };
    let root = Root::new(ports, catalog, Pools::default(), Config::from_env()?);
    let executor_id = match args.executor_id.clone() {
        Some(id) => id,
        // On ECS the task ARN: the dispatcher lists tasks by it and the watchdog stops it.
        None => match ecs_task_arn().await {
            Some(arn) => arn,
            None => format!("executor-{}", ulid::Ulid::new()),
        },
    };
    let config = WorkerConfig {
        executor_id,
        pool: args.pool.clone(),
        device: args.device.clone(),
        concurrency: args.concurrency.unwrap_or(0),
        max_batch_sequences: args.max_batch_sequences.map(|n| n as usize),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        grace_period: Duration::from_secs(args.grace_period),
        lease: Duration::from_secs(args.lease.max(3)),
        visibility: Duration::from_secs(args.visibility_timeout.clamp(3, 43_200)),
        // A receive never outlasts the idle timeout, so an idle executor exits on time.
        poll_wait: Duration::from_secs(args.idle_timeout.clamp(1, 20)),
        api_url: args.api_url.clone().filter(|u| !u.trim().is_empty()),
        handler_work_dir: args.handler_work_dir.clone(),
        ..WorkerConfig::default()
    };
    tracing::info!(executor_id = %config.executor_id, pool = %config.pool, device = %config.device, "executor starting");
    Ok(Worker::with_s3(&root, config, s3))
}

/// DynamoDB, SQS, S3 and the Management API: the ECS task. With no Management endpoint
/// (private subnets without NAT) its events are marked for the dispatcher Lambda, which
/// pushes them from the table's stream.
async fn aws_ports(args: &Args, sdk: &ferry_aws::SdkConfig) -> anyhow::Result<(Ports, Option<S3Models>)> {
    let mut aws = ferry_aws::AwsPorts::new(sdk, &args.table).with_results_bucket(args.results_bucket.as_deref());
    let queue_url = match &args.queue_url {
        Some(url) => url.clone(),
        None => ferry_aws::AwsSettings::from_lookup(aws.sqs(), |k| std::env::var(k).ok()).await?.queue_url,
    };
    let endpoint = management_endpoint(args);
    if endpoint.is_none() {
        tracing::info!("no Management endpoint: progress is pushed by the dispatcher from the table's stream");
        aws = aws.with_stream_fanout();
    }
    let notifier = match (&args.ws_management_key, endpoint) {
        (Some(key), Some(endpoint)) => {
            ferry_aws::root::notifier(&ferry_aws::sdk_config_for_endpoint_as(endpoint, key).await, Some(endpoint))
        }
        _ => aws.notifier(endpoint),
    };
    let ports = aws.ports(Queues::single(aws.queue(queue_url)), Arc::new(NoLauncher), notifier);
    let s3 = S3Models { client: ferry_aws::s3_client(sdk), cache: args.model_cache.clone() };
    Ok((ports, Some(s3)))
}

/// `ferry dev`'s in-memory stack, over its loopback port endpoint.
async fn stack_ports(url: &str, token: &str, args: &Args) -> Ports {
    // Only the Management endpoint (ferry dev's gateway) is reached with the SDK: static
    // credentials keep it from looking for real ones.
    let key = args.ws_management_key.as_deref().unwrap_or("test");
    let sdk = ferry_aws::sdk_config_for_endpoint_as(management_endpoint(args).unwrap_or(url), key).await;
    let notifier = ferry_aws::root::notifier(&sdk, management_endpoint(args));
    if management_endpoint(args).is_none() {
        tracing::warn!("FERRY_WS_MANAGEMENT_ENDPOINT is not set: progress is stored for replay but not pushed");
    }
    ferry_local::remote::RemoteStack::new(url, token).ports(&args.pool, notifier)
}

/// `--ws-management-endpoint`, unless empty.
fn management_endpoint(args: &Args) -> Option<&str> {
    args.ws_management_endpoint.as_deref().filter(|e| !e.trim().is_empty())
}

/// The task ARN from the ECS task metadata endpoint (v4), when running on ECS.
async fn ecs_task_arn() -> Option<String> {
    let base = std::env::var("ECS_CONTAINER_METADATA_URI_V4").ok()?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    let v: serde_json::Value = http.get(format!("{base}/task")).send().await.ok()?.json().await.ok()?;
    v.get("TaskARN")?.as_str().map(str::to_string)
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

//! `ferry`: the local stack and a client for the HTTP API. See README.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ferry_cli::client::{Client, ClientError};
use ferry_cli::gateway::{self, Gateway};
use ferry_cli::stack::{self, BackendKind, DEV_API_KEY, StackOptions};
use ferry_cli::{demo, follow, server};
use ferry_core::config::Config;
use ferry_core::view::JobView;

#[derive(Parser)]
#[command(name = "ferry", version, about = "Long GPU jobs for serverless apps: local stack and API client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the local stack: the HTTP API over embedded (or AWS) adapters.
    Dev(DevArgs),
    /// Submit a job.
    Submit(SubmitArgs),
    /// Show a job.
    Get {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List your jobs, newest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow a job's progress over the WebSocket API until it ends (exit 0: succeeded,
    /// 3: failed, cancelled, timed out or expired).
    Watch {
        id: String,
        #[command(flatten)]
        follow: FollowArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a job.
    Cancel {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the models the executors serve.
    Models {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Your webhook signing secrets: `secret` shows them (the current one first), `rotate`
    /// makes a new one (the old one keeps signing for 24 hours).
    Webhooks {
        #[command(subcommand)]
        action: WebhooksAction,
    },
    /// Show the executor pools: desired, running, idle and busy executors, backlog, launch errors.
    Pools {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// What scale to zero costs against an always-on executor, for a workload and a pool.
    Cost(ferry_cli::cost::CostArgs),
    /// Run an executor (what the `ferry-executor` binary runs; `ferry dev` launches it).
    Executor(ferry_executor::cli::Args),
    /// Run the demo job against a running API.
    Demo {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// AWS helpers.
    #[command(subcommand)]
    Aws(AwsCommand),
}

#[derive(Args)]
struct ClientArgs {
    /// Base URL of the API.
    #[arg(long, env = "FERRY_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key (the dev stack's default key when unset).
    #[arg(long, env = "FERRY_API_KEY", default_value = DEV_API_KEY, hide_default_value = true)]
    api_key: String,
    /// Print the API's JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FollowArgs {
    /// WebSocket API URL. Default: from --url, http→ws and port + 1 (ws://127.0.0.1:8081/).
    #[arg(long, env = "FERRY_WS_URL")]
    ws_url: Option<String>,
}

#[derive(Args)]
struct DevArgs {
    /// Address of the HTTP API.
    #[arg(long = "http", env = "FERRY_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Address of the local WebSocket gateway (WebSocket API and Management API).
    /// Default: the HTTP port + 1 (127.0.0.1:8081), or an ephemeral port when --http's is 0.
    #[arg(long = "ws", env = "FERRY_WS_ADDR")]
    ws: Option<SocketAddr>,
    /// Serve POST /dev/jobs/{id}/progress on the gateway: publish a progress event by hand.
    #[arg(long)]
    dev_progress: bool,
    /// Which adapters to run on.
    #[arg(long, env = "FERRY_BACKEND", value_enum, default_value = "embedded")]
    backend: BackendKind,
    /// KEY or KEY=TENANT (repeatable); default: one dev key, printed at start.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// ID=DIR or ID=FILE.gguf: serve a Hugging Face model directory, or a GGUF file with its
    /// tokenizer.json beside it (repeatable).
    #[arg(long = "model")]
    models: Vec<String>,
    /// A model catalog file (JSON: {"models": [...]}).
    #[arg(long, env = "FERRY_MODELS_FILE")]
    models_file: Option<PathBuf>,
    /// ID=COMMAND: serve your own program as a per-job handler (docs/HANDLERS.md), COMMAND
    /// split as a shell splits words (repeatable), e.g. --handler 'agent=python3 agent.py'.
    #[arg(long = "handler")]
    handlers: Vec<String>,
    /// DynamoDB table (AWS backend).
    #[arg(long, env = "FERRY_TABLE", default_value = "ferry-jobs")]
    table: String,
    /// S3 bucket for inputs and outputs over 64 KiB (AWS backend; created when missing).
    #[arg(long, env = "FERRY_RESULTS_BUCKET", default_value = "ferry-results")]
    results_bucket: String,
    /// SQS queue name (AWS backend); its dead-letter queue is NAME-dlq.
    #[arg(long, env = "FERRY_QUEUE_NAME", default_value = "ferry-work")]
    queue: String,
    /// Requests per second per tenant (0: off). Defaults to FERRY_RATE_LIMIT_PER_S or 50.
    #[arg(long)]
    rate_limit: Option<f64>,
    /// Run the demo job once the API is up.
    #[arg(long)]
    demo: bool,
    /// With --demo: stop after the demo instead of serving on.
    #[arg(long, requires = "demo")]
    once: bool,
    /// Run no executors: jobs stay queued (for driving progress by hand with --dev-progress).
    #[arg(long)]
    no_executor: bool,
    /// One fixed in-process executor per pool instead of executor processes launched by
    /// the dispatcher (faster to start; no scale to zero).
    #[arg(long, conflicts_with = "no_executor")]
    in_process: bool,
    /// Seconds a launched executor process waits without work before it exits (scale to zero).
    #[arg(long, env = "FERRY_DEV_IDLE_TIMEOUT_S", default_value_t = 60)]
    idle_timeout: u64,
    /// The pools' configuration (JSON: {"pools": [...]}); else FERRY_POOLS; else defaults
    /// (min_warm 0, max_tasks 4, jobs_per_task the engine's capacity).
    #[arg(long, env = "FERRY_POOLS_FILE")]
    pools_file: Option<PathBuf>,
    /// Device for the executors' models: cpu, cuda or cuda:N (a `cuda` build is needed for CUDA).
    #[arg(long, env = "FERRY_DEVICE", default_value = "cpu")]
    device: String,
    /// Jobs each executor runs at once (default: its engine's capacity, see
    /// --max-batch-sequences).
    #[arg(long, env = "FERRY_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
    /// Sequences one engine decodes together, for models whose catalog entry names no
    /// `max_batch_sequences` (default 32 on CPU, 64 on CUDA; 1 turns batching off). The pools'
    /// default jobs_per_task follows it.
    #[arg(long, env = "FERRY_MAX_BATCH_SEQUENCES", value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_batch_sequences: Option<u32>,
    /// Answer every request with a constant 202 (the benchmark ceiling).
    #[arg(long, hide = true)]
    constant_202: bool,
}

#[derive(Args)]
struct SubmitArgs {
    /// Model id (see `ferry models`).
    #[arg(long)]
    model: String,
    /// Prompt for a text-generation model.
    #[arg(long, conflicts_with_all = ["text", "input"])]
    prompt: Option<String>,
    /// A text to embed (repeatable).
    #[arg(long, conflicts_with = "input")]
    text: Vec<String>,
    /// The whole input as JSON.
    #[arg(long)]
    input: Option<String>,
    /// Params as a JSON object.
    #[arg(long)]
    params: Option<String>,
    /// Execution timeout in seconds.
    #[arg(long)]
    timeout: Option<u64>,
    /// Idempotency-Key header.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// POST the job's events to this URL, signed (Standard Webhooks); see `ferry webhooks secret`.
    #[arg(long)]
    webhook: Option<String>,
    /// The events to deliver to --webhook: completed (the default), started, output (repeatable).
    #[arg(long = "webhook-event", requires = "webhook", value_parser = ["completed", "started", "output"])]
    webhook_events: Vec<String>,
    /// Wait up to N seconds (max 25) for the job to finish.
    #[arg(long)]
    wait: Option<u64>,
    /// Then follow its progress over the WebSocket API, as `ferry watch` does.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    follow_args: FollowArgs,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum WebhooksAction {
    /// Print the secrets that sign your webhook deliveries, the current one first.
    Secret {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Make a new current secret; the previous one keeps signing beside it for 24 hours.
    Rotate {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A job's webhook deliveries: each event, its state, its tries and the next one.
    List {
        /// Job id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send a job's undelivered webhook deliveries again (or the one named by --delivery).
    Redeliver {
        /// Job id.
        id: String,
        /// A delivery's webhook-id (`msg_...`).
        #[arg(long)]
        delivery: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum AwsCommand {
    /// Create the DynamoDB table and SQS queues if missing (uses AWS_ENDPOINT_URL etc.).
    Bootstrap {
        #[arg(long, env = "FERRY_TABLE", default_value = "ferry-jobs")]
        table: String,
        #[arg(long, env = "FERRY_QUEUE_NAME", default_value = "ferry-work")]
        queue: String,
    },
    /// Store a new API key (hashed) for a tenant and print it once.
    CreateKey {
        #[arg(long)]
        tenant: String,
        /// Use this key instead of a random one.
        #[arg(long)]
        key: Option<String>,
        #[arg(long, env = "FERRY_TABLE", default_value = "ferry-jobs")]
        table: String,
    },
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before the runtime starts any thread.
    unsafe { ferry_executor::models::pin_cpu_threads() };
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(cli_main()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cli_main() -> ExitCode {
    ferry_core::telemetry::init(ferry_core::telemetry::in_aws());
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::Api { .. }) => eprintln!("error: {e}"),
                _ => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Dev(args) => dev(args).await,
        Command::Submit(a) => {
            let input = match (&a.prompt, a.text.is_empty(), &a.input) {
                (Some(p), _, _) => serde_json::json!({"prompt": p}),
                (None, false, _) => serde_json::json!({"texts": a.text}),
                (None, true, Some(raw)) => serde_json::from_str(raw).context("--input is not JSON")?,
                (None, true, None) => anyhow::bail!("give --prompt, --text or --input"),
            };
            let mut body = serde_json::json!({"model": a.model, "input": input});
            if let Some(p) = &a.params {
                body["params"] = serde_json::from_str(p).context("--params is not JSON")?;
            }
            if let Some(t) = a.timeout {
                body["timeout_s"] = t.into();
            }
            if let Some(url) = &a.webhook {
                body["webhook"] = serde_json::json!({"url": url});
                if !a.webhook_events.is_empty() {
                    body["webhook"]["events"] = serde_json::json!(a.webhook_events);
                }
            }
            let c = client(&a.client);
            let ans = c.submit(&body, a.idempotency_key.as_deref(), a.wait).await?;
            if a.follow {
                eprintln!("job {} {}", ans.body.id, ans.body.status);
                return watch(&ans.body.id.to_string(), &a.follow_args, &a.client).await;
            }
            print_job(&ans.body, &a.client).await
        }
        Command::Watch { id, follow, client: ca } => watch(&id, &follow, &ca).await,
        Command::Get { id, client: ca } => print_job(&client(&ca).get(&id).await?.body, &ca).await,
        Command::Cancel { id, client: ca } => print_job(&client(&ca).cancel(&id).await?.body, &ca).await,
        Command::List { status, limit, cursor, client: ca } => {
            let page = client(&ca).list(status.as_deref(), limit, cursor.as_deref()).await?.body;
            if ca.json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                println!("{:<26}  {:<10}  {:<20}  CREATED", "ID", "STATUS", "MODEL");
                for j in &page.jobs {
                    println!("{:<26}  {:<10}  {:<20}  {}", j.id, j.status.as_str(), j.model, j.created_at);
                }
                if let Some(c) = page.next_cursor {
                    println!("more: ferry list --cursor {c}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Models { client: ca } => {
            let models = client(&ca).models().await?.body;
            if ca.json {
                println!("{}", serde_json::to_string_pretty(&models)?);
            } else {
                for m in &models.models {
                    println!("{:<24} {:<16} pool={}", m.id, m.task.as_str(), m.pool);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Webhooks { action: WebhooksAction::List { id, client: ca } } => {
            print_deliveries(&client(&ca).webhook_deliveries(&id).await?.body, ca.json)
        }
        Command::Webhooks { action: WebhooksAction::Redeliver { id, delivery, client: ca } } => {
            print_deliveries(&client(&ca).redeliver_webhooks(&id, delivery.as_deref()).await?.body, ca.json)
        }
        Command::Webhooks { action } => {
            let (ca, answer) = match action {
                WebhooksAction::Secret { client: ca } => {
                    let a = client(&ca).webhook_secrets().await?.body;
                    (ca, a)
                }
                WebhooksAction::Rotate { client: ca } => {
                    let a = client(&ca).rotate_webhook_secret().await?.body;
                    (ca, a)
                }
                WebhooksAction::List { .. } | WebhooksAction::Redeliver { .. } => unreachable!("matched above"),
            };
            if ca.json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                for s in &answer.secrets {
                    println!("{s}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { client: ca } => {
            let c = client(&ca);
            let ws = follow::default_ws_url(c.base_url()).ok();
            demo::run(&c, ws.as_deref(), &mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pools { client: ca } => {
            let pools = client(&ca).pools().await?.body;
            if ca.json {
                println!("{}", serde_json::to_string_pretty(&pools)?);
            } else {
                println!(
                    "{:<10} {:>7} {:>7} {:>7} {:>4} {:>4} {:>7} {:>8}  last error",
                    "pool", "desired", "running", "pending", "idle", "busy", "loading", "backlog"
                );
                for p in &pools.pools {
                    println!(
                        "{:<10} {:>7} {:>7} {:>7} {:>4} {:>4} {:>7} {:>8}  {}",
                        p.name,
                        p.desired,
                        p.running,
                        p.pending,
                        p.idle,
                        p.busy,
                        p.loading_model,
                        p.backlog.visible + p.backlog.in_flight,
                        p.last_error.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cost(args) => {
            print!("{}", ferry_cli::cost::run(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Executor(args) => ferry_executor::cli::run(args).await,
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&ferry_http::openapi())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Aws(cmd) => aws(cmd).await,
    }
}

fn client(a: &ClientArgs) -> Client {
    Client::new(&a.url, &a.api_key)
}

/// Follows a job over the WebSocket API; the exit code is `print_job`'s.
async fn watch(id: &str, f: &FollowArgs, ca: &ClientArgs) -> anyhow::Result<ExitCode> {
    let ws_url = match &f.ws_url {
        Some(u) => u.clone(),
        None => follow::default_ws_url(&ca.url)?,
    };
    let opts = follow::FollowOptions::new(ws_url, &ca.api_key, id);
    let mut printer = follow::Printer::new(ca.json);
    let result = follow::follow(&opts, |e| printer.event(e)).await;
    printer.finish();
    let status = result?;
    if printer.output_by_reference {
        let output = client(ca).output(id).await?;
        println!("{}", serde_json::to_string_pretty(&output)?);
    }
    if !ca.json {
        eprintln!("job {id} {status}");
    }
    Ok(exit_code(status))
}

fn exit_code(status: ferry_core::JobStatus) -> ExitCode {
    use ferry_core::JobStatus::*;
    match status {
        Failed | Cancelled | TimedOut | Expired => ExitCode::from(3),
        _ => ExitCode::SUCCESS,
    }
}

/// Prints a job, with its output whether the view holds it inline or it is stored (then
/// fetched, and with `--json` filled into the view's `output`); the exit code tells
/// failed/cancelled/timed-out jobs apart for scripts.
async fn print_job(job: &JobView, ca: &ClientArgs) -> anyhow::Result<ExitCode> {
    let mut job = job.clone();
    if job.output.is_none() && job.output_bytes.is_some() {
        job.output = Some(client(ca).output(&job.id.to_string()).await?);
    }
    if ca.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        println!("job {}  {}  model={}  attempt {}/{}", job.id, job.status, job.model, job.attempt, job.max_attempts);
        println!("  created {}  queue delay {} ms", job.created_at, job.queue_delay_ms);
        if let Some(ms) = job.execution_ms {
            println!("  ran {ms} ms");
        }
        if let Some(out) = &job.output {
            println!("  output: {out}");
        }
        if let Some(e) = &job.error {
            println!("  error: {} ({})", e.message, e.kind);
        }
    }
    Ok(exit_code(job.status))
}

async fn dev(a: DevArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::from_env()?;
    if let Some(r) = a.rate_limit {
        config.rate_limit_per_s = r;
    }
    let listener = tokio::net::TcpListener::bind(a.http).await.with_context(|| format!("binding {}", a.http))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            server::shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
    }
    // What `--demo --once` ends with; the stack stops the normal way first (executor
    // processes included), whatever stopped it.
    let exit = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if a.constant_202 {
        println!("ferry dev: constant 202 on http://{addr}. Ctrl-C stops it.");
        server::serve(listener, server::Mode::Constant202, stopped(stop_rx)).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let ws_addr = a.ws.unwrap_or_else(|| {
        let port = if addr.port() == 0 || a.http.port() == 0 { 0 } else { addr.port().wrapping_add(1) };
        SocketAddr::new(addr.ip(), port)
    });
    let ws_listener =
        tokio::net::TcpListener::bind(ws_addr).await.with_context(|| format!("binding {ws_addr} (--ws)"))?;
    let ws_host = loopback_if_unspecified(ws_listener.local_addr()?);
    // The executor processes' endpoint: loopback only, whatever --http binds.
    let ports_listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let ports_addr = ports_listener.local_addr()?;
    let pools = match &a.pools_file {
        Some(path) => ferry_core::pool::Pools::from_file(path)?,
        None => ferry_core::pool::Pools::from_lookup(|k| std::env::var(k).ok())?,
    };
    let opts = StackOptions {
        backend: a.backend,
        api_keys: a.api_keys,
        models: a.models,
        models_file: a.models_file,
        handlers: a.handlers,
        table: a.table,
        queue: a.queue,
        aws_endpoint: None,
        results_bucket: a.results_bucket,
        api_url: Some(format!("http://{}", loopback_if_unspecified(addr))),
        // Under --backend aws progress goes through the AWS notifier to this gateway's own
        // Management API: the SDK's wire path, as in a deployment.
        management_endpoint: (a.backend == BackendKind::Aws).then(|| format!("http://{ws_host}")),
        executors: a.in_process,
        worker: ferry_executor::worker::WorkerConfig {
            device: a.device.clone(),
            concurrency: a.concurrency.map_or(0, |n| n as usize),
            max_batch_sequences: a.max_batch_sequences.map(|n| n as usize),
            ..stack::dev_worker_config()
        },
        config,
        pools,
        scale: (!a.no_executor && !a.in_process).then(|| stack::ScaleOptions {
            management_endpoint: Some(format!("http://{ws_host}")),
            idle_timeout_s: Some(a.idle_timeout),
            ..stack::ScaleOptions::new(format!("http://{ports_addr}"))
        }),
    };
    let stack = Arc::new(stack::build(&opts).await?);
    print_stack(&stack, addr, ws_host, a.backend, a.dev_progress);
    if a.demo {
        let (key, url, demo_ws, once) =
            (stack.api_keys[0].0.clone(), format!("http://{addr}"), format!("ws://{ws_host}/"), a.once);
        let (stop_tx, exit) = (stop_tx.clone(), exit.clone());
        tokio::spawn(async move {
            let result = demo::run(&Client::new(&url, &key), Some(&demo_ws), &mut std::io::stdout()).await;
            if let Err(e) = &result {
                eprintln!("demo failed: {e:#}");
            }
            if once {
                exit.store(if result.is_ok() { 0 } else { 1 }, std::sync::atomic::Ordering::SeqCst);
                let _ = stop_tx.send(true);
            }
        });
    }
    println!("Ctrl-C stops it.");
    let shutdown = ferry_executor::worker::Shutdown::default();
    let running = {
        let (stack, shutdown) = (stack.clone(), shutdown.clone());
        tokio::spawn(async move { stack.run(shutdown).await })
    };
    {
        let (rx, shutdown) = (stop_rx.clone(), shutdown.clone());
        tokio::spawn(async move {
            stopped(rx).await;
            shutdown.trigger();
        });
    }
    let http = server::serve(listener, server::Mode::Stack(stack.clone()), stopped(stop_rx.clone()));
    let ports = async {
        match stack.served_ports() {
            Some(ports) => server::serve_ports(ports_listener, ports, stopped(stop_rx.clone())).await,
            None => Ok(()),
        }
    };
    let ws = gateway::serve(ws_listener, Gateway::new(&stack, a.dev_progress), stopped(stop_rx.clone()));
    tokio::try_join!(http, ports, ws)?;
    // The executors release their jobs; executor processes were asked to stop.
    let _ = running.await;
    println!("ferry dev: stopped");
    Ok(ExitCode::from(exit.load(std::sync::atomic::Ordering::SeqCst)))
}

fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()) } else { addr }
}

/// What `ferry dev` tells its user at start: where it listens, the keys, models and executors.
fn print_stack(stack: &stack::Stack, addr: SocketAddr, ws_host: SocketAddr, backend: BackendKind, dev_progress: bool) {
    let backend = match backend {
        BackendKind::Aws => "aws",
        BackendKind::Embedded => "embedded",
    };
    println!("ferry dev: HTTP API on http://{addr} ({backend} backend)");
    println!("ferry dev: WebSocket API on ws://{ws_host} (Management API: POST http://{ws_host}/@connections/{{id}})");
    if dev_progress {
        println!("  dev progress driver: POST http://{ws_host}/dev/jobs/{{id}}/progress");
    }
    println!("  dev token (Management API and progress driver, as x-ferry-dev-token): {}", stack.dev_token);
    for (key, tenant) in &stack.api_keys {
        println!("  API key for tenant {tenant}: {key}");
    }
    for m in &stack.root.catalog.models {
        if let Some(argv) = &m.command {
            println!("  handler {} (pool {}): {argv:?}", m.id, m.pool);
            continue;
        }
        let dir = m.path.as_ref().map_or("no directory: its jobs fail".to_string(), |p| p.display().to_string());
        println!("  model {} ({}, pool {}): {dir}", m.id, m.task.as_str(), m.pool);
    }
    for w in &stack.workers {
        println!("  executor {} (pool {}, device {})", w.config.executor_id, w.config.pool, w.config.device);
    }
    if let Some(l) = &stack.launcher {
        for p in stack.root.pools.iter() {
            println!(
                "  pool {}: executor processes launched on demand (max {}, min warm {}), exit after {} s idle; logs in {}",
                p.name,
                p.max_tasks,
                p.min_warm,
                p.idle_timeout_s,
                l.log_dir().display()
            );
        }
    } else if stack.workers.is_empty() {
        println!("  no executors (--no-executor): jobs stay queued");
    }
}

async fn aws(cmd: AwsCommand) -> anyhow::Result<ExitCode> {
    let sdk = ferry_aws::sdk_config_from_env().await?;
    match cmd {
        AwsCommand::Bootstrap { table, queue } => {
            let urls = ferry_aws::bootstrap(&sdk, &table, &queue).await?;
            println!("table {table} ready\nqueue {}\ndead-letter queue {}", urls.queue_url, urls.dlq_url);
        }
        AwsCommand::CreateKey { tenant, key, table } => {
            let key = key.unwrap_or_else(ferry_core::auth::generate_api_key);
            let (key, tenant) = stack::parse_key_arg(&format!("{key}={tenant}"))?;
            let ports = ferry_aws::AwsPorts::new(&sdk, &table).ports(
                ferry_core::ports::Queues::none(),
                std::sync::Arc::new(ferry_core::fleet::NoLauncher),
                std::sync::Arc::new(ferry_core::ports::NoNotifier),
            );
            let store = ports.keys;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
            let record = ferry_core::ports::ApiKeyRecord {
                key_hash: ferry_core::auth::hash_api_key(&key),
                tenant: tenant.clone(),
                created_at: now,
            };
            store.put(&record).await?;
            println!("API key for tenant {tenant} (shown once, stored hashed):\n{key}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Deliveries as JSON, or one line each: id, type, state, tries (status or error) and the next try.
fn print_deliveries(list: &ferry_core::deliver::DeliveryList, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for d in &list.deliveries {
        let tries: Vec<String> = d
            .attempts
            .iter()
            .map(|a| a.status.map(|s| s.to_string()).or_else(|| a.error.clone()).unwrap_or_default())
            .collect();
        let next = d.next_try_at.as_deref().map(|t| format!(" next {t}")).unwrap_or_default();
        println!(
            "{}  {:<13}  {:<9}  tries [{}]{next}",
            d.id,
            d.kind,
            format!("{:?}", d.state).to_lowercase(),
            tries.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

//! `ferry dev`'s fleet: the queues of its pools on AWS, the executor processes the
//! dispatcher launches (with the environment they need to reach this stack), the fixed
//! in-process executors as `GET /v1/pools` lists them, and the reconcile loop that runs the
//! dispatcher and the watchdog as the dispatcher Lambda's schedule does.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ferry_core::catalog::Catalog;
use ferry_core::fleet::{ExecutorTask, LaunchError, Launched, Launcher, TaskState};
use ferry_core::pool::PoolConfig;
use ferry_core::ports::Queues;
use ferry_core::root::Root;
use ferry_executor::worker::Shutdown;

use super::{ScaleOptions, StackOptions};
use crate::launcher::ProcessLauncher;

/// Each pool's SQS queue and dead-letter queue, created when missing: the `cpu` pool (or
/// the first) keeps the plain queue name (what `ferry aws bootstrap` makes), the others
/// `<queue>-<pool>`. Returns the queues and each pool's queue URL.
pub(super) async fn aws_queues(
    sdk: &ferry_aws::SdkConfig,
    opts: &StackOptions,
    pools: &[String],
) -> anyhow::Result<(Queues, Vec<(String, String)>)> {
    let aws = ferry_aws::AwsPorts::new(sdk, &opts.table);
    ferry_aws::ensure_table(&aws_sdk_dynamodb::Client::new(sdk), &opts.table)
        .await
        .context("creating the DynamoDB table")?;
    let first = pools.iter().find(|p| *p == "cpu").or(pools.first()).context("no pool")?.clone();
    let mut urls = Vec::new();
    let mut queues = None;
    let mut per_pool = Vec::new();
    for pool in pools {
        let name = if *pool == first { opts.queue.clone() } else { format!("{}-{pool}", opts.queue) };
        let created = ferry_aws::ensure_queues(aws.sqs(), &name, ferry_aws::bootstrap::MAX_RECEIVE_COUNT)
            .await
            .with_context(|| format!("creating the SQS queue {name}"))?;
        if *pool == first {
            queues = Some(Queues::single(aws.queue(created.queue_url.clone())));
        }
        per_pool.push((pool.clone(), aws.queue(created.queue_url.clone()), aws.queue(created.dlq_url)));
        urls.push((pool.clone(), created.queue_url));
    }
    let queues = per_pool
        .into_iter()
        .fold(queues.context("no pool")?, |qs, (pool, q, dlq)| qs.with_pool(pool.clone(), q).with_dlq(pool, dlq));
    Ok((queues, urls))
}

/// The process launcher, with the environment executors need to reach this stack: on the
/// embedded backend its loopback ports endpoint (`ports_token`), on AWS the table and each
/// pool's queue URL.
pub(super) fn process_launcher(
    opts: &StackOptions,
    scale: &ScaleOptions,
    catalog: &Catalog,
    ports_token: Option<&str>,
    dev_token: &str,
    queue_urls: &[(String, String)],
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
        ("FERRY_LEASE_S".into(), scale.lease_s.to_string()),
        ("FERRY_VISIBILITY_TIMEOUT_S".into(), scale.visibility_s.to_string()),
        ("FERRY_GRACE_PERIOD_S".into(), w.grace_period.as_secs().to_string()),
        ("FERRY_LOG".into(), std::env::var("FERRY_LOG").unwrap_or_else(|_| "info".into())),
    ];
    // Jobs at once: as asked, else (0) the engine's capacity, which the pool's
    // jobs_per_task defaults to.
    if w.concurrency > 0 {
        env.push(("FERRY_CONCURRENCY".into(), w.concurrency.to_string()));
    }
    if let Some(endpoint) = &scale.management_endpoint {
        env.push(("FERRY_WS_MANAGEMENT_ENDPOINT".into(), endpoint.clone()));
        env.push(("FERRY_WS_MANAGEMENT_KEY".into(), dev_token.to_string()));
    }
    if let Some(url) = &opts.api_url {
        env.push(("FERRY_API_URL".into(), url.clone()));
    }
    if let Some(token) = ports_token {
        env.push(("FERRY_STACK_URL".into(), scale.stack_url.clone()));
        env.push(("FERRY_STACK_TOKEN".into(), token.to_string()));
    } else {
        env.push(("FERRY_TABLE".into(), opts.table.clone()));
        env.push(("FERRY_RESULTS_BUCKET".into(), opts.results_bucket.clone()));
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
    for (pool, url) in queue_urls {
        launcher = launcher.with_pool_env(pool, vec![("FERRY_QUEUE_URL".into(), url.clone())]);
    }
    Ok(launcher)
}

/// The dispatcher and the watchdog, on a timer, until `stop`; then the executors are asked
/// to stop (SIGTERM: they release their jobs) and given their grace period.
pub(super) async fn reconcile_loop(root: Root, scale: ScaleOptions, stop: Shutdown, launcher: Arc<ProcessLauncher>) {
    let dispatcher = root.dispatcher();
    let watchdog = root.watchdog(scale.cancel_grace.as_millis() as u64);
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

/// `GET /v1/pools` without a launcher: the in-process executors `(pool, executor id)`,
/// always running.
pub(super) struct InProcessTasks(pub(super) Vec<(String, String)>);

#[async_trait::async_trait]
impl Launcher for InProcessTasks {
    async fn launch(&self, _: &PoolConfig, _: u32) -> Result<Launched, LaunchError> {
        Err(LaunchError::Misconfigured("ferry dev runs fixed in-process executors here".into()))
    }
    async fn list(&self, pool: &PoolConfig) -> Result<Vec<ExecutorTask>, LaunchError> {
        Ok(self
            .0
            .iter()
            .filter(|(p, _)| *p == pool.name)
            .map(|(_, id)| ExecutorTask { id: id.clone(), state: TaskState::Running })
            .collect())
    }
    async fn stop(&self, _: &PoolConfig, _: &str, _: &str) -> Result<(), LaunchError> {
        Ok(())
    }
}

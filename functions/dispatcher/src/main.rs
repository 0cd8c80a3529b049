//! The `dispatcher` Lambda: builds the AWS clients once (DynamoDB, SQS, ECS), then hands
//! every event (the jobs table's stream, the one-minute schedule) to the shared handler.

use std::sync::Arc;

use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::ports::{Clock, SystemClock};
use ferry_core::publish::ProgressHub;
use ferry_core::service::JobService;
use ferry_core::watchdog::{DEFAULT_CANCEL_GRACE_MS, Watchdog};
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_core::telemetry::init(true);
    let sdk = ferry_aws::sdk_config_from_env().await;
    let backend = ferry_aws::AwsBackend::from_sdk(&sdk).await?;
    let catalog = Catalog::from_env()?;
    let fleet = ferry_aws::AwsFleet::from_lookup(&sdk, &backend, &catalog, |k| std::env::var(k).ok())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Status changes the watchdog makes reach WebSocket subscribers through the Management API.
    let progress =
        std::env::var("FERRY_WS_MANAGEMENT_ENDPOINT").ok().filter(|v| !v.trim().is_empty()).map(|endpoint| {
            Arc::new(ProgressHub {
                jobs: backend.jobs.clone(),
                events: backend.jobs.clone(),
                connections: backend.connections.clone(),
                notifier: Arc::new(ferry_aws::ApiGatewayNotifier::new(&sdk, &endpoint)),
                clock: clock.clone(),
            })
        });
    let cancel_grace_ms = std::env::var("FERRY_CANCEL_GRACE_S")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_CANCEL_GRACE_MS, |s| s * 1000);
    let service = JobService {
        jobs: backend.jobs.clone(),
        queues: fleet.queues.clone(),
        clock: clock.clone(),
        catalog: Arc::new(catalog),
        config: Config::from_env()?,
        progress,
        fleet: None,
    };
    let dispatcher = fleet.dispatcher(clock);
    let watchdog =
        Watchdog { service, pools: fleet.pools.clone(), launcher: Some(fleet.launcher.clone()), cancel_grace_ms };
    let (dispatcher, watchdog) = (&dispatcher, &watchdog);
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let outcome = ferry_dispatcher_lambda::handle(dispatcher, watchdog, event.payload).await;
        Ok::<_, Error>(serde_json::to_value(outcome)?)
    }))
    .await
}

//! The `api` Lambda: API Gateway HTTP API -> `ferry_core::api::Api`. It builds the AWS
//! clients once from its environment and hands every request to the shared handler.

use std::sync::Arc;

use ferry_core::api::Api;
use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::ports::{Clock, SystemClock};
use ferry_core::publish::ProgressHub;
use ferry_core::service::JobService;
use lambda_http::{Error, Request, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_core::telemetry::init(true);
    let sdk = ferry_aws::sdk_config_from_env().await;
    let backend = ferry_aws::AwsBackend::from_sdk(&sdk).await?;
    let events = backend.jobs.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Status changes made here (a cancel) are pushed to WebSocket subscribers through the
    // WebSocket API's Management endpoint; without it they are stored for replay only.
    let progress = match std::env::var("FERRY_WS_MANAGEMENT_ENDPOINT").ok().filter(|v| !v.trim().is_empty()) {
        Some(endpoint) => Some(Arc::new(ProgressHub {
            jobs: backend.jobs.clone(),
            events: backend.jobs.clone(),
            connections: backend.connections.clone(),
            notifier: Arc::new(ferry_aws::ApiGatewayNotifier::new(&sdk, &endpoint)),
            clock: clock.clone(),
        })),
        None => {
            tracing::warn!("FERRY_WS_MANAGEMENT_ENDPOINT is not set: status changes reach WebSocket clients late");
            None
        }
    };
    let catalog = Catalog::from_env()?;
    // Each pool's queue (new jobs go to their model's pool), and the pools' records for
    // `GET /v1/pools` and the jobs' `queue_state`.
    let fleet = ferry_aws::AwsFleet::from_lookup(&sdk, &backend, &catalog, |k| std::env::var(k).ok())?;
    let service = JobService {
        jobs: backend.jobs,
        queues: fleet.queues.clone(),
        clock: clock.clone(),
        catalog: Arc::new(catalog),
        config: Config::from_env()?,
        progress,
        fleet: Some(fleet.view()),
    };
    let pools = Arc::new(fleet.dispatcher(clock));
    let api = Api::new(service, backend.keys).with_events(events).with_pools(pools);
    let api = &api;
    run(service_fn(move |req: Request| async move { Ok::<_, Error>(ferry_api_lambda::handle(api, req).await) })).await
}

//! The `api` Lambda: API Gateway HTTP API -> `ferry_core::api::Api`. It builds the AWS
//! clients once from its environment and hands every request to the shared handler.

use std::sync::Arc;

use ferry_core::api::Api;
use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::ports::SystemClock;
use ferry_core::service::JobService;
use lambda_http::{Error, Request, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_core::telemetry::init(true);
    let backend = ferry_aws::AwsBackend::from_env().await?;
    let events = backend.jobs.clone();
    let service = JobService {
        jobs: backend.jobs,
        queue: backend.queue,
        clock: Arc::new(SystemClock),
        catalog: Arc::new(Catalog::from_env()?),
        config: Config::from_env()?,
    };
    let api = Api::new(service, backend.keys).with_events(events);
    let api = &api;
    run(service_fn(move |req: Request| async move { Ok::<_, Error>(ferry_api_lambda::handle(api, req).await) })).await
}

//! The `api` Lambda: API Gateway HTTP API -> `ferry_http::Api`. It builds the AWS
//! clients once from its environment ([`ferry_api_lambda::build`]) and hands every request
//! to the shared handler.

use lambda_http::{Error, Request, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_core::telemetry::init(true);
    let sdk = ferry_aws::sdk_config_from_env().await?;
    let api = ferry_api_lambda::build(&sdk, &|k| std::env::var(k).ok()).await?;
    let api = &api;
    run(service_fn(move |req: Request| async move { Ok::<_, Error>(ferry_api_lambda::handle(api, req).await) })).await
}

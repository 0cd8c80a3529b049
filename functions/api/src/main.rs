//! The `api` Lambda: API Gateway HTTP API, or a Function URL in response-streaming mode
//! (`FERRY_API_INVOKE_MODE=RESPONSE_STREAM`) -> `ferry_http::Api`. It builds the AWS clients
//! once from its environment ([`ferry_api_lambda::build`]) and hands every request to the
//! shared handler.

use lambda_http::Error;

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_core::telemetry::init(true);
    let env = |k: &str| std::env::var(k).ok();
    let mode = ferry_api_lambda::InvokeMode::from_lookup(&env)?;
    let sdk = ferry_aws::sdk_config_from_env().await?;
    let api = ferry_api_lambda::build(&sdk, &env).await?;
    ferry_api_lambda::run(api, mode).await
}

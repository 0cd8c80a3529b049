//! The `webhooks` Lambda: builds the clients and the HTTP transport once
//! ([`ferry_webhooks_lambda::build`]), then hands every batch from the webhook queue to the
//! shared handler.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_core::telemetry::init(true);
    let sdk = ferry_aws::sdk_config_from_env().await?;
    let webhooks = &ferry_webhooks_lambda::build(&sdk, &|k| std::env::var(k).ok()).await?;
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        Ok::<_, Error>(ferry_webhooks_lambda::handle(webhooks, event.payload).await)
    }))
    .await
}

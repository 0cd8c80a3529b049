//! The `dispatcher` Lambda: builds the AWS clients once (DynamoDB, SQS, ECS) from its
//! environment ([`ferry_dispatcher_lambda::build`]), then hands every event (the jobs
//! table's stream, the one-minute schedule) to the shared handler.

use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_core::telemetry::init(true);
    let sdk = ferry_aws::sdk_config_from_env().await?;
    let handlers = &ferry_dispatcher_lambda::build(&sdk, &|k| std::env::var(k).ok()).await?;
    run(service_fn(move |event: LambdaEvent<Value>| async move {
        let outcome = ferry_dispatcher_lambda::handle(handlers, event.payload).await?;
        Ok::<_, Error>(serde_json::to_value(outcome)?)
    }))
    .await
}

//! The `ws` Lambda: API Gateway WebSocket API -> `ferry_core::ws::WsApi`. It builds the AWS
//! clients once from its environment and hands every route invocation to the shared handler.

use std::sync::Arc;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use ferry_aws::{ApiGatewayNotifier, DynamoApiKeyStore, DynamoConnectionStore, DynamoJobStore};
use ferry_core::ports::SystemClock;
use ferry_core::publish::ProgressHub;
use ferry_core::ws::WsApi;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_core::telemetry::init(true);
    let endpoint = std::env::var("FERRY_WS_MANAGEMENT_ENDPOINT").ok().filter(|v| !v.trim().is_empty()).ok_or(
        "FERRY_WS_MANAGEMENT_ENDPOINT is required: the WebSocket API's Management endpoint, \
         https://{api-id}.execute-api.{region}.amazonaws.com/{stage}",
    )?;
    // Only the table is needed here (no queue), so AwsBackend::from_env, which also resolves
    // the queue URL, is not used; the table name follows the same FERRY_TABLE rule.
    let sdk = ferry_aws::sdk_config_from_env().await;
    let table = std::env::var("FERRY_TABLE").ok().filter(|v| !v.trim().is_empty());
    let table = table.unwrap_or_else(|| ferry_aws::config::DEFAULT_TABLE.to_string());
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let jobs = Arc::new(DynamoJobStore::new(dynamo.clone(), &table));
    let hub = ProgressHub {
        jobs: jobs.clone(),
        events: jobs,
        connections: Arc::new(DynamoConnectionStore::new(dynamo.clone(), &table)),
        notifier: Arc::new(ApiGatewayNotifier::new(&sdk, &endpoint)),
        clock: Arc::new(SystemClock),
    };
    tracing::info!(%table, %endpoint, "ws function configured");
    let api = WsApi { hub: Arc::new(hub), keys: Arc::new(DynamoApiKeyStore::new(dynamo, &table)) };
    let api = &api;
    run(service_fn(move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
        Ok::<_, Error>(ferry_ws_lambda::handle(api, event.payload).await)
    }))
    .await
}

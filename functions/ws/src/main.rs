//! The `ws` Lambda: API Gateway WebSocket API -> `ferry_core::ws::WsApi`. It builds the AWS
//! clients once from its environment and hands every route invocation to the shared handler.

use std::sync::Arc;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use ferry_aws::{ApiGatewayNotifier, TableStores};
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
    // Only the table is needed here (no queue, so no queue URL lookup at cold start).
    let sdk = ferry_aws::sdk_config_from_env().await;
    let stores = TableStores::from_env(&sdk);
    let hub = ProgressHub {
        jobs: stores.jobs.clone(),
        events: stores.jobs,
        connections: stores.connections,
        notifier: Arc::new(ApiGatewayNotifier::new(&sdk, &endpoint)),
        clock: Arc::new(SystemClock),
    };
    let api = WsApi { hub: Arc::new(hub), keys: stores.keys };
    let api = &api;
    run(service_fn(move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
        Ok::<_, Error>(ferry_ws_lambda::handle(api, event.payload).await)
    }))
    .await
}

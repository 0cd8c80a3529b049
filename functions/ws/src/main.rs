//! The `ws` Lambda: API Gateway WebSocket API -> `ferry_core::ws::WsApi`. It builds the AWS
//! clients once from its environment ([`ferry_ws_lambda::build`]) and hands every route
//! invocation to the shared handler.

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    ferry_core::telemetry::init(true);
    let sdk = ferry_aws::sdk_config_from_env().await?;
    let api = ferry_ws_lambda::build(&sdk, &|k| std::env::var(k).ok())?;
    let api = &api;
    run(service_fn(move |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| async move {
        Ok::<_, Error>(ferry_ws_lambda::handle(api, event.payload).await)
    }))
    .await
}

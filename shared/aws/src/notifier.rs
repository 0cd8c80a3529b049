//! The `Notifier` port on the API Gateway Management API: `PostToConnection` to the
//! WebSocket API's connections. Its endpoint is the WebSocket API's own
//! (`https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`), or, locally, the
//! Management API that `ferry dev` serves, so the same code runs over the same wire.

use async_trait::async_trait;
use aws_sdk_apigatewaymanagement::Client;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_smithy_types::error::display::DisplayErrorContext;
use ferry_core::ports::{Notifier, NotifyError};

/// Posts to WebSocket connections through the Management API.
#[derive(Debug, Clone)]
pub struct ApiGatewayNotifier {
    client: Client,
}

impl ApiGatewayNotifier {
    /// A notifier for the WebSocket API whose Management endpoint is `endpoint`.
    pub fn new(sdk: &aws_config::SdkConfig, endpoint: &str) -> Self {
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(sdk).endpoint_url(endpoint).build();
        ApiGatewayNotifier { client: Client::from_conf(config) }
    }

    /// The Management endpoint of a WebSocket API stage.
    pub fn endpoint_for(api_id: &str, region: &str, stage: &str) -> String {
        format!("https://{api_id}.execute-api.{region}.amazonaws.com/{stage}")
    }
}

#[async_trait]
impl Notifier for ApiGatewayNotifier {
    async fn post(&self, connection_id: &str, data: &[u8]) -> Result<(), NotifyError> {
        let result =
            self.client.post_to_connection().connection_id(connection_id).data(Blob::new(data.to_vec())).send().await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => {
                let service = err.as_service_error();
                if service.is_some_and(|e| e.is_gone_exception()) {
                    Err(NotifyError::Gone)
                } else if service.is_some_and(|e| e.is_limit_exceeded_exception()) {
                    Err(NotifyError::LimitExceeded)
                } else if service.is_some_and(|e| e.is_payload_too_large_exception()) {
                    Err(NotifyError::PayloadTooLarge)
                } else {
                    Err(NotifyError::Failed(DisplayErrorContext(&err).to_string()))
                }
            }
        }
    }
}

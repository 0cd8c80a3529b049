//! DynamoDB's errors as the ports' `StoreError`.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use ferry_core::ports::StoreError;

/// Error codes DynamoDB uses to say "slow down"; they become `StoreError::Throttled`.
pub(crate) const THROTTLE_CODES: [&str; 4] =
    ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded", "ThrottlingError"];

/// Maps an SDK error: throttling codes to `Throttled`, anything else to `Unavailable`
/// with the full error chain (the SDK's own `Display` says only "service error").
pub(crate) fn store_err<E, R>(operation: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let throttled = err.code().is_some_and(|c| THROTTLE_CODES.contains(&c));
    let message = format!("DynamoDB {operation}: {}", DisplayErrorContext(&err));
    if throttled {
        tracing::warn!(operation, "DynamoDB throttled the request");
        StoreError::Throttled(message)
    } else {
        tracing::error!(operation, error = %message, "DynamoDB call failed");
        StoreError::Unavailable(message)
    }
}

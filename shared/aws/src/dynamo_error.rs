//! DynamoDB's errors as the ports' `StoreError`.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use ferry_core::ports::StoreError;

/// Error codes DynamoDB uses to say "slow down"; they become `StoreError::Throttled`.
pub(crate) const THROTTLE_CODES: [&str; 4] =
    ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded", "ThrottlingError"];

/// Error codes that mean "this request can never succeed as it is" (an item over 400 KB, an
/// expression DynamoDB rejects); they become `StoreError::Refused`. A transaction reports
/// the same per item as the cancellation reason `ValidationError`.
pub(crate) const REFUSAL_CODES: [&str; 3] =
    ["ValidationException", "ValidationError", "ItemCollectionSizeLimitExceededException"];

/// Maps an SDK error: throttling codes to `Throttled`, refusals to `Refused`, anything else to `Unavailable`
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
    } else if err.code().is_some_and(|c| REFUSAL_CODES.contains(&c)) {
        tracing::error!(operation, error = %message, "DynamoDB refused the request");
        StoreError::Refused(message)
    } else {
        tracing::error!(operation, error = %message, "DynamoDB call failed");
        StoreError::Unavailable(message)
    }
}

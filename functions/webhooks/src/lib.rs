//! The webhooks Lambda's handler: one plain async function over [`Webhooks`], called by
//! `main` with the AWS adapters and by tests with any.
//!
//! Its trigger is the webhook queue's event source mapping (`ReportBatchItemFailures`). Each
//! record is one delivery's try ([`Webhooks::deliver`]); the records of a batch are tried at
//! once, so a receiver that hangs holds up only its own record, for the 15 s timeout. A try
//! that is to be repeated hides its message until then (`ChangeMessageVisibility`, up to
//! 12 h) and is reported as a batch item failure, so Lambda leaves it in the queue; a spent
//! schedule makes it visible at once, and the queue's redrive moves it to the dead-letter
//! queue.

use std::sync::Arc;

use ferry_core::deliver::{DeliverySettings, Step, WebhookMessage, Webhooks, settle};
use ferry_core::webhook::UrlPolicy;
use ferry_http::webhook_client::HttpTransport;
use serde_json::{Value, json};

/// Why the Lambda cannot start.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// The deliverer over [`ferry_aws::webhooks_root_from_lookup`]'s root, posting over
/// HTTPS to public addresses only.
pub async fn build(
    sdk: &ferry_aws::SdkConfig,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Webhooks, BuildError> {
    let root = ferry_aws::webhooks_root_from_lookup(sdk, env)?;
    let transport = HttpTransport::new(UrlPolicy::AWS, root.ports.resolver.clone())?;
    Ok(root.webhooks(Arc::new(transport), DeliverySettings::default()))
}

/// Handles one batch of the webhook queue; answers the batch item failures (the records to
/// leave in the queue).
pub async fn handle(webhooks: &Webhooks, event: Value) -> Value {
    let records = event.get("Records").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut tries = tokio::task::JoinSet::new();
    for record in records {
        let webhooks = webhooks.clone();
        tries.spawn(async move {
            let id = record["messageId"].as_str().unwrap_or_default().to_string();
            let done = one(&webhooks, &record).await;
            (id, done)
        });
    }
    let mut failures = vec![];
    while let Some(joined) = tries.join_next().await {
        match joined {
            Ok((_, true)) => {}
            Ok((id, false)) => failures.push(json!({"itemIdentifier": id})),
            Err(e) => tracing::error!(error = %e, "a webhook try panicked"),
        }
    }
    json!({"batchItemFailures": failures})
}

/// One record: whether it is done (Lambda deletes it) or stays in the queue.
async fn one(webhooks: &Webhooks, record: &Value) -> bool {
    let receipt = record["receiptHandle"].as_str().unwrap_or_default();
    let message: WebhookMessage = match serde_json::from_str(record["body"].as_str().unwrap_or_default()) {
        Ok(m) => m,
        Err(e) => {
            // Left in the queue: redrive moves it to the dead-letter queue, to be looked at.
            tracing::error!(error = %e, "unreadable webhook message");
            return false;
        }
    };
    let step = match webhooks.deliver(&message).await {
        Ok(step) => step,
        Err(e) => {
            tracing::warn!(job_id = %message.job_id, error = %e, "webhook try failed; the message comes back");
            return false;
        }
    };
    if step != Step::Done
        && let Err(e) = settle(webhooks.queue.as_ref(), receipt, step).await
    {
        tracing::warn!(job_id = %message.job_id, error = %e, "could not reschedule the webhook message");
    }
    step == Step::Done
}

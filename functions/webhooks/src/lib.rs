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

use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::deliver::{DeliverySettings, Step, WebhookMessage, Webhooks, settle};
use ferry_core::fleet::NoLauncher;
use ferry_core::pool::Pools;
use ferry_core::ports::{NoNotifier, Queues};
use ferry_core::root::Root;
use ferry_core::webhook::UrlPolicy;
use ferry_http::webhook_client::HttpTransport;
use serde_json::{Value, json};

/// Why the Lambda cannot start.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// The deliverer over the table (`FERRY_TABLE`), the webhook queue
/// (`FERRY_WEBHOOK_QUEUE_URL`, required), the results bucket the job views sign output URLs
/// in (`FERRY_RESULTS_BUCKET`), the KMS key the tenants' secrets are sealed with
/// (`FERRY_WEBHOOK_KEY_ID`) and the service's settings, posting over HTTPS to public addresses
/// only.
pub async fn build(
    sdk: &ferry_aws::SdkConfig,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Webhooks, BuildError> {
    let queue = env("FERRY_WEBHOOK_QUEUE_URL")
        .filter(|v| !v.trim().is_empty())
        .ok_or("FERRY_WEBHOOK_QUEUE_URL is required: the webhook queue's URL")?;
    let aws = ferry_aws::AwsPorts::new(sdk, &ferry_aws::config::table_from_lookup(env))
        .with_results_bucket(env("FERRY_RESULTS_BUCKET").as_deref())
        .with_webhook_queue(Some(&queue))
        .with_webhook_key(ferry_aws::root::webhook_key_from_lookup(env).as_deref())?;
    let ports = aws.ports(Queues::none(), Arc::new(NoLauncher), Arc::new(NoNotifier));
    let config = Config::from_lookup(env)?;
    // Job views need no catalog: the deliverer reads none.
    let root = Root::new(ports, Catalog::default(), Pools::default(), config);
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

//! SQS adapter for the `MessageQueue` port: the work queues, and the webhook queue.
//!
//! A message carries ids only: the body is `{"job_id": "...", "attempt": n}` and the
//! tenant, model and trace id ride in String message attributes (`ferry.tenant`,
//! `ferry.model`, `ferry.trace_id`), so an executor can route and log before it reads
//! the job and the body stays tiny. The job store stays the source of truth; redrive to a
//! dead-letter queue (set up in [`crate::bootstrap`](mod@crate::bootstrap)) takes care of poison messages.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use ferry_core::deliver::WebhookMessage;
use ferry_core::ports::{MessageQueue, QueueDepth, QueueError, Received, WorkMessage};
use ferry_core::{JobId, TenantId};

pub(crate) const ATTR_TENANT: &str = "ferry.tenant";
pub(crate) const ATTR_MODEL: &str = "ferry.model";
pub(crate) const ATTR_TRACE: &str = "ferry.trace_id";

/// SQS caps: 10 messages per receive, 20 s of long polling, 12 h of invisibility.
const MAX_BATCH: u32 = 10;
const MAX_WAIT_S: u64 = 20;
const MAX_VISIBILITY_S: u64 = 43_200;

/// Error codes meaning the receipt handle is unknown, malformed or no longer in flight.
const RECEIPT_CODES: [&str; 4] =
    ["ReceiptHandleIsInvalid", "InvalidIdFormat", "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight"];

/// Error codes meaning "slow down".
const THROTTLE_CODES: [&str; 4] = ["RequestThrottled", "ThrottlingException", "Throttling", "OverLimit"];

fn queue_err<E, R>(operation: &str, err: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().unwrap_or_default();
    let message = format!("SQS {operation}: {}", DisplayErrorContext(&err));
    if THROTTLE_CODES.contains(&code) {
        tracing::warn!(operation, "SQS throttled the request");
        QueueError::Throttled(message)
    } else {
        tracing::error!(operation, error = %message, "SQS call failed");
        QueueError::Unavailable(message)
    }
}

/// Like [`queue_err`], but recognises a bad receipt handle, which SQS reports under
/// several codes (and, for a malformed handle, as a generic InvalidParameterValue).
fn receipt_err<E, R>(operation: &str, err: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().unwrap_or_default();
    let about_receipt = err.message().is_some_and(|m| m.to_ascii_lowercase().contains("receipt"));
    if RECEIPT_CODES.contains(&code) || (code == "InvalidParameterValue" && about_receipt) {
        tracing::debug!(operation, code, "invalid receipt handle");
        return QueueError::InvalidReceipt;
    }
    queue_err(operation, err)
}

/// Whole seconds for SQS, rounded up so a short but non-zero duration never becomes
/// "visible at once", and capped at `max`.
fn secs_ceil(d: Duration, max: u64) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.min(max) as i32
}

fn string_attr(value: &str) -> Result<MessageAttributeValue, QueueError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| QueueError::Unavailable(format!("SQS message attribute could not be built: {e}")))
}

/// How a message type is carried by SQS: its body and message attributes.
pub trait SqsMessage: Sized + Send + Sync + 'static {
    /// The body and the attributes to send.
    fn encode(&self) -> Result<(String, HashMap<String, MessageAttributeValue>), QueueError>;
    /// A received message (its body and attributes) as `Self`.
    fn decode(message: &Message) -> Result<Self, QueueError>;
}

/// A queue of `M` on SQS.
#[derive(Debug, Clone)]
pub struct SqsQueue<M> {
    client: Client,
    queue_url: String,
    kind: std::marker::PhantomData<fn() -> M>,
}

/// The work queue on SQS.
pub type SqsWorkQueue = SqsQueue<WorkMessage>;

/// The webhook queue on SQS.
pub type SqsWebhookQueue = SqsQueue<WebhookMessage>;

impl<M> SqsQueue<M> {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        SqsQueue { client, queue_url: queue_url.into(), kind: std::marker::PhantomData }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

/// How many times a message has been received (SQS's `ApproximateReceiveCount`).
fn receive_count(message: &Message) -> u32 {
    message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
}

fn corrupt(message: &Message, why: String) -> QueueError {
    QueueError::Corrupt(format!("message {}: {why}", message.message_id().unwrap_or("?")))
}

/// A received message as `M`, with its receipt and receive count.
pub(crate) fn decode<M: SqsMessage>(message: &Message) -> Result<Received<M>, QueueError> {
    let receipt = message.receipt_handle().ok_or_else(|| corrupt(message, "no receipt handle".into()))?;
    Ok(Received { message: M::decode(message)?, receipt: receipt.to_string(), receive_count: receive_count(message) })
}

/// A work message: the body gives the ids; the attributes give tenant, model and trace id.
/// A missing model or trace id decodes as empty (they only route and correlate), but a
/// message without a tenant cannot be attributed and is corrupt.
impl SqsMessage for WorkMessage {
    fn encode(&self) -> Result<(String, HashMap<String, MessageAttributeValue>), QueueError> {
        let body = serde_json::json!({"job_id": self.job_id.to_string(), "attempt": self.attempt});
        let mut attributes = HashMap::from([(ATTR_TENANT.to_string(), string_attr(self.tenant.as_str())?)]);
        // SQS rejects empty attribute values: leave empty ones out (they decode as empty).
        for (name, value) in [(ATTR_MODEL, &self.model), (ATTR_TRACE, &self.trace_id)] {
            if !value.is_empty() {
                attributes.insert(name.to_string(), string_attr(value)?);
            }
        }
        Ok((body.to_string(), attributes))
    }

    fn decode(message: &Message) -> Result<Self, QueueError> {
        let corrupt = |why: String| corrupt(message, why);
        let body: serde_json::Value = serde_json::from_str(message.body().unwrap_or_default())
            .map_err(|e| corrupt(format!("body is not JSON: {e}")))?;
        let job_id: JobId = body
            .get("job_id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| corrupt("body has no job_id".into()))?
            .parse()
            .map_err(|e| corrupt(format!("job_id: {e}")))?;
        let attempt = body
            .get("attempt")
            .and_then(|v| v.as_u64())
            .and_then(|a| u32::try_from(a).ok())
            .ok_or_else(|| corrupt("body has no valid attempt".into()))?;

        let attrs = message.message_attributes();
        let attr = |name: &str| attrs.and_then(|a| a.get(name)).and_then(|v| v.string_value()).map(str::to_string);
        let tenant = attr(ATTR_TENANT).ok_or_else(|| corrupt(format!("no {ATTR_TENANT} attribute")))?;
        let tenant = TenantId::new(tenant).map_err(|e| corrupt(format!("{ATTR_TENANT}: {e}")))?;
        Ok(WorkMessage {
            job_id,
            attempt,
            tenant,
            model: attr(ATTR_MODEL).unwrap_or_default(),
            trace_id: attr(ATTR_TRACE).unwrap_or_default(),
        })
    }
}

/// A webhook message: the whole message as the JSON body.
impl SqsMessage for WebhookMessage {
    fn encode(&self) -> Result<(String, HashMap<String, MessageAttributeValue>), QueueError> {
        let body = serde_json::to_string(self).map_err(|e| QueueError::Corrupt(format!("webhook message: {e}")))?;
        Ok((body, HashMap::new()))
    }

    fn decode(message: &Message) -> Result<Self, QueueError> {
        serde_json::from_str(message.body().unwrap_or_default()).map_err(|e| corrupt(message, format!("body: {e}")))
    }
}

#[async_trait]
impl<M: SqsMessage> MessageQueue<M> for SqsQueue<M> {
    async fn send(&self, message: &M) -> Result<(), QueueError> {
        let (body, attributes) = message.encode()?;
        let out = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .set_message_attributes((!attributes.is_empty()).then_some(attributes))
            .send()
            .await
            .map_err(|e| queue_err("SendMessage", e))?;
        tracing::debug!(queue = %self.queue_url, message_id = out.message_id().unwrap_or_default(), "message sent");
        Ok(())
    }

    async fn receive(&self, max: u32, wait: Duration, visibility: Duration) -> Result<Vec<Received<M>>, QueueError> {
        let wait_s = secs_ceil(wait, MAX_WAIT_S);
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(wait_s)
            .visibility_timeout(secs_ceil(visibility, MAX_VISIBILITY_S))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .customize()
            .config_override(long_poll_timeouts(self.client.config().timeout_config(), wait_s))
            .send()
            .await
            .map_err(|e| queue_err("ReceiveMessage", e))?;

        // A corrupt message is skipped, not allowed to hide the good ones in its batch: it
        // stays invisible for `visibility`, and redrive moves it to the dead-letter queue
        // after enough receives. Only a batch with nothing usable reports the error.
        let mut deliveries = Vec::new();
        let mut first_error = None;
        for message in out.messages() {
            match decode(message) {
                Ok(delivery) => deliveries.push(delivery),
                Err(err) => {
                    tracing::warn!(error = %err, "skipping a corrupt message");
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) if deliveries.is_empty() => Err(err),
            _ => Ok(deliveries),
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| receipt_err("DeleteMessage", e))?;
        Ok(())
    }

    async fn set_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(secs_ceil(visibility, MAX_VISIBILITY_S))
            .send()
            .await
            .map_err(|e| receipt_err("ChangeMessageVisibility", e))?;
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| queue_err("GetQueueAttributes", e))?;
        let count = |name: QueueAttributeName| {
            out.attributes().and_then(|a| a.get(&name)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        })
    }
}

/// A long poll may take its wait time before answering: it is added to the client's attempt
/// and operation timeouts (ferry_aws::Timeouts), so only a poll that overruns its wait by
/// as much as an ordinary call may take is cut.
fn long_poll_timeouts(base: Option<&TimeoutConfig>, wait_s: i32) -> aws_sdk_sqs::config::Builder {
    let wait = Duration::from_secs(wait_s.max(0) as u64);
    let mut t = TimeoutConfig::builder();
    if let Some(base) = base {
        if let Some(c) = base.connect_timeout() {
            t = t.connect_timeout(c);
        }
        if let Some(r) = base.read_timeout() {
            t = t.read_timeout(r + wait);
        }
        if let Some(a) = base.operation_attempt_timeout() {
            t = t.operation_attempt_timeout(a + wait);
        }
        if let Some(o) = base.operation_timeout() {
            t = t.operation_timeout(o + wait);
        }
    }
    aws_sdk_sqs::config::Builder::default().timeout_config(t.build())
}

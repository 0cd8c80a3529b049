//! Webhook delivery (issue 15): from a job's change to a signed POST, durable and off the
//! executor's path.
//!
//! 1. The jobs table's stream (the dispatcher Lambda on AWS, the embedded store's change feed
//!    in `ferry dev`) shows each job write as a [`JobChange`]. [`Webhooks::enqueue`] turns the
//!    changes a job's webhook asks for into [`WebhookDelivery`] records, created once per event
//!    (the `webhook-id` is the record's key, so a stream record seen twice delivers once), and
//!    one [`WebhookMessage`] each on the webhook queue.
//! 2. The deliverer (a Lambda on that queue on AWS, [`run_queue`] in `ferry dev`) calls
//!    [`Webhooks::deliver`] per message: it reads the job, signs its view with the tenant's
//!    secrets and posts it through the [`WebhookTransport`] port, then records the attempt and
//!    answers what to do with the message ([`Step`]): delete it, hide it until the next try
//!    (SQS visibility reaches 12 h, past the longest delay), or let redrive dead-letter it.
//! 3. `GET /v1/jobs/{id}/webhooks` lists the records; `POST .../redeliver` sends them again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::job::{Job, JobId, JobStatus, Millis, TenantId, rfc3339};
use crate::ports::{JobChange, JobChanges, MessageQueue, QueueError, StoreError, WebhookSecretStore};
use crate::service::{JobService, ServiceError};
use crate::webhook::{self, Verdict, WebhookEvent};
use crate::webhook_secrets::{SecretsError, signing_secrets};

/// One event to deliver: ids only, the delivery record holds the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookMessage {
    pub job_id: JobId,
    /// The delivery's `webhook-id`.
    pub id: String,
}

/// The webhook queue (its own SQS queue and dead-letter queue on AWS).
pub type WebhookQueue = dyn MessageQueue<WebhookMessage>;

impl JobChange {
    /// The events this change is, among those its webhook asks for, with their ids: the job
    /// ended (`completed`), an executor took it for the first time (`started`), or it
    /// published progress (`output`, one id per second, so at most one delivery a second).
    pub fn events(&self, now: Millis) -> Vec<(WebhookEvent, String)> {
        let Some(hook) = &self.webhook else { return vec![] };
        let wants = |e: WebhookEvent| hook.events.contains(&e);
        let ended = self.status.is_terminal() && self.old_status.is_none_or(|s| !s.is_terminal());
        let started = matches!(self.status, JobStatus::Running) && self.old_status == Some(JobStatus::Queued);
        // New progress events on a job whose status stayed (a status change's own event is
        // not output).
        let progressed =
            !self.status.is_terminal() && self.old_status == Some(self.status) && self.last_seq > self.old_last_seq;
        let mut out = vec![];
        if started && wants(WebhookEvent::Started) {
            out.push((WebhookEvent::Started, format!("msg_{}_started", self.job_id)));
        }
        if progressed && wants(WebhookEvent::Output) {
            out.push((WebhookEvent::Output, format!("msg_{}_output_{}", self.job_id, now / 1000)));
        }
        if ended && wants(WebhookEvent::Completed) {
            out.push((WebhookEvent::Completed, format!("msg_{}_completed", self.job_id)));
        }
        out
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet delivered: its first try, or a retry, is due at `next_try_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// The receiver refused it (a 3xx or a 4xx other than 408, 410 and 429), or its address
    /// is one Ferry does not call.
    Failed,
    /// The receiver answered 410 Gone: the endpoint is disabled for the tenant until a
    /// redelivery.
    Disabled,
    /// Every try of the schedule failed: dead-lettered.
    Dead,
}

/// One try of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub at: Millis,
    /// The receiver's HTTP status; `None` when there was no answer.
    pub status: Option<u16>,
    /// Why there was no answer (a timeout, a refused connection or address).
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// The most attempts a record keeps (the latest).
const MAX_RECORDED_ATTEMPTS: usize = 24;

/// A webhook delivery: one event of one job to its webhook's URL, and every try of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The `webhook-id`, the same on every try and redelivery.
    pub id: String,
    pub job_id: JobId,
    pub tenant: TenantId,
    pub event: WebhookEvent,
    pub url: String,
    /// When the event happened (the body's `timestamp`).
    pub created_at: Millis,
    pub state: DeliveryState,
    pub attempts: Vec<DeliveryAttempt>,
    /// Tries since it was (re)queued: the retry schedule's position.
    pub tries: u32,
    /// Whether a message for it is known to be on the queue: set once the send succeeded (or a
    /// message was received), so a change seen again sends one only when the first send may
    /// have been lost.
    #[serde(default = "yes")]
    pub queued: bool,
    pub next_try_at: Option<Millis>,
    /// 1 when created; each write stores the next (compare-and-set).
    pub version: u64,
    /// When the store may delete it (the job's retention).
    pub retain_until: Millis,
}

fn yes() -> bool {
    true
}

/// Webhook deliveries and the endpoints a 410 disabled. Writes are compare-and-set on the
/// version.
#[async_trait]
pub trait WebhookDeliveryStore: Send + Sync {
    /// Writes a new delivery; `Ok(false)` when one with its job and id exists.
    async fn create(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError>;
    /// One delivery, read consistently.
    async fn get(&self, job_id: &JobId, id: &str) -> Result<Option<WebhookDelivery>, StoreError>;
    /// A job's deliveries, oldest first (may lag a write by a moment on AWS).
    async fn list(&self, job_id: &JobId) -> Result<Vec<WebhookDelivery>, StoreError>;
    /// Stores `delivery` when the stored version is `delivery.version - 1`; `Ok(false)` when
    /// another writer got there first.
    async fn update(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError>;
    /// When `url` was disabled for `tenant` (by a 410), if it is.
    async fn disabled_since(&self, tenant: &TenantId, url: &str) -> Result<Option<Millis>, StoreError>;
    /// Disables `url` for `tenant` from `at`, or (`None`) enables it again.
    async fn set_disabled(&self, tenant: &TenantId, url: &str, at: Option<Millis>) -> Result<(), StoreError>;
}

/// The delivery store of a process that delivers nothing: every call fails.
pub struct NoDeliveries;

#[async_trait]
impl WebhookDeliveryStore for NoDeliveries {
    async fn create(&self, _: &WebhookDelivery) -> Result<bool, StoreError> {
        Err(no_deliveries())
    }
    async fn get(&self, _: &JobId, _: &str) -> Result<Option<WebhookDelivery>, StoreError> {
        Err(no_deliveries())
    }
    async fn list(&self, _: &JobId) -> Result<Vec<WebhookDelivery>, StoreError> {
        Err(no_deliveries())
    }
    async fn update(&self, _: &WebhookDelivery) -> Result<bool, StoreError> {
        Err(no_deliveries())
    }
    async fn disabled_since(&self, _: &TenantId, _: &str) -> Result<Option<Millis>, StoreError> {
        Err(no_deliveries())
    }
    async fn set_disabled(&self, _: &TenantId, _: &str, _: Option<Millis>) -> Result<(), StoreError> {
        Err(no_deliveries())
    }
}

fn no_deliveries() -> StoreError {
    StoreError::Unavailable("this process has no webhook delivery store".into())
}

/// One signed POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookPost {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// A receiver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookResponse {
    pub status: u16,
    pub retry_after: Option<String>,
}

/// Why a POST got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The URL or a resolved address is one Ferry does not call: never retried.
    #[error("refused: {0}")]
    Refused(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Network(String),
}

/// Sends webhook POSTs: no redirects followed, the timeout honoured, at most
/// [`webhook::MAX_RESPONSE_BYTES`] of the answer read, and only to addresses the policy
/// accepts, checked on the address connected to.
#[async_trait]
pub trait WebhookTransport: Send + Sync {
    async fn post(&self, post: WebhookPost) -> Result<WebhookResponse, TransportError>;
}

/// The transport of a process that posts nothing (the API: it only lists and queues).
pub struct NoTransport;

#[async_trait]
impl WebhookTransport for NoTransport {
    async fn post(&self, _: WebhookPost) -> Result<WebhookResponse, TransportError> {
        Err(TransportError::Network("this process does not deliver webhooks".into()))
    }
}

/// What the queue should do with a message after [`Webhooks::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Delete it: delivered, refused for good, or nothing left to do.
    Done,
    /// Hide it for this long: the next try.
    RetryIn(Duration),
    /// Make it visible again without deleting it: each receive of a dead delivery answers this
    /// again, until its receives reach the queue's redrive limit ([`MAX_RECEIVES`]) and SQS
    /// moves it to the dead-letter queue.
    DeadLetter,
}

/// The retry schedule and the request timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// The delay before each retry; one try more than delays in all.
    pub delays: Vec<Duration>,
    pub timeout: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings { delays: webhook::RETRY_DELAYS.to_vec(), timeout: webhook::TIMEOUT }
    }
}

/// Why a webhook call failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The job was submitted without a webhook.
    #[error("the job has no webhook")]
    NoWebhook,
    /// A redelivery named a delivery the job does not have.
    #[error("the job has no delivery {0}")]
    NoSuchDelivery(String),
    /// Nothing to redeliver yet: the job has not produced an event its webhook asks for.
    #[error("the job has no webhook delivery yet")]
    NothingToRedeliver,
}

/// Webhook delivery over the ports. Built by [`crate::root::Root::webhooks`].
#[derive(Clone)]
pub struct Webhooks {
    /// Jobs and their views (the body's `data`).
    pub service: JobService,
    pub deliveries: Arc<dyn WebhookDeliveryStore>,
    pub secrets: Arc<dyn WebhookSecretStore>,
    pub queue: Arc<WebhookQueue>,
    pub transport: Arc<dyn WebhookTransport>,
    pub settings: DeliverySettings,
}

/// Receives after which the webhook queue dead-letters a message (its redrive policy, in
/// `infra/sqs.tf` and the embedded queue alike): past the schedule's eight tries, with room for
/// receives that tried nothing (a store that was unavailable, an early copy).
pub const MAX_RECEIVES: u32 = 16;

/// Tries of a compare-and-set on a delivery before giving up on the write.
const CAS_TRIES: usize = 5;

/// A message received this much before its delivery's next try is early: it is hidden again
/// until the try is due.
const EARLY_SLACK_MS: u64 = 1000;

impl Webhooks {
    fn now(&self) -> Millis {
        self.service.clock.now()
    }

    /// Records and queues the deliveries `changes` call for; a delivery already recorded is
    /// queued again only when its first send is not known to have succeeded (a send that
    /// failed, after which the stream retries the batch). Returns how many messages were sent.
    pub async fn enqueue(&self, changes: &[JobChange]) -> Result<usize, WebhookError> {
        let now = self.now();
        let mut sent = 0;
        for change in changes {
            let Some(hook) = &change.webhook else { continue };
            for (event, id) in change.events(now) {
                let delivery = WebhookDelivery {
                    id: id.clone(),
                    job_id: change.job_id,
                    tenant: change.tenant.clone(),
                    event,
                    url: hook.url.clone(),
                    created_at: now,
                    state: DeliveryState::Pending,
                    attempts: vec![],
                    tries: 0,
                    queued: false,
                    next_try_at: Some(now),
                    version: 1,
                    retain_until: change.retain_until.max(now),
                };
                let delivery = match self.deliveries.create(&delivery).await? {
                    true => delivery,
                    false => match self.deliveries.get(&change.job_id, &id).await? {
                        Some(d) if d.state == DeliveryState::Pending && !d.queued => d,
                        _ => continue,
                    },
                };
                self.send(delivery).await?;
                tracing::info!(job_id = %change.job_id, event = event.type_name(), "webhook queued");
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Makes one try of the delivery `message` names, and says what to do with the message.
    /// Store errors are returned: the message then comes back after its visibility timeout.
    pub async fn deliver(&self, message: &WebhookMessage) -> Result<Step, WebhookError> {
        let Some(mut delivery) = self.deliveries.get(&message.job_id, &message.id).await? else {
            tracing::warn!(job_id = %message.job_id, id = message.id, "no record for a webhook message; dropped");
            return Ok(Step::Done);
        };
        let now = self.now();
        let read = (delivery.version, delivery.tries);
        match delivery.state {
            DeliveryState::Pending => {}
            DeliveryState::Dead => return Ok(Step::DeadLetter),
            _ => return Ok(Step::Done),
        }
        if let Some(due) = delivery.next_try_at.filter(|t| *t > now + EARLY_SLACK_MS) {
            // Early: a copy of the message (a redelivery's, a stream record seen twice), or one
            // whose visibility could not be set. It waits for the try it would be early for,
            // rather than be dropped and perhaps leave the delivery with no message at all.
            return Ok(Step::RetryIn(Duration::from_millis(due - now)));
        }
        if self.deliveries.disabled_since(&delivery.tenant, &delivery.url).await?.is_some() {
            delivery.state = DeliveryState::Disabled;
            delivery.next_try_at = None;
            self.save(read, delivery).await?;
            return Ok(Step::Done);
        }
        let Some(job) = self.service.jobs.get(&delivery.job_id).await? else {
            delivery.state = DeliveryState::Failed;
            delivery.next_try_at = None;
            self.save(read, delivery).await?;
            return Ok(Step::Done);
        };
        let post = self.signed_post(&delivery, &job, now).await?;
        let started = std::time::Instant::now();
        let answer = self.post_bounded(post).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let at = self.now();
        let (status, error, verdict) = match &answer {
            Ok(r) => {
                (Some(r.status), None, webhook::verdict(Some(r.status), r.retry_after.as_deref(), at as i64 / 1000))
            }
            Err(TransportError::Refused(why)) => (None, Some(format!("refused: {why}")), Verdict::Failed),
            Err(e) => (None, Some(e.to_string()), Verdict::Retry { retry_after: None }),
        };
        tracing::info!(job_id = %delivery.job_id, id = delivery.id, status, error, "webhook attempt");
        delivery.attempts.push(DeliveryAttempt { at, status, error, duration_ms });
        let excess = delivery.attempts.len().saturating_sub(MAX_RECORDED_ATTEMPTS);
        delivery.attempts.drain(..excess);
        delivery.tries += 1;
        delivery.next_try_at = None;
        let step = match verdict {
            Verdict::Delivered => {
                delivery.state = DeliveryState::Delivered;
                Step::Done
            }
            Verdict::Failed => {
                delivery.state = DeliveryState::Failed;
                Step::Done
            }
            Verdict::Disable => {
                delivery.state = DeliveryState::Disabled;
                self.deliveries.set_disabled(&delivery.tenant, &delivery.url, Some(at)).await?;
                tracing::warn!(tenant = %delivery.tenant, "webhook endpoint answered 410: disabled");
                Step::Done
            }
            Verdict::Retry { retry_after } => {
                match webhook::next_delay_on(&self.settings.delays, delivery.tries, retry_after) {
                    Some(delay) => {
                        delivery.next_try_at = Some(at + delay.as_millis() as Millis);
                        Step::RetryIn(delay)
                    }
                    None => {
                        delivery.state = DeliveryState::Dead;
                        tracing::error!(job_id = %delivery.job_id, id = delivery.id, "webhook dead-lettered");
                        Step::DeadLetter
                    }
                }
            }
        };
        self.save(read, delivery).await?;
        Ok(step)
    }

    /// Sends `delivery`'s message, then notes that it is queued (a note lost to a concurrent
    /// write is harmless: the deliverer notes it as well).
    async fn send(&self, delivery: WebhookDelivery) -> Result<WebhookDelivery, WebhookError> {
        self.queue.send(&WebhookMessage { job_id: delivery.job_id, id: delivery.id.clone() }).await?;
        let marked = WebhookDelivery { queued: true, version: delivery.version + 1, ..delivery };
        Ok(if self.deliveries.update(&marked).await? {
            marked
        } else {
            WebhookDelivery { version: marked.version - 1, ..marked }
        })
    }

    async fn post_bounded(&self, post: WebhookPost) -> Result<WebhookResponse, TransportError> {
        let timeout = post.timeout;
        // The transport honours the timeout; this bounds a transport that does not.
        match tokio::time::timeout(timeout + Duration::from_secs(1), self.transport.post(post)).await {
            Ok(answer) => answer,
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    /// The POST for `delivery`: the body `{"type", "timestamp", "data": <job view>}` and the
    /// Standard Webhooks headers, signed now with every secret that signs.
    async fn signed_post(
        &self,
        delivery: &WebhookDelivery,
        job: &Job,
        now: Millis,
    ) -> Result<WebhookPost, WebhookError> {
        let body = serde_json::json!({
            "type": delivery.event.type_name(),
            "timestamp": rfc3339(delivery.created_at),
            "data": self.service.view(job).await,
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let secrets = signing_secrets(self.secrets.as_ref(), &delivery.tenant, now).await?;
        let timestamp = (now / 1000) as i64;
        let signature = webhook::signature_header(&secrets, &delivery.id, timestamp, &body);
        let headers = vec![
            ("content-type".into(), "application/json".into()),
            ("user-agent".into(), concat!("Ferry-Webhooks/", env!("CARGO_PKG_VERSION")).into()),
            ("webhook-id".into(), delivery.id.clone()),
            ("webhook-timestamp".into(), timestamp.to_string()),
            ("webhook-signature".into(), signature),
        ];
        Ok(WebhookPost { url: delivery.url.clone(), headers, body, timeout: self.settings.timeout })
    }

    /// Writes `delivery` (read at `read`'s version and tries) as the next version. When the
    /// compare-and-set loses to a write that tried nothing (the enqueuer noting the message
    /// queued), it is made again over that write; when it loses to another try (a copy of the
    /// message), that try's record stands.
    async fn save(&self, read: (u64, u32), mut delivery: WebhookDelivery) -> Result<(), WebhookError> {
        let (mut version, tries) = read;
        delivery.queued = true;
        for _ in 0..CAS_TRIES {
            delivery.version = version + 1;
            if self.deliveries.update(&delivery).await? {
                return Ok(());
            }
            match self.deliveries.get(&delivery.job_id, &delivery.id).await? {
                Some(fresh) if fresh.tries == tries && fresh.state == DeliveryState::Pending => version = fresh.version,
                _ => break,
            }
        }
        tracing::warn!(job_id = %delivery.job_id, id = delivery.id, "webhook delivery changed meanwhile");
        Ok(())
    }

    /// A tenant's job's deliveries (`NotFound` for a job that is not theirs).
    pub async fn list(&self, tenant: &TenantId, job_id: &JobId) -> Result<Vec<WebhookDelivery>, WebhookError> {
        self.service.get(tenant, job_id).await?;
        let mut list = self.deliveries.list(job_id).await?;
        list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(list)
    }

    /// Sends a job's deliveries again, with the same `webhook-id`s and a fresh schedule: the one
    /// named `id`, else every one not delivered, else (all delivered) the `completed` one. The
    /// endpoint is enabled again if a 410 had disabled it. Returns the deliveries queued.
    pub async fn redeliver(
        &self,
        tenant: &TenantId,
        job_id: &JobId,
        id: Option<&str>,
    ) -> Result<Vec<WebhookDelivery>, WebhookError> {
        let job = self.service.get(tenant, job_id).await?;
        let hook = job.webhook.as_ref().ok_or(WebhookError::NoWebhook)?;
        let all = self.list(tenant, job_id).await?;
        let chosen: Vec<WebhookDelivery> = match id {
            Some(id) => {
                vec![all.iter().find(|d| d.id == id).cloned().ok_or_else(|| WebhookError::NoSuchDelivery(id.into()))?]
            }
            None => {
                let undelivered: Vec<_> = all.iter().filter(|d| d.state != DeliveryState::Delivered).cloned().collect();
                if undelivered.is_empty() {
                    all.iter().filter(|d| d.event == WebhookEvent::Completed).cloned().collect()
                } else {
                    undelivered
                }
            }
        };
        if chosen.is_empty() {
            return Err(WebhookError::NothingToRedeliver);
        }
        self.deliveries.set_disabled(tenant, &hook.url, None).await?;
        let mut queued = vec![];
        for d in chosen {
            let d = self.requeue(d).await?;
            queued.push(self.send(d).await?);
        }
        Ok(queued)
    }

    /// `delivery` reset to pending with a fresh schedule (compare-and-set, re-read on a race).
    async fn requeue(&self, mut delivery: WebhookDelivery) -> Result<WebhookDelivery, WebhookError> {
        for _ in 0..CAS_TRIES {
            let now = self.now();
            let next = WebhookDelivery {
                state: DeliveryState::Pending,
                tries: 0,
                queued: false,
                next_try_at: Some(now),
                version: delivery.version + 1,
                ..delivery.clone()
            };
            if self.deliveries.update(&next).await? {
                return Ok(next);
            }
            delivery = self
                .deliveries
                .get(&delivery.job_id, &delivery.id)
                .await?
                .ok_or_else(|| WebhookError::NoSuchDelivery(delivery.id.clone()))?;
        }
        Err(WebhookError::Service(ServiceError::Contended))
    }
}

/// How long a received webhook message stays hidden while it is being delivered: the request
/// timeout and room for the records around it.
pub fn in_flight_visibility(settings: &DeliverySettings) -> Duration {
    settings.timeout + Duration::from_secs(30)
}

/// Applies a [`Step`] to a received message.
pub async fn settle(queue: &WebhookQueue, receipt: &str, step: Step) -> Result<(), QueueError> {
    match step {
        Step::Done => queue.delete(receipt).await,
        Step::RetryIn(delay) => queue.set_visibility(receipt, delay).await,
        Step::DeadLetter => queue.set_visibility(receipt, Duration::ZERO).await,
    }
}

/// Most deliveries in flight at once in [`run_queue`]: a receiver that hangs holds one slot
/// for the timeout, never the others.
const MAX_IN_FLIGHT: usize = 32;

/// Queues the deliveries of the writes a store's change feed shows ([`JobStore::changes`],
/// the embedded store's; on AWS the dispatcher Lambda does this from the table's stream),
/// until `stop` completes or the feed ends. A batch that cannot be queued is tried again.
///
/// [`JobStore::changes`]: crate::ports::JobStore::changes
pub async fn follow_changes(webhooks: Webhooks, mut changes: JobChanges, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let first = tokio::select! {
            _ = &mut stop => return,
            c = changes.recv() => match c { Some(c) => c, None => return },
        };
        let mut batch = vec![first];
        while let Ok(c) = changes.try_recv() {
            batch.push(c);
        }
        batch.retain(|c| c.webhook.is_some());
        while let Err(e) = webhooks.enqueue(&batch).await {
            tracing::warn!(error = %e, "webhook deliveries could not be queued; trying again");
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

/// The deliverer as a loop over the webhook queue (`ferry dev`, and the tests on moto; on AWS
/// the Lambda's event source mapping receives for it): each message is delivered in its own
/// task. Returns when `stop` completes, after the deliveries in flight end.
pub async fn run_queue(webhooks: Webhooks, stop: impl std::future::Future<Output = ()>) {
    let visibility = in_flight_visibility(&webhooks.settings);
    let mut tasks = tokio::task::JoinSet::new();
    let stopped = stop;
    tokio::pin!(stopped);
    loop {
        while tasks.len() >= MAX_IN_FLIGHT {
            tasks.join_next().await;
        }
        while tasks.try_join_next().is_some() {}
        let room = (MAX_IN_FLIGHT - tasks.len()).min(10) as u32;
        let received = tokio::select! {
            _ = &mut stopped => break,
            r = webhooks.queue.receive(room, Duration::from_secs(1), visibility) => r,
        };
        match received {
            Ok(messages) => {
                for m in messages {
                    let webhooks = webhooks.clone();
                    tasks.spawn(async move {
                        match webhooks.deliver(&m.message).await {
                            Ok(step) => {
                                if let Err(e) = settle(webhooks.queue.as_ref(), &m.receipt, step).await {
                                    tracing::warn!(error = %e, "could not settle a webhook message");
                                }
                            }
                            Err(e) => tracing::warn!(job_id = %m.message.job_id, error = %e, "webhook delivery failed"),
                        }
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook queue receive failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// `GET /v1/jobs/{id}/webhooks`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id` header's value.
    pub id: String,
    /// `job.completed`, `job.started` or `job.output`.
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    pub state: DeliveryState,
    pub created_at: String,
    /// The tries, oldest first (the latest 24).
    pub attempts: Vec<AttemptView>,
    /// When the next try is due; null once it is delivered, failed, disabled or dead.
    pub next_try_at: Option<String>,
}

/// One try as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub at: String,
    /// The receiver's HTTP status; null when there was no answer.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl From<&WebhookDelivery> for DeliveryView {
    fn from(d: &WebhookDelivery) -> Self {
        DeliveryView {
            id: d.id.clone(),
            kind: d.event.type_name().into(),
            url: d.url.clone(),
            state: d.state,
            created_at: rfc3339(d.created_at),
            attempts: d
                .attempts
                .iter()
                .map(|a| AttemptView {
                    at: rfc3339(a.at),
                    status: a.status,
                    error: a.error.clone(),
                    duration_ms: a.duration_ms,
                })
                .collect(),
            next_try_at: d.next_try_at.filter(|_| d.state == DeliveryState::Pending).map(rfc3339),
        }
    }
}

impl From<&[WebhookDelivery]> for DeliveryList {
    fn from(list: &[WebhookDelivery]) -> Self {
        DeliveryList { deliveries: list.iter().map(DeliveryView::from).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::WebhookRequest;

    fn change(old: Option<JobStatus>, new: JobStatus, seqs: (u64, u64), events: &[WebhookEvent]) -> JobChange {
        JobChange {
            job_id: "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B".parse().unwrap(),
            tenant: TenantId::new("acme").unwrap(),
            webhook: Some(WebhookRequest { url: "https://example.com/h".into(), events: events.to_vec() }),
            status: new,
            old_status: old,
            last_seq: seqs.1,
            old_last_seq: seqs.0,
            retain_until: 0,
        }
    }

    fn kinds(c: &JobChange, now: Millis) -> Vec<String> {
        c.events(now)
            .into_iter()
            .map(|(_, id)| id.trim_start_matches("msg_01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B_").into())
            .collect()
    }

    #[test]
    fn changes_become_the_events_the_webhook_asks_for() {
        use JobStatus::*;
        use WebhookEvent::*;
        let all = [Completed, Started, Output];
        assert!(kinds(&change(None, Queued, (0, 0), &all), 0).is_empty(), "a new job is no event");
        assert_eq!(kinds(&change(Some(Queued), Running, (0, 1), &all), 5_400), ["started"]);
        assert_eq!(kinds(&change(Some(Running), Running, (1, 4), &all), 5_400), ["output_5"]);
        assert_eq!(kinds(&change(Some(Running), Running, (1, 1), &all), 0), Vec::<String>::new(), "a lease renewal");
        assert_eq!(kinds(&change(Some(Running), Succeeded, (3, 5), &all), 0), ["completed"]);
        assert_eq!(kinds(&change(Some(Queued), Cancelled, (0, 1), &all), 0), ["completed"]);
        assert!(kinds(&change(Some(Failed), Failed, (5, 6), &all), 0).is_empty(), "already ended");
        assert!(kinds(&change(Some(Running), Queued, (5, 6), &[Completed]), 0).is_empty(), "a retry is no event");
        // A retry's start is no new `started` id: the first one's record dedups it.
        assert_eq!(kinds(&change(Some(Queued), Running, (6, 6), &[Started]), 0), ["started"]);
        assert_eq!(kinds(&change(Some(Running), Succeeded, (3, 5), &[Started]), 0), Vec::<String>::new());
        let none = JobChange { webhook: None, ..change(Some(Running), Succeeded, (3, 5), &all) };
        assert!(none.events(0).is_empty());
        // Output ids are per second: two changes in one second are one delivery.
        let c = change(Some(Running), Running, (3, 5), &[Output]);
        assert_eq!(c.events(7_001), c.events(7_999));
        assert_ne!(c.events(7_999), c.events(8_000));
    }
}

//! Ports: the traits every handler is written against. Each has two adapter sets,
//! `ferry-aws` (DynamoDB, SQS) and `ferry-local` (in-process), held to the same
//! behaviour by the conformance suite in `tests/`.

use std::time::Duration;

use async_trait::async_trait;

use crate::job::{Job, JobId, JobStatus, Millis, TenantId};
use crate::progress::ProgressEvent;

/// Errors from a job or key store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write found the record in another state. `current` is the record as
    /// the store saw it (None when it does not exist), so callers can decide without a re-read.
    #[error("condition failed: the record changed or does not exist")]
    ConditionFailed { current: Option<Box<Job>> },
    /// A create found a record with the same key.
    #[error("record already exists")]
    AlreadyExists,
    /// The backing service is throttling us: retry later (HTTP 429 to clients).
    #[error("store throttled: {0}")]
    Throttled(String),
    /// The backing service failed or could not be reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The store refused the write for good: trying it again cannot succeed (DynamoDB's
    /// ValidationException, most often an item over its 400 KB limit).
    #[error("write refused: {0}")]
    Refused(String),
}

impl StoreError {
    /// Whether trying again later may succeed (throttling, an unreachable service).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Throttled(_) | StoreError::Unavailable(_))
    }
}

/// Errors from a work queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The receipt handle is unknown or expired. SQS reports it for malformed handles and for
    /// changing the visibility of a message no longer in flight; `delete` with an old handle
    /// may instead succeed without effect, so callers must not rely on getting it there.
    #[error("invalid or expired receipt handle")]
    InvalidReceipt,
    #[error("queue throttled: {0}")]
    Throttled(String),
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// A received message body could not be decoded.
    #[error("corrupt message: {0}")]
    Corrupt(String),
}

/// The state a conditional update expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expected {
    pub status: JobStatus,
    pub attempt: u32,
}

/// Binds an `Idempotency-Key` to the job it created, for a tenant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdempotencyRecord {
    pub tenant: TenantId,
    /// The key as the client sent it (stores index a hash of it, never build expressions from it).
    pub key: String,
    /// SHA-256 of the canonical request, to tell "same request again" from "other request, same key".
    pub request_hash: String,
    pub job_id: JobId,
    pub created_at: Millis,
    /// After this the key may be reused.
    pub expires_at: Millis,
}

/// The outcome of [`JobStore::create`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Created {
    /// The job (and its idempotency record, if any) was written.
    New,
    /// The idempotency key was already bound: nothing was written; here is the binding.
    Duplicate(IdempotencyRecord),
}

/// A page query over one tenant's jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListQuery {
    pub tenant: TenantId,
    pub status: Option<JobStatus>,
    /// 1..=100.
    pub limit: u32,
    /// Exclusive start: only jobs strictly older than this id.
    pub after: Option<JobId>,
}

/// One page of jobs. `next` is the id to pass as `after` for the following page; it may be
/// present even when the following page turns out empty (DynamoDB cannot know in advance).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next: Option<JobId>,
}

/// Durable job records with compare-and-set updates.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Writes a new job. With `idem`, the job and the key binding are written atomically,
    /// or, when the key is already bound for this tenant (and not expired), nothing is
    /// written and the existing binding is returned. A job with the same id already
    /// present is `AlreadyExists`.
    async fn create(&self, job: &Job, idem: Option<&IdempotencyRecord>) -> Result<Created, StoreError>;

    /// Writes a new job and moves `idem`'s key to it from `stale`, the job the key is bound
    /// to now, atomically: how a retry with the same `Idempotency-Key` runs a job whose
    /// first try was never queued. When the key is bound to another job by then (a
    /// concurrent retry won), nothing is written and that binding is returned as
    /// `Duplicate`; a key that is no longer bound (expired) is bound as by `create`.
    async fn rebind(&self, job: &Job, idem: &IdempotencyRecord, stale: &JobId) -> Result<Created, StoreError>;

    /// Reads a job by id (any tenant: callers check ownership).
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError>;

    /// A tenant's jobs, newest first, optionally of one status.
    async fn list(&self, query: &ListQuery) -> Result<JobPage, StoreError>;

    /// Writes `job`'s lifecycle fields (status, attempt, started/finished/updated times,
    /// cancel request, executor, lease, output, error, retain_until) if and only if the
    /// stored job has `expected` status and attempt. Immutable fields and `last_seq` are
    /// never written here. On a mismatch, `ConditionFailed` carries the stored job.
    async fn update(&self, job: &Job, expected: Expected) -> Result<(), StoreError>;

    /// [`JobStore::update`] and [`EventStore::append`] as one atomic write: `job`'s
    /// lifecycle fields, and `events` (one job's, seqs `expected_last_seq + 1, + 2, ...`,
    /// 1 to [`MAX_APPEND`] of them) stored with the job's `last_seq` moved to the last, if
    /// and only if the stored job has `expected`'s status and attempt and `last_seq ==
    /// expected_last_seq`. How a job's end and its final events are written: a follower
    /// always gets the final status event of a job that ended, and never one of a job that
    /// did not. On any mismatch nothing is written and `ConditionFailed` carries the stored job.
    async fn update_with_events(
        &self,
        job: &Job,
        expected: Expected,
        expected_last_seq: u64,
        events: &[ProgressEvent],
        retain_until: Millis,
    ) -> Result<(), StoreError>;

    /// Jobs of one non-terminal status across all tenants, oldest first: the watchdog's
    /// scan. Served from an index that may lag writes by a moment, so callers act only
    /// through a compare-and-set on what they read. A terminal status gives an empty page.
    async fn active(&self, status: JobStatus, limit: u32, after: Option<JobId>) -> Result<JobPage, StoreError>;

    /// Every write from now on, in order, when the store has its own change feed (the
    /// embedded one). DynamoDB's is the table's stream, which the dispatcher Lambda reads: `None`.
    fn changes(&self) -> Option<JobChanges> {
        None
    }
}

/// What a job write changed, as far as webhooks care: read from a stream record's old and new
/// images on AWS, from the embedded store's change feed in `ferry dev` ([`JobStore::changes`]).
/// [`crate::deliver`] turns them into deliveries.
#[derive(Debug, Clone, PartialEq)]
pub struct JobChange {
    pub job_id: JobId,
    pub tenant: TenantId,
    pub webhook: Option<crate::webhook::WebhookRequest>,
    pub status: JobStatus,
    /// `None` when the write created the job.
    pub old_status: Option<JobStatus>,
    pub last_seq: u64,
    pub old_last_seq: u64,
    /// When the job record may go: its deliveries go with it.
    pub retain_until: Millis,
}

impl JobChange {
    /// The change from `old` (`None`: created) to `new`.
    pub fn between(old: Option<&Job>, new: &Job) -> JobChange {
        JobChange {
            job_id: new.id,
            tenant: new.tenant.clone(),
            webhook: new.webhook.clone(),
            status: new.status,
            old_status: old.map(|j| j.status),
            last_seq: new.last_seq,
            old_last_seq: old.map_or(0, |j| j.last_seq),
            retain_until: new.retain_until,
        }
    }
}

/// A store's change feed ([`JobStore::changes`]).
pub type JobChanges = tokio::sync::mpsc::UnboundedReceiver<JobChange>;

/// Resolves a host name to its addresses: the system's resolver, or a fixed table in tests.
/// Submit checks a webhook's addresses through it, and the HTTP transport connects only to
/// addresses it returned and [`crate::webhook::check_addresses`] accepted.
#[async_trait]
pub trait Resolver: Send + Sync {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<std::net::IpAddr>>;
}

/// The system's resolver (getaddrinfo, through tokio).
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<std::net::IpAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.map(|a| a.ip()).collect())
    }
}

/// Most events one [`EventStore::append`] takes: DynamoDB's 100 items per transaction,
/// less the job's own update.
pub const MAX_APPEND: usize = 99;

/// Whether `events` is a batch [`EventStore::append`] accepts after `expected_last_seq`:
/// 1 to [`MAX_APPEND`] events of one job, seqs `expected_last_seq + 1, + 2, ...`.
pub fn is_append_batch(events: &[ProgressEvent], expected_last_seq: u64) -> bool {
    !events.is_empty()
        && events.len() <= MAX_APPEND
        && events
            .iter()
            .enumerate()
            .all(|(i, e)| e.job_id == events[0].job_id && Some(e.seq) == expected_last_seq.checked_add(i as u64 + 1))
}

/// Stored progress events, for replay. Implemented by the job store's adapters, because an
/// append moves the job's `last_seq` in the same atomic write.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores `events` (one job's, with consecutive seqs from `expected_last_seq + 1`, 1 to
    /// [`MAX_APPEND`] of them) and sets the job's `last_seq` to the last one, atomically, if
    /// and only if the job's `last_seq` is still `expected_last_seq`. Otherwise nothing is
    /// written and the result is `ConditionFailed { current }` with the stored job (None
    /// when the job does not exist), so the caller can retry with the next numbers; a batch
    /// breaking the shape rules is refused the same way. `retain_until` bounds how long the
    /// events are kept (the job's retention).
    async fn append(
        &self,
        events: &[ProgressEvent],
        expected_last_seq: u64,
        retain_until: Millis,
    ) -> Result<(), StoreError>;

    /// Up to `limit` events of a job with `seq > after`, in order. `last_seq` is the job's
    /// (read by the caller), so stores can fetch by key without a query.
    async fn read(
        &self,
        job_id: &JobId,
        after: u64,
        last_seq: u64,
        limit: u32,
    ) -> Result<Vec<ProgressEvent>, StoreError>;
}

/// A WebSocket connection, recorded at `$connect`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Connection {
    /// API Gateway's connection id.
    pub id: String,
    pub tenant: TenantId,
    pub connected_at: Millis,
    /// API Gateway closes connections after 2 h; the record may be deleted after this.
    pub expires_at: Millis,
}

/// Connections and their job subscriptions.
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    /// Records (or replaces) a connection.
    async fn put(&self, connection: &Connection) -> Result<(), StoreError>;
    async fn get(&self, id: &str) -> Result<Option<Connection>, StoreError>;
    /// Removes a connection and all its subscriptions; returns the jobs it followed.
    /// Deleting an unknown connection is not an error.
    async fn delete(&self, id: &str) -> Result<Vec<JobId>, StoreError>;
    /// Subscribes a connection to a job (idempotent). A connection that was never `put` (or
    /// is already deleted) is `ConditionFailed { current: None }`: a subscribe racing
    /// `$disconnect` must not resurrect a connection record.
    async fn subscribe(&self, id: &str, job_id: &JobId) -> Result<(), StoreError>;
    /// Idempotent as well.
    async fn unsubscribe(&self, id: &str, job_id: &JobId) -> Result<(), StoreError>;
    /// The connections subscribed to a job, read consistently: a subscription written
    /// before this call is always seen.
    async fn subscribers(&self, job_id: &JobId) -> Result<Vec<String>, StoreError>;
}

/// Why a message could not be delivered to a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The connection is closed or unknown (HTTP 410): its record should be deleted.
    #[error("connection gone")]
    Gone,
    /// Too many messages too fast: retry with backoff.
    #[error("rate limit exceeded")]
    LimitExceeded,
    /// The message is larger than the gateway accepts.
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("delivery failed: {0}")]
    Failed(String),
}

/// Pushes messages to WebSocket connections (the API Gateway Management API, or the local
/// gateway of `ferry dev`).
#[async_trait]
pub trait Notifier: Send + Sync {
    async fn post(&self, connection_id: &str, data: &[u8]) -> Result<(), NotifyError>;
}

/// A notifier for processes with no WebSocket API to post to: every post fails (and is
/// counted as failed in the fan-out), so events are stored for replay but pushed nowhere.
pub struct NoNotifier;

#[async_trait]
impl Notifier for NoNotifier {
    async fn post(&self, _connection_id: &str, _data: &[u8]) -> Result<(), NotifyError> {
        Err(NotifyError::Failed("no WebSocket Management endpoint is configured".into()))
    }
}

/// What an API key resolves to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiKeyRecord {
    /// Hex SHA-256 of the key; the key itself is never stored.
    pub key_hash: String,
    pub tenant: TenantId,
    pub created_at: Millis,
}

/// API keys, stored hashed.
#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    async fn lookup(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Inserts or replaces the record for `record.key_hash`.
    async fn put(&self, record: &ApiKeyRecord) -> Result<(), StoreError>;
}

/// One of a tenant's webhook signing secrets ([`crate::webhook`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredWebhookSecret {
    /// `whsec_...`.
    pub secret: String,
    pub created_at: Millis,
    /// When a rotated-out secret stops signing; `None` for the current one.
    pub retires_at: Option<Millis>,
}

/// A tenant's webhook signing secrets, the current one first, and the version conditional
/// writes compare.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebhookSecrets {
    pub tenant: TenantId,
    pub secrets: Vec<StoredWebhookSecret>,
    /// 1 for the first record; each write stores the next.
    pub version: u64,
}

/// Tenants' webhook signing secrets (at rest, the table's customer managed key encrypts them
/// on AWS). Writes are compare-and-set on the version, so two first uses or two rotations at
/// once leave one winner and the loser reads it.
#[async_trait]
pub trait WebhookSecretStore: Send + Sync {
    /// The tenant's record, read consistently; `None` before its first secret.
    async fn get(&self, tenant: &TenantId) -> Result<Option<WebhookSecrets>, StoreError>;
    /// Stores `record` when the stored version is `record.version - 1` (no record at all when
    /// `record.version` is 1). `Ok(false)`: another writer got there first.
    async fn put(&self, record: &WebhookSecrets) -> Result<bool, StoreError>;
}

/// The webhook secret store of a process that signs nothing (executors).
pub struct NoWebhookSecrets;

#[async_trait]
impl WebhookSecretStore for NoWebhookSecrets {
    async fn get(&self, _: &TenantId) -> Result<Option<WebhookSecrets>, StoreError> {
        Err(StoreError::Unavailable("this process has no webhook secret store".into()))
    }
    async fn put(&self, _: &WebhookSecrets) -> Result<bool, StoreError> {
        Err(StoreError::Unavailable("this process has no webhook secret store".into()))
    }
}

/// A unit of work on the queue: ids, never the input (SQS messages are capped at 1 MiB and
/// the store is the source of truth).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkMessage {
    pub job_id: JobId,
    /// The attempt this message is for; a message for an older attempt is stale.
    pub attempt: u32,
    pub tenant: TenantId,
    pub model: String,
    /// Correlates logs across the API, the queue and the executor.
    pub trace_id: String,
}

impl WorkMessage {
    /// The message for `job`'s current attempt.
    pub fn for_job(job: &Job, trace_id: impl Into<String>) -> WorkMessage {
        WorkMessage {
            job_id: job.id,
            attempt: job.attempt,
            tenant: job.tenant.clone(),
            model: job.model.clone(),
            trace_id: trace_id.into(),
        }
    }
}

/// A received message, invisible to other receivers until its visibility timeout lapses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Received<M> {
    pub message: M,
    /// Opaque handle for `delete` and `set_visibility`.
    pub receipt: String,
    /// How many times this message has been received, this time included (starts at 1).
    pub receive_count: u32,
}

/// A received work message.
pub type Delivery = Received<WorkMessage>;

/// Approximate depth, as SQS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
}

/// An at-least-once queue of `M` with visibility timeouts (SQS semantics): the work queues
/// ([`WorkQueue`]) and the webhook queue ([`crate::deliver::WebhookQueue`]).
#[async_trait]
pub trait MessageQueue<M: Send + Sync + 'static>: Send + Sync {
    async fn send(&self, message: &M) -> Result<(), QueueError>;

    /// Receives up to `max` (1..=10) messages, waiting up to `wait` (<= 20 s) for the first;
    /// received messages are hidden for `visibility`.
    async fn receive(&self, max: u32, wait: Duration, visibility: Duration) -> Result<Vec<Received<M>>, QueueError>;

    /// Acknowledges a message: it is never delivered again.
    async fn delete(&self, receipt: &str) -> Result<(), QueueError>;

    /// Extends (or, with zero, ends) the invisibility of a received message.
    async fn set_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError>;

    async fn depth(&self) -> Result<QueueDepth, QueueError>;
}

/// A queue of work: one per pool.
pub trait WorkQueue: MessageQueue<WorkMessage> {}

impl<T: MessageQueue<WorkMessage> + ?Sized> WorkQueue for T {}

/// A queue for processes that send and receive no work (the `ws` Lambda): every call fails.
pub struct NoQueue;

#[async_trait]
impl<M: Send + Sync + 'static> MessageQueue<M> for NoQueue {
    async fn send(&self, _: &M) -> Result<(), QueueError> {
        Err(no_queue())
    }
    async fn receive(&self, _: u32, _: Duration, _: Duration) -> Result<Vec<Received<M>>, QueueError> {
        Err(no_queue())
    }
    async fn delete(&self, _: &str) -> Result<(), QueueError> {
        Err(no_queue())
    }
    async fn set_visibility(&self, _: &str, _: Duration) -> Result<(), QueueError> {
        Err(no_queue())
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        Err(no_queue())
    }
}

fn no_queue() -> QueueError {
    QueueError::Unavailable("this process has no work queue configured".into())
}

/// The work queues: one per pool (each with its dead-letter queue), or one shared by every
/// pool. Cheap to clone.
#[derive(Clone)]
pub struct Queues {
    default: std::sync::Arc<dyn WorkQueue>,
    pools: std::collections::BTreeMap<String, std::sync::Arc<dyn WorkQueue>>,
    dlqs: std::collections::BTreeMap<String, std::sync::Arc<dyn WorkQueue>>,
}

impl Queues {
    /// One queue for every pool.
    pub fn single(queue: std::sync::Arc<dyn WorkQueue>) -> Self {
        Queues { default: queue, pools: Default::default(), dlqs: Default::default() }
    }

    /// No queue at all ([`NoQueue`]).
    pub fn none() -> Self {
        Queues::single(std::sync::Arc::new(NoQueue))
    }

    /// Gives `pool` its own queue.
    pub fn with_pool(mut self, pool: impl Into<String>, queue: std::sync::Arc<dyn WorkQueue>) -> Self {
        self.pools.insert(pool.into(), queue);
        self
    }

    /// Names the dead-letter queue of `pool`'s queue (read by the watchdog).
    pub fn with_dlq(mut self, pool: impl Into<String>, dlq: std::sync::Arc<dyn WorkQueue>) -> Self {
        self.dlqs.insert(pool.into(), dlq);
        self
    }

    /// The queue `pool`'s messages go to.
    pub fn for_pool(&self, pool: &str) -> &std::sync::Arc<dyn WorkQueue> {
        self.pools.get(pool).unwrap_or(&self.default)
    }

    /// Whether `pool` shares the default queue with other pools (its depth is then not its own).
    pub fn is_shared(&self, pool: &str) -> bool {
        !self.pools.contains_key(pool)
    }

    pub fn dlq(&self, pool: &str) -> Option<&std::sync::Arc<dyn WorkQueue>> {
        self.dlqs.get(pool)
    }
}

/// Wall-clock time, a port so tests can move it.
pub trait Clock: Send + Sync {
    fn now(&self) -> Millis;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(start))
    }
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn set(&self, now: Millis) {
        self.0.store(now, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

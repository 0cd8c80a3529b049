//! The embedded adapters, reached from another process: how `ferry dev`'s executor
//! processes use the stack's in-memory store and queues. `ferry dev` answers
//! `POST /internal/v1/ports` with [`answer`]; the executor binary, given `--stack-url`,
//! uses [`RemoteStack`], which implements every port by one such call. The calls carry the
//! port's own arguments and results (JSON), so the semantics are exactly the embedded
//! adapters' (compare-and-set, visibility timeouts), only one loopback hop away.
//!
//! A random token (`x-ferry-stack-token`, handed to the processes `ferry dev` spawns)
//! keeps other local programs out; the endpoint listens on loopback only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ferry_core::fleet::{ExecutorRecord, NoLauncher, PoolState, PoolStore};
use ferry_core::job::{Job, JobId, JobStatus, Millis};
use ferry_core::objects::{ObjectError, ObjectStore, ObjectUrl};
use ferry_core::ports::{
    ApiKeyRecord, ApiKeyStore, Connection, ConnectionStore, Created, Delivery, EventStore, Expected, IdempotencyRecord,
    JobPage, JobStore, ListQuery, MessageQueue, Notifier, QueueDepth, QueueError, Queues, StoreError, SystemClock,
    WorkMessage,
};
use ferry_core::progress::ProgressEvent;
use ferry_core::root::Ports;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The header carrying the stack's token.
pub const TOKEN_HEADER: &str = "x-ferry-stack-token";
/// The path `ferry dev` serves the ports on.
pub const PATH: &str = "/internal/v1/ports";

/// One port call.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    JobCreate {
        job: Job,
        idem: Option<IdempotencyRecord>,
    },
    JobRebind {
        job: Job,
        idem: IdempotencyRecord,
        stale: JobId,
    },
    JobGet {
        id: JobId,
    },
    JobList {
        query: ListQuery,
    },
    JobUpdate {
        job: Job,
        expected: Expected,
    },
    JobUpdateWithEvents {
        job: Job,
        expected: Expected,
        expected_last_seq: u64,
        events: Vec<ProgressEvent>,
        retain_until: Millis,
    },
    JobActive {
        status: JobStatus,
        limit: u32,
        after: Option<JobId>,
    },
    EventAppend {
        events: Vec<ProgressEvent>,
        expected_last_seq: u64,
        retain_until: Millis,
    },
    EventRead {
        job_id: JobId,
        after: u64,
        last_seq: u64,
        limit: u32,
    },
    ConnPut {
        connection: Connection,
    },
    ConnGet {
        id: String,
    },
    ConnDelete {
        id: String,
    },
    ConnSubscribe {
        id: String,
        job_id: JobId,
    },
    ConnUnsubscribe {
        id: String,
        job_id: JobId,
    },
    ConnSubscribers {
        job_id: JobId,
    },
    KeyLookup {
        key_hash: String,
    },
    KeyPut {
        record: ApiKeyRecord,
    },
    QueueSend {
        pool: String,
        message: WorkMessage,
    },
    QueueReceive {
        pool: String,
        max: u32,
        wait_ms: u64,
        visibility_ms: u64,
    },
    QueueDelete {
        pool: String,
        receipt: String,
    },
    QueueVisibility {
        pool: String,
        receipt: String,
        visibility_ms: u64,
    },
    QueueDepth {
        pool: String,
    },
    PoolGet {
        pool: String,
    },
    PoolPut {
        state: PoolState,
        expected: Option<u64>,
    },
    ExecPut {
        record: ExecutorRecord,
    },
    ExecList {
        pool: String,
    },
    ExecDelete {
        id: String,
    },
    /// `body` in base64.
    ObjectPut {
        key: String,
        body: String,
    },
    ObjectGet {
        key: String,
    },
}

/// A port error, as it crosses the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum WireError {
    ConditionFailed { current: Option<Box<Job>> },
    AlreadyExists,
    Throttled { message: String },
    Unavailable { message: String },
    Corrupt { message: String },
    Refused { message: String },
    InvalidReceipt,
    NoObjects,
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ConditionFailed { current } => WireError::ConditionFailed { current },
            StoreError::AlreadyExists => WireError::AlreadyExists,
            StoreError::Throttled(message) => WireError::Throttled { message },
            StoreError::Unavailable(message) => WireError::Unavailable { message },
            StoreError::Corrupt(message) => WireError::Corrupt { message },
            StoreError::Refused(message) => WireError::Refused { message },
        }
    }
}

impl From<QueueError> for WireError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::InvalidReceipt => WireError::InvalidReceipt,
            QueueError::Throttled(message) => WireError::Throttled { message },
            QueueError::Unavailable(message) => WireError::Unavailable { message },
            QueueError::Corrupt(message) => WireError::Corrupt { message },
        }
    }
}

impl From<ObjectError> for WireError {
    fn from(e: ObjectError) -> Self {
        match e {
            ObjectError::NotConfigured => WireError::NoObjects,
            ObjectError::Unavailable(message) => WireError::Unavailable { message },
            ObjectError::Refused(message) => WireError::Refused { message },
        }
    }
}

impl From<WireError> for ObjectError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::NoObjects => ObjectError::NotConfigured,
            WireError::Refused { message } => ObjectError::Refused(message),
            WireError::Unavailable { message } | WireError::Throttled { message } => ObjectError::Unavailable(message),
            other => ObjectError::Unavailable(format!("{other:?}")),
        }
    }
}

impl From<WireError> for StoreError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::ConditionFailed { current } => StoreError::ConditionFailed { current },
            WireError::AlreadyExists => StoreError::AlreadyExists,
            WireError::Throttled { message } => StoreError::Throttled(message),
            WireError::Unavailable { message } => StoreError::Unavailable(message),
            WireError::Corrupt { message } => StoreError::Corrupt(message),
            WireError::Refused { message } => StoreError::Refused(message),
            WireError::InvalidReceipt => StoreError::Corrupt("invalid receipt".into()),
            WireError::NoObjects => StoreError::Unavailable("no results store".into()),
        }
    }
}

impl From<WireError> for QueueError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::InvalidReceipt => QueueError::InvalidReceipt,
            WireError::Throttled { message } => QueueError::Throttled(message),
            WireError::Corrupt { message } => QueueError::Corrupt(message),
            other => QueueError::Unavailable(format!("{other:?}")),
        }
    }
}

/// Answers one call: `Ok(result JSON)` or the port's error.
pub async fn answer(ports: &Ports, call: Call) -> Result<Value, WireError> {
    fn json<T: Serialize>(v: T) -> Result<Value, WireError> {
        serde_json::to_value(v).map_err(|e| WireError::Corrupt { message: e.to_string() })
    }
    let ms = Duration::from_millis;
    match call {
        Call::JobCreate { job, idem } => json(ports.jobs.create(&job, idem.as_ref()).await?),
        Call::JobRebind { job, idem, stale } => json(ports.jobs.rebind(&job, &idem, &stale).await?),
        Call::JobGet { id } => json(ports.jobs.get(&id).await?),
        Call::JobList { query } => json(ports.jobs.list(&query).await?),
        Call::JobUpdate { job, expected } => json(ports.jobs.update(&job, expected).await?),
        Call::JobUpdateWithEvents { job, expected, expected_last_seq, events, retain_until } => {
            json(ports.jobs.update_with_events(&job, expected, expected_last_seq, &events, retain_until).await?)
        }
        Call::JobActive { status, limit, after } => json(ports.jobs.active(status, limit, after).await?),
        Call::EventAppend { events, expected_last_seq, retain_until } => {
            json(ports.events.append(&events, expected_last_seq, retain_until).await?)
        }
        Call::EventRead { job_id, after, last_seq, limit } => {
            json(ports.events.read(&job_id, after, last_seq, limit).await?)
        }
        Call::ConnPut { connection } => json(ports.connections.put(&connection).await?),
        Call::ConnGet { id } => json(ports.connections.get(&id).await?),
        Call::ConnDelete { id } => json(ports.connections.delete(&id).await?),
        Call::ConnSubscribe { id, job_id } => json(ports.connections.subscribe(&id, &job_id).await?),
        Call::ConnUnsubscribe { id, job_id } => json(ports.connections.unsubscribe(&id, &job_id).await?),
        Call::ConnSubscribers { job_id } => json(ports.connections.subscribers(&job_id).await?),
        Call::KeyLookup { key_hash } => json(ports.keys.lookup(&key_hash).await?),
        Call::KeyPut { record } => json(ports.keys.put(&record).await?),
        Call::QueueSend { pool, message } => json(ports.queues.for_pool(&pool).send(&message).await?),
        Call::QueueReceive { pool, max, wait_ms, visibility_ms } => {
            let wait = ms(wait_ms.min(20_000));
            json(ports.queues.for_pool(&pool).receive(max, wait, ms(visibility_ms)).await?)
        }
        Call::QueueDelete { pool, receipt } => json(ports.queues.for_pool(&pool).delete(&receipt).await?),
        Call::QueueVisibility { pool, receipt, visibility_ms } => {
            json(ports.queues.for_pool(&pool).set_visibility(&receipt, ms(visibility_ms)).await?)
        }
        Call::QueueDepth { pool } => json(ports.queues.for_pool(&pool).depth().await?),
        Call::PoolGet { pool } => json(ports.pools.pool_state(&pool).await?),
        Call::PoolPut { state, expected } => json(ports.pools.put_pool_state(&state, expected).await?),
        Call::ExecPut { record } => json(ports.pools.put_executor(&record).await?),
        Call::ExecList { pool } => json(ports.pools.executors(&pool).await?),
        Call::ExecDelete { id } => json(ports.pools.delete_executor(&id).await?),
        Call::ObjectPut { key, body } => {
            let body = BASE64.decode(body).map_err(|e| WireError::Corrupt { message: e.to_string() })?;
            json(ports.objects.put(&key, body).await?)
        }
        Call::ObjectGet { key } => json(ports.objects.get(&key).await?.map(|b| BASE64.encode(b))),
    }
}

/// The reply body: `{"ok": result}` or `{"err": error}`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(Value),
    Err(WireError),
}

/// Every port, one HTTP call away. Cheap to clone.
#[derive(Clone)]
pub struct RemoteStack {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl RemoteStack {
    /// `base` is the stack's HTTP address (`http://127.0.0.1:PORT`).
    pub fn new(base: &str, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        RemoteStack { url: format!("{}{PATH}", base.trim_end_matches('/')), token: token.into(), http }
    }

    async fn call<T: serde::de::DeserializeOwned>(&self, call: &Call) -> Result<T, WireError> {
        let unavailable = |e: reqwest::Error| WireError::Unavailable { message: format!("ferry dev stack: {e}") };
        let resp =
            self.http.post(&self.url).header(TOKEN_HEADER, &self.token).json(call).send().await.map_err(unavailable)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(unavailable)?;
        let reply: Reply = serde_json::from_slice(&body).map_err(|e| WireError::Unavailable {
            message: format!("ferry dev stack answered {status}: {e}: {}", String::from_utf8_lossy(&body)),
        })?;
        match reply {
            Reply::Ok(v) => serde_json::from_value(v).map_err(|e| WireError::Corrupt { message: e.to_string() }),
            Reply::Err(e) => Err(e),
        }
    }

    /// The queue of `pool`, as a `WorkQueue`.
    pub fn queue(&self, pool: &str) -> RemoteQueue {
        RemoteQueue { stack: self.clone(), pool: pool.into() }
    }

    /// Every port of the stack, for an executor of `pool` (its queue; it launches nothing),
    /// pushing progress through `notifier`.
    pub fn ports(&self, pool: &str, notifier: Arc<dyn Notifier>) -> Ports {
        let stack = Arc::new(self.clone());
        Ports {
            jobs: stack.clone(),
            events: stack.clone(),
            connections: stack.clone(),
            keys: stack.clone(),
            webhook_secrets: Arc::new(ferry_core::ports::NoWebhookSecrets),
            deliveries: Arc::new(ferry_core::deliver::NoDeliveries),
            webhook_queue: Arc::new(ferry_core::ports::NoQueue),
            resolver: Arc::new(ferry_core::ports::SystemResolver),
            objects: stack.clone(),
            queues: Queues::single(Arc::new(self.queue(pool))),
            pools: stack,
            launcher: Arc::new(NoLauncher),
            notifier,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Executors write outputs and read inputs through the stack; they sign no URLs (the API
/// does, for the views it serves).
#[async_trait]
impl ObjectStore for RemoteStack {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), ObjectError> {
        Ok(self.call(&Call::ObjectPut { key: key.into(), body: BASE64.encode(body) }).await?)
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ObjectError> {
        let body: Option<String> = self.call(&Call::ObjectGet { key: key.into() }).await?;
        body.map(|b| BASE64.decode(b).map_err(|e| ObjectError::Unavailable(format!("object {key}: {e}")))).transpose()
    }
    async fn url(&self, _key: &str, _ttl: Duration, _now: Millis) -> Result<Option<ObjectUrl>, ObjectError> {
        Ok(None)
    }
}

#[async_trait]
impl ApiKeyStore for RemoteStack {
    async fn lookup(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.call(&Call::KeyLookup { key_hash: key_hash.into() }).await?)
    }
    async fn put(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        Ok(self.call(&Call::KeyPut { record: record.clone() }).await?)
    }
}

#[async_trait]
impl JobStore for RemoteStack {
    async fn create(&self, job: &Job, idem: Option<&IdempotencyRecord>) -> Result<Created, StoreError> {
        Ok(self.call(&Call::JobCreate { job: job.clone(), idem: idem.cloned() }).await?)
    }
    async fn rebind(&self, job: &Job, idem: &IdempotencyRecord, stale: &JobId) -> Result<Created, StoreError> {
        Ok(self.call(&Call::JobRebind { job: job.clone(), idem: idem.clone(), stale: *stale }).await?)
    }
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.call(&Call::JobGet { id: *id }).await?)
    }
    async fn list(&self, query: &ListQuery) -> Result<JobPage, StoreError> {
        Ok(self.call(&Call::JobList { query: query.clone() }).await?)
    }
    async fn update(&self, job: &Job, expected: Expected) -> Result<(), StoreError> {
        Ok(self.call(&Call::JobUpdate { job: job.clone(), expected }).await?)
    }
    async fn update_with_events(
        &self,
        job: &Job,
        expected: Expected,
        expected_last_seq: u64,
        events: &[ProgressEvent],
        retain_until: Millis,
    ) -> Result<(), StoreError> {
        let call = Call::JobUpdateWithEvents {
            job: job.clone(),
            expected,
            expected_last_seq,
            events: events.to_vec(),
            retain_until,
        };
        Ok(self.call(&call).await?)
    }
    async fn active(&self, status: JobStatus, limit: u32, after: Option<JobId>) -> Result<JobPage, StoreError> {
        Ok(self.call(&Call::JobActive { status, limit, after }).await?)
    }
}

#[async_trait]
impl EventStore for RemoteStack {
    async fn append(
        &self,
        events: &[ProgressEvent],
        expected_last_seq: u64,
        retain_until: Millis,
    ) -> Result<(), StoreError> {
        Ok(self.call(&Call::EventAppend { events: events.to_vec(), expected_last_seq, retain_until }).await?)
    }
    async fn read(
        &self,
        job_id: &JobId,
        after: u64,
        last_seq: u64,
        limit: u32,
    ) -> Result<Vec<ProgressEvent>, StoreError> {
        Ok(self.call(&Call::EventRead { job_id: *job_id, after, last_seq, limit }).await?)
    }
}

#[async_trait]
impl ConnectionStore for RemoteStack {
    async fn put(&self, connection: &Connection) -> Result<(), StoreError> {
        Ok(self.call(&Call::ConnPut { connection: connection.clone() }).await?)
    }
    async fn get(&self, id: &str) -> Result<Option<Connection>, StoreError> {
        Ok(self.call(&Call::ConnGet { id: id.into() }).await?)
    }
    async fn delete(&self, id: &str) -> Result<Vec<JobId>, StoreError> {
        Ok(self.call(&Call::ConnDelete { id: id.into() }).await?)
    }
    async fn subscribe(&self, id: &str, job_id: &JobId) -> Result<(), StoreError> {
        Ok(self.call(&Call::ConnSubscribe { id: id.into(), job_id: *job_id }).await?)
    }
    async fn unsubscribe(&self, id: &str, job_id: &JobId) -> Result<(), StoreError> {
        Ok(self.call(&Call::ConnUnsubscribe { id: id.into(), job_id: *job_id }).await?)
    }
    async fn subscribers(&self, job_id: &JobId) -> Result<Vec<String>, StoreError> {
        Ok(self.call(&Call::ConnSubscribers { job_id: *job_id }).await?)
    }
}

#[async_trait]
impl PoolStore for RemoteStack {
    async fn pool_state(&self, pool: &str) -> Result<Option<PoolState>, StoreError> {
        Ok(self.call(&Call::PoolGet { pool: pool.into() }).await?)
    }
    async fn put_pool_state(&self, state: &PoolState, expected: Option<u64>) -> Result<(), StoreError> {
        Ok(self.call(&Call::PoolPut { state: state.clone(), expected }).await?)
    }
    async fn put_executor(&self, record: &ExecutorRecord) -> Result<(), StoreError> {
        Ok(self.call(&Call::ExecPut { record: record.clone() }).await?)
    }
    async fn executors(&self, pool: &str) -> Result<Vec<ExecutorRecord>, StoreError> {
        Ok(self.call(&Call::ExecList { pool: pool.into() }).await?)
    }
    async fn delete_executor(&self, id: &str) -> Result<(), StoreError> {
        Ok(self.call(&Call::ExecDelete { id: id.into() }).await?)
    }
}

/// One pool's queue of a remote stack.
#[derive(Clone)]
pub struct RemoteQueue {
    stack: RemoteStack,
    pool: String,
}

#[async_trait]
impl MessageQueue<WorkMessage> for RemoteQueue {
    async fn send(&self, message: &WorkMessage) -> Result<(), QueueError> {
        Ok(self.stack.call(&Call::QueueSend { pool: self.pool.clone(), message: message.clone() }).await?)
    }
    async fn receive(&self, max: u32, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        let call = Call::QueueReceive {
            pool: self.pool.clone(),
            max,
            wait_ms: wait.as_millis() as u64,
            visibility_ms: visibility.as_millis() as u64,
        };
        Ok(self.stack.call(&call).await?)
    }
    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        Ok(self.stack.call(&Call::QueueDelete { pool: self.pool.clone(), receipt: receipt.into() }).await?)
    }
    async fn set_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        let call = Call::QueueVisibility {
            pool: self.pool.clone(),
            receipt: receipt.into(),
            visibility_ms: visibility.as_millis() as u64,
        };
        Ok(self.stack.call(&call).await?)
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        Ok(self.stack.call(&Call::QueueDepth { pool: self.pool.clone() }).await?)
    }
}

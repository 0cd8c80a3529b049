//! The work loop: long-poll the queue, claim a job with a conditional write, run it on a
//! loaded model while renewing the lease and the message's visibility, watching for a
//! cancel and the timeout, then write the outcome with a conditional write and delete the
//! message. The loop is a plain async function over the ports (job store, queue, progress
//! hub, clock), so the ECS binary, `ferry dev` and the tests run the same code.
//!
//! Exactly once: SQS may deliver a message twice and two executors may race for one job;
//! only the executor whose `queued -> running` compare-and-set wins runs it, and every
//! later write is a compare-and-set on (status, attempt), so a stale executor cannot
//! overwrite a newer attempt's result.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::catalog::{Catalog, ModelSpec};
use ferry_core::fleet::{ExecutorActivity, ExecutorRecord, HEARTBEAT_MS, PoolStore};
use ferry_core::job::{Job, JobError, JobStatus, Millis};
use ferry_core::ports::{Delivery, StoreError, WorkMessage, WorkQueue};
use ferry_core::progress::EventBody;
use ferry_core::publish::ProgressHub;
use ferry_core::service::{JobService, ServiceError};
use ferry_core::state::Transition;
use ferry_core::stream::ProgressStream;
use tokio::sync::{OnceCell, watch};

use crate::models::{LoadedModel, ModelError, Placement, Progress, RunOutcome, StopReason, TokenOut};

/// How long a message for another pool's model stays hidden from this executor.
const FOREIGN_RELEASE: Duration = Duration::from_secs(2);

/// How the worker behaves; every field has a flag in the binary.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Recorded on claimed jobs.
    pub executor_id: String,
    /// The pool this executor serves: it runs the catalog's models of this pool.
    pub pool: String,
    /// `cpu`, `cuda` or `cuda:N`, for models whose catalog entry names no device.
    pub device: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Exit after this long with no work (scale to zero).
    pub idle_timeout: Duration,
    /// On shutdown, how long running jobs may go on before they are released.
    pub grace_period: Duration,
    /// The job lease; renewed when a third of it is left.
    pub lease: Duration,
    /// The message's invisibility; extended when a third of it is left.
    pub visibility: Duration,
    /// Long-poll wait per receive (SQS allows up to 20 s).
    pub poll_wait: Duration,
    /// How often a running job's record is read for a cancel request.
    pub cancel_check: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            executor_id: format!("executor-{}", ulid::Ulid::new()),
            pool: "cpu".into(),
            device: "cpu".into(),
            concurrency: 1,
            idle_timeout: Duration::from_secs(60),
            grace_period: Duration::from_secs(25),
            lease: Duration::from_secs(60),
            visibility: Duration::from_secs(120),
            poll_wait: Duration::from_secs(20),
            cancel_check: Duration::from_millis(500),
        }
    }
}

/// Why the work loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// No work for `idle_timeout`.
    Idle,
    /// Asked to stop (SIGTERM); running jobs finished or were released.
    Shutdown,
}

/// Where models stored in S3 are copied to before loading.
#[derive(Clone)]
pub struct S3Models {
    pub client: aws_sdk_s3::Client,
    /// The local cache (`--model-cache`): one directory per model id.
    pub cache: PathBuf,
}

/// The models this executor serves, each loaded once on first use and kept.
pub struct ModelRegistry {
    specs: HashMap<String, ModelSpec>,
    device: String,
    s3: Option<S3Models>,
    loaded: Mutex<HashMap<String, Arc<OnceCell<Arc<LoadedModel>>>>>,
}

impl ModelRegistry {
    /// The catalog's models of `pool`; `s3` fetches entries that name an `s3_uri`.
    pub fn new(catalog: &Catalog, pool: &str, device: &str, s3: Option<S3Models>) -> ModelRegistry {
        let specs = catalog.models.iter().filter(|m| m.pool == pool).map(|m| (m.id.clone(), m.clone())).collect();
        ModelRegistry { specs, device: device.to_string(), s3, loaded: Mutex::new(HashMap::new()) }
    }

    /// Registers an already loaded model (tests, or models built in code).
    pub fn preload(&self, model: &str, loaded: LoadedModel) {
        let cell = OnceCell::new_with(Some(Arc::new(loaded)));
        self.loaded.lock().unwrap().insert(model.to_string(), Arc::new(cell));
    }

    pub fn serves(&self, model: &str) -> bool {
        self.specs.contains_key(model)
    }

    /// Whether the model is loaded already (no load ahead for a job of it).
    pub fn is_loaded(&self, model: &str) -> bool {
        self.loaded.lock().unwrap().get(model).is_some_and(|c| c.initialized())
    }

    /// The model, loading it on first use (reported on `stream` as log events). A load
    /// that fails is not remembered: the next job tries again.
    pub async fn get(&self, model: &str, stream: &ProgressStream) -> Result<Arc<LoadedModel>, ModelError> {
        let spec =
            self.specs.get(model).ok_or_else(|| ModelError::Load(format!("this executor does not serve {model}")))?;
        let cell = self.loaded.lock().unwrap().entry(model.to_string()).or_default().clone();
        if let Some(m) = cell.get() {
            return Ok(m.clone());
        }
        let loaded = cell
            .get_or_try_init(|| async {
                let _ = stream.push(log("info", format!("loading model {model}")));
                let started = Instant::now();
                let mut spec = spec.clone();
                if let (None, Some(uri)) = (&spec.path, &spec.s3_uri) {
                    let s3 = self.s3.as_ref().ok_or_else(|| {
                        ModelError::Load(format!(
                            "{model}: stored at {uri}, but this executor has no S3 access configured"
                        ))
                    })?;
                    let dir = crate::fetch::cache_dir(&s3.cache, model);
                    let bytes = crate::fetch::sync_s3_dir(&s3.client, uri, &dir).await?;
                    let ms = started.elapsed().as_millis();
                    let _ = stream.push(log("info", format!("fetched {uri}: {bytes} bytes in {ms} ms")));
                    spec.path = Some(dir);
                }
                let device = self.device.clone();
                let loading = spec.clone();
                let model = tokio::task::spawn_blocking(move || load(&loading, &device))
                    .await
                    .map_err(|e| ModelError::Runtime(format!("model loader panicked: {e}")))??;
                let ms = started.elapsed().as_millis();
                tracing::info!(model = %spec.id, load_ms = ms as u64, "model loaded");
                let _ = stream.push(log("info", format!("model loaded in {ms} ms")));
                Ok::<_, ModelError>(Arc::new(model))
            })
            .await?;
        Ok(loaded.clone())
    }
}

/// Loads a catalog entry on its device.
fn load(spec: &ModelSpec, default_device: &str) -> Result<LoadedModel, ModelError> {
    let dir: PathBuf = match (&spec.path, &spec.s3_uri) {
        (Some(p), _) => p.clone(),
        (None, Some(uri)) => return Err(ModelError::Load(format!("{}: {uri} was not fetched", spec.id))),
        (None, None) => return Err(ModelError::Load(format!("{}: the catalog gives no path for this model", spec.id))),
    };
    let placement = Placement::parse(spec.device.as_deref().unwrap_or(default_device), spec.dtype.as_deref())?;
    LoadedModel::load(spec, &dir, &placement)
}

fn log(level: &str, message: String) -> EventBody {
    EventBody::Log { level: level.into(), message }
}

/// The executor: the job service (with its progress hub), the models and the config.
pub struct Worker {
    pub service: JobService,
    pub hub: Arc<ProgressHub>,
    pub models: Arc<ModelRegistry>,
    pub config: WorkerConfig,
    /// Jobs running now.
    running: AtomicUsize,
    /// When the last job ended (or the worker started).
    last_busy: Mutex<Instant>,
    /// What the heartbeat reports.
    activity: Arc<Activity>,
    /// Where the heartbeat goes (the dispatcher counts idle executors and the API explains
    /// jobs whose model is loading); none in tests that do not need it.
    pool_store: std::sync::OnceLock<Arc<dyn PoolStore>>,
}

/// The executor's activity for its heartbeat, with a signal to write it at once on change.
struct Activity {
    state: Mutex<(ExecutorActivity, Millis, Option<String>)>,
    changed: tokio::sync::Notify,
}

impl Activity {
    fn set(&self, activity: ExecutorActivity, now: Millis, model: Option<String>) {
        let mut s = self.state.lock().unwrap();
        if s.0 != activity || s.2 != model {
            *s = (activity, now, model);
            self.changed.notify_one();
        }
    }
}

impl Activity {
    fn new(now: Millis) -> Self {
        Activity { state: Mutex::new((ExecutorActivity::Idle, now, None)), changed: tokio::sync::Notify::new() }
    }
}

/// Set when the executor should take no new work; jobs get the grace period.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown { tx: Arc::new(tx), rx }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn is_set(&self) -> bool {
        *self.rx.borrow()
    }

    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

impl Worker {
    pub fn new(service: JobService, hub: Arc<ProgressHub>, config: WorkerConfig) -> Arc<Worker> {
        Self::with_s3(service, hub, config, None)
    }

    /// Like [`Worker::new`], fetching models stored in S3 with `s3`.
    pub fn with_s3(
        service: JobService,
        hub: Arc<ProgressHub>,
        config: WorkerConfig,
        s3: Option<S3Models>,
    ) -> Arc<Worker> {
        let models = Arc::new(ModelRegistry::new(&service.catalog, &config.pool, &config.device, s3));
        let now = service.clock.now();
        Arc::new(Worker {
            service,
            hub,
            models,
            config,
            running: AtomicUsize::new(0),
            last_busy: Mutex::new(Instant::now()),
            activity: Arc::new(Activity::new(now)),
            pool_store: std::sync::OnceLock::new(),
        })
    }

    /// Sends the executor's heartbeat to `store` while [`Worker::run`] runs (set before it).
    pub fn report_to(&self, store: Arc<dyn PoolStore>) {
        let _ = self.pool_store.set(store);
    }

    /// The queue of this executor's pool.
    fn queue(&self) -> &Arc<dyn WorkQueue> {
        self.service.queues.for_pool(&self.config.pool)
    }

    /// Writes the heartbeat now and every [`HEARTBEAT_MS`] or on a change of activity,
    /// until `stop` is set; then deletes it.
    async fn heartbeat(self: Arc<Self>, store: Arc<dyn PoolStore>, stop: Shutdown) {
        let started_at = self.service.clock.now();
        loop {
            let (activity, since, model) = self.activity.state.lock().unwrap().clone();
            let record = ExecutorRecord {
                id: self.config.executor_id.clone(),
                pool: self.config.pool.clone(),
                activity,
                since,
                model,
                running_jobs: self.running.load(Ordering::SeqCst) as u32,
                started_at,
                seen_at: self.service.clock.now(),
            };
            if let Err(e) = store.put_executor(&record).await {
                tracing::warn!(error = %e, "could not write the heartbeat");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)) => {}
                _ = self.activity.changed.notified() => {}
                _ = stop.wait() => break,
            }
        }
        if let Err(e) = store.delete_executor(&self.config.executor_id).await {
            tracing::warn!(error = %e, "could not delete the heartbeat");
        }
    }

    /// Runs `concurrency` job slots until idle for `idle_timeout` or `shutdown` is set and
    /// every running job has ended or been released.
    pub async fn run(self: &Arc<Self>, shutdown: Shutdown) -> Exit {
        let idle = Shutdown::default();
        let beat_stop = Shutdown::default();
        let beat =
            self.pool_store.get().cloned().map(|store| tokio::spawn(self.clone().heartbeat(store, beat_stop.clone())));
        let mut slots = tokio::task::JoinSet::new();
        for _ in 0..self.config.concurrency.max(1) {
            let (me, shutdown, idle) = (self.clone(), shutdown.clone(), idle.clone());
            slots.spawn(async move { me.slot(&shutdown, &idle).await });
        }
        while slots.join_next().await.is_some() {}
        beat_stop.trigger();
        if let Some(beat) = beat {
            let _ = beat.await;
        }
        if shutdown.is_set() { Exit::Shutdown } else { Exit::Idle }
    }

    async fn slot(&self, shutdown: &Shutdown, idle: &Shutdown) {
        let c = &self.config;
        loop {
            if shutdown.is_set() || idle.is_set() {
                return;
            }
            let received = tokio::select! {
                r = self.queue().receive(1, c.poll_wait, c.visibility) => r,
                _ = shutdown.wait() => return,
                _ = idle.wait() => return,
            };
            let deliveries = match received {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if deliveries.is_empty() {
                let quiet = self.running.load(Ordering::SeqCst) == 0
                    && self.last_busy.lock().unwrap().elapsed() >= c.idle_timeout;
                if quiet {
                    tracing::info!(idle_s = c.idle_timeout.as_secs(), "no work; exiting");
                    idle.trigger();
                    return;
                }
                continue;
            }
            for delivery in deliveries {
                self.running.fetch_add(1, Ordering::SeqCst);
                self.handle(&delivery, shutdown).await;
                *self.last_busy.lock().unwrap() = Instant::now();
                if self.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                    self.activity.set(ExecutorActivity::Idle, self.service.clock.now(), None);
                }
            }
        }
    }

    /// One message: claim, run, finish. Every path ends with the message deleted, or
    /// released for another executor.
    pub async fn handle(&self, delivery: &Delivery, shutdown: &Shutdown) {
        let m = &delivery.message;
        if !self.models.serves(&m.model) {
            // Another pool's job (one queue serves every pool until the dispatcher gives each
            // its own): hand it back after a short pause, so an executor of its pool gets it
            // and this one does not spin receiving it again and again.
            tracing::warn!(job_id = %m.job_id, model = %m.model, "not a model of this pool; releasing the message");
            let _ = self.queue().set_visibility(&delivery.receipt, FOREIGN_RELEASE).await;
            return;
        }
        let job = match self.claim(delivery).await {
            Claim::Won(job) => job,
            Claim::Skip => {
                self.ack(delivery).await;
                return;
            }
            Claim::Later => return,
        };
        tracing::info!(job_id = %job.id, attempt = job.attempt, model = %job.model, "job claimed");
        let activity =
            if self.models.is_loaded(&job.model) { ExecutorActivity::Busy } else { ExecutorActivity::LoadingModel };
        self.activity.set(activity, self.service.clock.now(), Some(job.model.clone()));
        self.run_claimed(job, delivery, shutdown).await;
    }

    /// The claim: `queued -> running` for the message's attempt.
    async fn claim(&self, delivery: &Delivery) -> Claim {
        let m = &delivery.message;
        let job = match self.service.jobs.get(&m.job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                tracing::warn!(job_id = %m.job_id, "message for a job that does not exist; dropping it");
                return Claim::Skip;
            }
            Err(e) => {
                // Not acknowledged: the message comes back when its visibility lapses.
                tracing::warn!(job_id = %m.job_id, error = %e, "cannot read the job; the message will come back");
                return Claim::Later;
            }
        };
        if job.status != JobStatus::Queued || job.attempt != m.attempt {
            tracing::info!(job_id = %job.id, status = %job.status, attempt = job.attempt, message_attempt = m.attempt,
                "duplicate or stale message; acknowledging it");
            return Claim::Skip;
        }
        let now = self.service.clock.now();
        if job.is_expired(now) {
            if let Err(e) = self.service.apply(&job, Transition::Expire).await {
                tracing::info!(job_id = %job.id, error = %e, "could not expire the job");
            }
            return Claim::Skip;
        }
        let lease_until = now + self.config.lease.as_millis() as u64;
        match self
            .service
            .apply(&job, Transition::Claim { executor_id: self.config.executor_id.clone(), lease_until })
            .await
        {
            Ok(job) => Claim::Won(job),
            Err(ServiceError::Store(StoreError::ConditionFailed { .. })) => {
                tracing::info!(job_id = %job.id, "another executor claimed the job; acknowledging the message");
                Claim::Skip
            }
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "claim failed; the message will come back");
                Claim::Later
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = self.queue().delete(&delivery.receipt).await {
            tracing::warn!(job_id = %delivery.message.job_id, error = %e, "could not delete the message");
        }
    }

    async fn run_claimed(&self, job: Job, delivery: &Delivery, shutdown: &Shutdown) {
        let stream = Arc::new(ProgressStream::new(self.hub.clone(), job.id));
        let flag = Arc::new(StopFlag::default());
        let started = Instant::now();
        let deadline = started + Duration::from_secs(job.timeout_s);

        // Load (once per executor) and run on a blocking thread, supervised from here.
        let models = self.models.clone();
        let (input, model_id) = (job.input.clone(), job.model.clone());
        let run_stream = stream.clone();
        let run_flag = flag.clone();
        let (activity, clock) = (self.activity.clone(), self.service.clock.clone());
        let mut work = tokio::spawn(async move {
            let model = models.get(&model_id, &run_stream).await?;
            activity.set(ExecutorActivity::Busy, clock.now(), Some(model_id.clone()));
            let progress = StreamProgress { stream: run_stream, flag: run_flag };
            tokio::task::spawn_blocking(move || model.run(&input, &progress))
                .await
                .map_err(|e| ModelError::Runtime(format!("the model panicked: {e}")))?
        });

        let mut current = job;
        let mut renew_at = Instant::now() + self.config.lease * 2 / 3;
        let mut visible_at = Instant::now() + self.config.visibility * 2 / 3;
        let mut check = tokio::time::interval(self.config.cancel_check);
        let mut grace_deadline: Option<Instant> = None;
        let outcome = loop {
            tokio::select! {
                result = &mut work => break result.unwrap_or_else(|e| Err(ModelError::Runtime(format!("job task failed: {e}")))),
                _ = check.tick() => {}
            }
            let now = Instant::now();
            if now >= deadline {
                flag.set(StopReason::TimedOut);
            }
            if shutdown.is_set() {
                let until = *grace_deadline.get_or_insert(now + self.config.grace_period);
                if now >= until {
                    flag.set(StopReason::Shutdown);
                }
            }
            // A cancel request shows on the job record.
            match self.service.jobs.get(&current.id).await {
                Ok(Some(fresh)) => {
                    if fresh.status == JobStatus::Cancelling {
                        flag.set(StopReason::Cancelled);
                    }
                    if fresh.status.is_terminal() || fresh.attempt != current.attempt {
                        // Someone else (the watchdog) decided this attempt; stop and write nothing.
                        tracing::warn!(job_id = %current.id, status = %fresh.status, "the job moved on without us; abandoning the attempt");
                        flag.set(StopReason::Shutdown);
                        work.abort();
                        let _ = stream.flush().await;
                        self.ack(delivery).await;
                        return;
                    }
                    current = fresh;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(job_id = %current.id, error = %e, "cannot read the job"),
            }
            if now >= renew_at {
                let lease_until = self.service.clock.now() + self.config.lease.as_millis() as u64;
                match self.service.apply(&current, Transition::Renew { lease_until }).await {
                    Ok(j) => current = j,
                    Err(e) => tracing::warn!(job_id = %current.id, error = %e, "lease renewal failed"),
                }
                renew_at = now + self.config.lease * 2 / 3;
            }
            if now >= visible_at {
                if let Err(e) = self.queue().set_visibility(&delivery.receipt, self.config.visibility).await {
                    tracing::warn!(job_id = %current.id, error = %e, "could not extend the message's visibility");
                }
                visible_at = now + self.config.visibility * 2 / 3;
            }
        };
        if let Err(e) = stream.flush().await {
            tracing::warn!(job_id = %current.id, error = %e, "some progress events were not published");
        }
        self.finish(current, outcome, delivery, &stream).await;
    }

    /// Writes the outcome with a compare-and-set (re-reading and retrying when the record
    /// changed under us, e.g. a cancel request arrived), then settles the message.
    async fn finish(
        &self,
        job: Job,
        outcome: Result<RunOutcome, ModelError>,
        delivery: &Delivery,
        stream: &ProgressStream,
    ) {
        let mut release = false;
        let (transition, events): (Transition, Vec<EventBody>) = match outcome {
            Ok(RunOutcome::Done(output)) => {
                (Transition::Succeed { output: output.clone() }, vec![EventBody::Result { output }])
            }
            Ok(RunOutcome::Stopped { reason: StopReason::Cancelled, partial }) => {
                (Transition::ConfirmCancel { partial_output: Some(partial), forced: false }, vec![])
            }
            Ok(RunOutcome::Stopped { reason: StopReason::TimedOut, partial }) => {
                (Transition::TimeOut { partial_output: Some(partial) }, vec![])
            }
            Ok(RunOutcome::Stopped { reason: StopReason::Shutdown, .. }) => {
                release = true;
                (
                    Transition::Requeue { next_attempt: false },
                    vec![log("warn", "executor stopping; job released".into())],
                )
            }
            Err(e) if e.is_retryable() && job.attempt < job.max_attempts => {
                tracing::warn!(job_id = %job.id, error = %e, "attempt failed; retrying");
                let error = JobError { kind: e.kind().into(), message: e.to_string() };
                (Transition::Requeue { next_attempt: true }, vec![EventBody::Error { error }])
            }
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "job failed");
                let error = JobError { kind: e.kind().into(), message: e.to_string() };
                (Transition::Fail { error: error.clone() }, vec![EventBody::Error { error }])
            }
        };
        for e in events {
            let _ = stream.push(e);
        }
        let _ = stream.flush().await;

        let mut current = job;
        let mut written = None;
        for _ in 0..5 {
            // A cancel that arrives while we release: confirm it instead of requeueing.
            let t = match (&transition, current.status) {
                (Transition::Requeue { .. }, JobStatus::Cancelling) => {
                    Transition::ConfirmCancel { partial_output: None, forced: false }
                }
                _ => transition.clone(),
            };
            match self.service.apply(&current, t).await {
                Ok(j) => {
                    written = Some(j);
                    break;
                }
                Err(ServiceError::Store(StoreError::ConditionFailed { current: Some(fresh) }))
                    if fresh.attempt == current.attempt && !fresh.status.is_terminal() =>
                {
                    current = *fresh;
                }
                Err(e) => {
                    tracing::warn!(job_id = %current.id, error = %e, "could not record the outcome");
                    break;
                }
            }
        }
        match written {
            Some(j) if j.status == JobStatus::Queued && release => {
                // Same attempt, same message: make it visible again now.
                if let Err(e) = self.queue().set_visibility(&delivery.receipt, Duration::ZERO).await {
                    tracing::warn!(job_id = %j.id, error = %e, "could not release the message; it reappears when its visibility lapses");
                }
            }
            Some(j) if j.status == JobStatus::Queued => {
                // Next attempt: a new message for it, then drop the old one.
                let message = WorkMessage {
                    job_id: j.id,
                    attempt: j.attempt,
                    tenant: j.tenant.clone(),
                    model: j.model.clone(),
                    trace_id: delivery.message.trace_id.clone(),
                };
                match self.queue().send(&message).await {
                    Ok(()) => self.ack(delivery).await,
                    Err(e) => tracing::error!(job_id = %j.id, error = %e, "could not queue the next attempt"),
                }
            }
            Some(j) => {
                tracing::info!(job_id = %j.id, status = %j.status, "job finished");
                self.ack(delivery).await;
            }
            None => self.ack(delivery).await,
        }
    }
}

/// What a claim attempt decided.
enum Claim {
    /// This executor runs the job.
    Won(Job),
    /// A duplicate, a stale attempt, a lost race or a missing job: acknowledge the message.
    Skip,
    /// The store failed: leave the message to come back.
    Later,
}

/// The stop reason a supervisor sets for a running model (0 = none).
#[derive(Default)]
struct StopFlag(AtomicU8);

impl StopFlag {
    fn set(&self, reason: StopReason) {
        let v = match reason {
            StopReason::Cancelled => 1,
            StopReason::TimedOut => 2,
            StopReason::Shutdown => 3,
        };
        let _ = self.0.compare_exchange(0, v, Ordering::SeqCst, Ordering::SeqCst);
    }

    fn get(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancelled),
            2 => Some(StopReason::TimedOut),
            3 => Some(StopReason::Shutdown),
            _ => None,
        }
    }
}

/// What a running model reports to: tokens and percentages go to the job's progress
/// stream (which never blocks the model), stop requests come from the supervisor's flag.
struct StreamProgress {
    stream: Arc<ProgressStream>,
    flag: Arc<StopFlag>,
}

impl Progress for StreamProgress {
    fn token(&self, t: TokenOut) {
        let _ = self.stream.push(EventBody::Token { index: t.index, id: t.id, text: t.text, logprob: t.logprob });
    }

    fn percentage(&self, percent: f32, message: Option<String>) {
        let _ = self.stream.push(EventBody::Percentage { percent, message });
    }

    fn stop_requested(&self) -> Option<StopReason> {
        self.flag.get()
    }
}

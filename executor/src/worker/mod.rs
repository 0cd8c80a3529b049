//! The work loop: long-poll the queue, claim a job with a conditional write, run it on a
//! loaded model while renewing the lease and the message's visibility, watching for a
//! cancel and the timeout, then write the outcome with a conditional write and delete the
//! message. The loop is a plain async function over the ports (job store, queue, progress
//! hub, clock), so the ECS binary, `ferry dev` and the tests run the same code.
//!
//! - this module: the slots (receive, claim, hand over) and the idle exit;
//! - [`supervise`]: one claimed job from start to settled (timeout, cancel, grace, lease);
//! - [`outcome`]: what a run's result means for the job (a pure function);
//! - [`heartbeat`]: what the executor reports to the pool store;
//! - [`shutdown`]: the latch that stops it; [`crate::registry`]: the models it serves.
//!
//! Exactly once: SQS may deliver a message twice and two executors may race for one job;
//! only the executor whose `queued -> running` compare-and-set wins runs it, and every
//! later write is a compare-and-set on (status, attempt), so a stale executor cannot
//! overwrite a newer attempt's result.

mod heartbeat;
mod outcome;
mod shutdown;
mod supervise;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::fleet::{ExecutorActivity, PoolStore};
use ferry_core::job::{Job, JobStatus};
use ferry_core::ports::{Delivery, StoreError, WorkQueue};
use ferry_core::publish::ProgressHub;
use ferry_core::root::Root;
use ferry_core::service::{JobService, ServiceError};
use ferry_core::state::Transition;

pub use self::shutdown::Shutdown;
pub use crate::registry::{ModelRegistry, S3Models};
use heartbeat::Activity;

/// The most messages one receive asks for (SQS's limit).
const MAX_RECEIVE: usize = 10;

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
    /// Jobs run at once; 0: as many as the engines of this executor's models batch
    /// ([`ModelRegistry::capacity`]).
    pub concurrency: usize,
    /// Sequences an engine batches into one forward pass (`--max-batch-sequences`), for
    /// models whose catalog entry names none; None: 32 on CPU, 64 on CUDA.
    pub max_batch_sequences: Option<usize>,
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
    /// How long a finished job's outcome write is retried while the store throttles or
    /// cannot be reached, before its message is left to come back.
    pub outcome_retry_for: Duration,
    /// How long the work queue may stay unreachable (every receive failing) before the executor gives
    /// up and exits with an error ([`Exit::Unreachable`]), so that ECS replaces it and a
    /// billed instance never idles on errors.
    pub unreachable_exit: Duration,
    /// Where handlers' private scratch directories are made (`FERRY_HANDLER_WORK_DIR`; a
    /// writable place: the executor's root filesystem is read-only on ECS).
    pub handler_work_dir: std::path::PathBuf,
    /// The HTTP API's base URL, for the `output_url` of `result` events too large for a
    /// WebSocket frame (`FERRY_API_URL`; the path alone when None).
    pub api_url: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            executor_id: format!("executor-{}", ulid::Ulid::new()),
            pool: "cpu".into(),
            device: "cpu".into(),
            concurrency: 1,
            max_batch_sequences: None,
            idle_timeout: Duration::from_secs(60),
            grace_period: Duration::from_secs(25),
            lease: Duration::from_secs(60),
            visibility: Duration::from_secs(120),
            poll_wait: Duration::from_secs(20),
            cancel_check: Duration::from_millis(500),
            outcome_retry_for: Duration::from_secs(300),
            unreachable_exit: Duration::from_secs(180),
            handler_work_dir: std::env::temp_dir().join("ferry-handlers"),
            api_url: None,
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
    /// The work queue stayed unreachable for `unreachable_exit`: an error exit.
    Unreachable,
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
    /// Since when every receive has failed; None while they succeed.
    failing_since: Mutex<Option<Instant>>,
    /// Set when the loop gave up on an unreachable queue.
    gave_up: AtomicBool,
    /// What the heartbeat reports.
    activity: Arc<Activity>,
    /// Where the heartbeat goes (the dispatcher counts idle executors and the API explains
    /// jobs whose model is loading).
    pool_store: Arc<dyn PoolStore>,
}

impl Worker {
    /// An executor over `root`'s ports (the job service and the progress hub derived from
    /// it, the heartbeat to its pool store), serving the catalog's models of its pool.
    pub fn new(root: &Root, config: WorkerConfig) -> Arc<Worker> {
        Self::with_s3(root, config, None)
    }

    /// Like [`Worker::new`], fetching models stored in S3 with `s3`.
    pub fn with_s3(root: &Root, config: WorkerConfig, s3: Option<S3Models>) -> Arc<Worker> {
        // A handler stopped by a cancel or a timeout has the grace period to end.
        let handlers = crate::handlers::HandlerOptions {
            work_root: config.handler_work_dir.clone(),
            ..crate::handlers::HandlerOptions::new(config.grace_period)
        };
        let models = Arc::new(
            ModelRegistry::new(&root.catalog, &config.pool, &config.device, config.max_batch_sequences, s3)
                .with_handlers(handlers),
        );
        Arc::new(Worker {
            service: root.service(),
            hub: root.hub(),
            models,
            config,
            running: AtomicUsize::new(0),
            last_busy: Mutex::new(Instant::now()),
            failing_since: Mutex::new(None),
            gave_up: AtomicBool::new(false),
            activity: Arc::new(Activity::new(root.ports.clock.now())),
            pool_store: root.ports.pools.clone(),
        })
    }

    /// The queue of this executor's pool.
    fn queue(&self) -> &Arc<dyn WorkQueue> {
        self.service.queues.for_pool(&self.config.pool)
    }

    /// Runs jobs, up to `concurrency` at once, until idle for `idle_timeout` or `shutdown`
    /// is set and every running job has ended or been released. One receiver asks the
    /// queue for as many messages as there are free slots (at most 10 per receive, SQS's
    /// limit), so a burst fills the engine's batch at once.
    pub async fn run(self: &Arc<Self>, shutdown: Shutdown) -> Exit {
        let beat_stop = Shutdown::default();
        let beat = tokio::spawn(self.clone().heartbeat(self.pool_store.clone(), beat_stop.clone()));
        let slots = Arc::new(tokio::sync::Semaphore::new(self.concurrency()));
        let mut jobs = tokio::task::JoinSet::new();
        let c = &self.config;
        loop {
            while jobs.try_join_next().is_some() {}
            let first = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = shutdown.wait() => break,
            };
            let mut permits = vec![first];
            while permits.len() < MAX_RECEIVE {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let received = tokio::select! {
                r = self.queue().receive(permits.len() as u32, c.poll_wait, c.visibility) => r,
                _ = shutdown.wait() => break,
            };
            let deliveries = match received {
                Ok(d) => {
                    self.reachable(true);
                    d
                }
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed; retrying");
                    if self.reachable(false) >= c.unreachable_exit {
                        tracing::error!(error = %e, down_s = c.unreachable_exit.as_secs(),
                            "the work queue has been unreachable too long; exiting with an error");
                        self.gave_up.store(true, Ordering::SeqCst);
                        break;
                    }
                    if self.quiet() {
                        // Time without work counts whatever the reason: an executor that
                        // cannot reach its queue has no work either.
                        tracing::info!(idle_s = c.idle_timeout.as_secs(), "no work (the queue is failing); exiting");
                        break;
                    }
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => break,
                    }
                    continue;
                }
            };
            if deliveries.is_empty() {
                if self.quiet() {
                    tracing::info!(idle_s = c.idle_timeout.as_secs(), "no work; exiting");
                    break;
                }
                continue;
            }
            for (delivery, permit) in deliveries.into_iter().zip(permits) {
                self.running.fetch_add(1, Ordering::SeqCst);
                let (me, shutdown) = (self.clone(), shutdown.clone());
                jobs.spawn(async move {
                    let _slot = permit;
                    if me.handle(&delivery, &shutdown).await {
                        // Only work resets the idle clock: a message skipped or left to come
                        // back (a duplicate, a store error) is not work.
                        *me.last_busy.lock().unwrap() = Instant::now();
                    }
                    if me.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                        me.activity.set(ExecutorActivity::Idle, me.service.clock.now(), None);
                    }
                });
            }
        }
        while jobs.join_next().await.is_some() {}
        // Handlers' idle workers end with the executor.
        self.models.close();
        beat_stop.trigger();
        let _ = beat.await;
        if shutdown.is_set() {
            Exit::Shutdown
        } else if self.gave_up.load(Ordering::SeqCst) {
            Exit::Unreachable
        } else {
            Exit::Idle
        }
    }

    /// Jobs run at once: `concurrency`, or (0) the capacity of the engines of this
    /// executor's models.
    pub fn concurrency(&self) -> usize {
        match self.config.concurrency {
            0 => self.models.capacity(),
            n => n,
        }
    }

    /// No job running, and none for `idle_timeout`.
    fn quiet(&self) -> bool {
        self.running.load(Ordering::SeqCst) == 0 && self.last_busy.lock().unwrap().elapsed() >= self.config.idle_timeout
    }

    /// Records whether a receive just succeeded; returns how long receives have been failing
    /// (zero after a success).
    fn reachable(&self, ok: bool) -> Duration {
        let mut since = self.failing_since.lock().unwrap();
        if ok {
            *since = None;
            return Duration::ZERO;
        }
        since.get_or_insert_with(Instant::now).elapsed()
    }

    /// One message: claim, run, finish. Every path ends with the message deleted, or
    /// released for another executor. Returns whether a job ran.
    pub async fn handle(&self, delivery: &Delivery, shutdown: &Shutdown) -> bool {
        let m = &delivery.message;
        if !self.models.serves(&m.model) {
            // Another pool's job (one queue serves every pool until the dispatcher gives each
            // its own): hand it back after a short pause, so an executor of its pool gets it
            // and this one does not spin receiving it again and again.
            tracing::warn!(job_id = %m.job_id, model = %m.model, "not a model of this pool; releasing the message");
            let _ = self.queue().set_visibility(&delivery.receipt, FOREIGN_RELEASE).await;
            return false;
        }
        let job = match self.claim(delivery).await {
            Claim::Won(job) => job,
            Claim::Skip => {
                self.ack(delivery).await;
                return false;
            }
            Claim::Later => return false,
        };
        tracing::info!(job_id = %job.id, attempt = job.attempt, model = %job.model, "job claimed");
        let activity =
            if self.models.is_loaded(&job.model) { ExecutorActivity::Busy } else { ExecutorActivity::LoadingModel };
        self.activity.set(activity, self.service.clock.now(), Some(job.model.clone()));
        self.run_claimed(job, delivery, shutdown).await;
        true
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

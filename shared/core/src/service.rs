//! The job service: submit, read, list, cancel and transition jobs over the ports. The HTTP
//! API calls it, and so will the WebSocket handler, the executor and the watchdog: the
//! lifecycle rules live here once.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::ApiError;
use crate::input::{ImageEmbeddingsInput, Input, JobInput};
use crate::job::rfc3339;
use crate::job::{ENQUEUE_FAILED, Job, JobError, JobId, JobStatus, TenantId};
use crate::objects::{self, ObjectError, ObjectStore};
use crate::ports::{
    Clock, Created, Expected, IdempotencyRecord, JobPage, JobStore, ListQuery, QueueError, Queues, Resolver,
    StoreError, WorkMessage, WorkQueue,
};
use crate::progress::{EventBody, ProgressEvent};
use crate::publish::ProgressHub;
use crate::state::{self, Transition, TransitionError};
use crate::submit::ValidSubmit;
use crate::view::JobView;
use crate::webhook::{self, UrlPolicy, WebhookRequest};

/// How many times a submit tries to take over an idempotency key from a job that was never
/// queued before it reports the key as contended.
const REBIND_TRIES: usize = 3;

/// How many times a job's end is written again on a fresh `last_seq` (progress events
/// published between the read and the write) before it is reported as contended.
const LAST_SEQ_TRIES: usize = 8;

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Missing, someone else's, or past retention: one answer for all three.
    #[error("no such job")]
    NotFound,
    #[error("the job is already {0}")]
    AlreadyFinished(JobStatus),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error("the job was recorded but could not be queued: {0}")]
    EnqueueFailed(QueueError),
    #[error("the job kept changing under a concurrent writer")]
    Contended,
    /// The job has no output (yet, or at all: it failed before producing any).
    #[error("the job has no output (it is {0})")]
    NoOutput(JobStatus),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The results store (large inputs and outputs) failed or is not configured.
    #[error(transparent)]
    Objects(#[from] ObjectError),
    /// The request cannot be accepted as it is (a webhook URL resolving to a refused address):
    /// the error to answer with.
    #[error("refused: {}", .0.message)]
    Rejected(ApiError),
}

/// The outcome of a submit.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// A new job was recorded and queued.
    New(Job),
    /// The `Idempotency-Key` was bound to this job by an earlier, identical request.
    Existing(Job),
}

impl Submitted {
    pub fn job(&self) -> &Job {
        match self {
            Submitted::New(j) | Submitted::Existing(j) => j,
        }
    }
}

/// A job's output, for `GET /v1/jobs/{id}/output`.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutput {
    /// Held in the record: the JSON value.
    Inline(serde_json::Value),
    /// Read from the results store: the JSON, serialized.
    Bytes(Vec<u8>),
    /// A URL the output can be fetched from without credentials (a presigned S3 URL).
    Redirect(String),
}

/// The job service over its ports. Built by [`crate::root::Root::service`].
#[derive(Clone)]
pub struct JobService {
    pub jobs: Arc<dyn JobStore>,
    /// Large inputs and outputs.
    pub objects: Arc<dyn ObjectStore>,
    /// Where new jobs go: the queue of their model's pool.
    pub queues: Queues,
    pub clock: Arc<dyn Clock>,
    pub catalog: Arc<Catalog>,
    pub config: Config,
    /// Where status changes are published as progress events (`status` type), so followers
    /// see a cancel or a failure the moment it is written.
    pub progress: Arc<ProgressHub>,
    /// The pools and their records, so job views explain where a queued job stands
    /// (`queue_state`).
    pub fleet: crate::queue_state::Fleet,
    /// Resolves webhook hosts at submit, so a name pointing at a refused address is a 422.
    pub resolver: Arc<dyn Resolver>,
}

impl JobService {
    /// The pool a model's jobs run in (the catalog's `pool`; `cpu` for unknown models).
    pub fn pool_of(&self, model: &str) -> &str {
        self.catalog.get(model).map(|m| m.pool.as_str()).unwrap_or("cpu")
    }

    /// The queue a model's jobs go to.
    pub fn queue_for_model(&self, model: &str) -> &Arc<dyn WorkQueue> {
        self.queues.for_pool(self.pool_of(model))
    }

    /// Records a validated job, then queues its id. The record comes first so an executor
    /// never receives a message for a job it cannot read.
    pub async fn submit(
        &self,
        tenant: &TenantId,
        req: ValidSubmit,
        idempotency_key: Option<String>,
        trace_id: &str,
    ) -> Result<Submitted, ServiceError> {
        if let Some(hook) = &req.webhook {
            check_webhook(hook, self.config.webhook_policy, self.resolver.as_ref())
                .await
                .map_err(ServiceError::Rejected)?;
        }
        if let JobInput::ImageEmbeddings { input } = &req.input {
            self.check_stored_images(tenant, input).await?;
        }
        let now = self.clock.now();
        let c = &self.config;
        let expires_at = now + c.queue_ttl_s * 1000;
        let id = JobId::generate(now);
        // A large input goes to the results store first, so the record never points at an
        // object that is not there (a record that is then not written leaves an object the
        // store's expiry removes).
        let (input, body) = Input::for_record(req.input, || objects::input_key(&id));
        if let (Some(object), Some(body)) = (input.object(), body) {
            self.objects.put(&object.key, body).await?;
        }
        let job = Job {
            id,
            tenant: tenant.clone(),
            model: req.model.id.clone(),
            input,
            timeout_s: req.timeout_s,
            max_attempts: c.max_attempts,
            created_at: now,
            expires_at,
            idempotency_key: idempotency_key.clone(),
            webhook: req.webhook.clone(),
            status: JobStatus::Queued,
            attempt: 1,
            started_at: None,
            finished_at: None,
            updated_at: now,
            cancel_requested_at: None,
            executor_id: None,
            lease_until: None,
            output: None,
            output_object: None,
            error: None,
            retain_until: expires_at + c.retention_s * 1000,
            last_seq: 0,
        };
        let idem = idempotency_key.map(|key| IdempotencyRecord {
            tenant: tenant.clone(),
            key,
            request_hash: req.request_hash.clone(),
            job_id: job.id,
            created_at: now,
            expires_at: now + c.idempotency_ttl_s * 1000,
        });
        // A key bound to a job that was never queued (its send failed: the client got a 503
        // and retries) is taken over by this job, so the retry runs; `stale` is that job.
        let mut stale: Option<JobId> = None;
        for _ in 0..REBIND_TRIES {
            let created = match (&idem, &stale) {
                (Some(rec), Some(stale)) => self.jobs.rebind(&job, rec, stale).await?,
                _ => self.jobs.create(&job, idem.as_ref()).await?,
            };
            let record = match created {
                Created::New => {
                    self.enqueue(&job, trace_id, "the work queue was unavailable").await?;
                    tracing::info!(job_id = %job.id, tenant = %tenant, model = %job.model, "job queued");
                    return Ok(Submitted::New(job));
                }
                Created::Duplicate(record) => record,
            };
            if record.request_hash != req.request_hash {
                return Err(ServiceError::IdempotencyMismatch);
            }
            match self.get(tenant, &record.job_id).await {
                Ok(existing) if !existing.never_queued() => return Ok(Submitted::Existing(existing)),
                // Never queued, or gone (past retention): nothing to return; take the key over.
                Ok(_) | Err(ServiceError::NotFound) => stale = Some(record.job_id),
                Err(e) => return Err(e),
            }
        }
        // Every try lost to another retry rebinding the key meanwhile (nothing was written):
        // a 409 asking the client to retry.
        Err(ServiceError::Contended)
    }

    /// Puts `job` (as read, running or cancelling) back in the queue for its next attempt:
    /// the compare-and-set to `queued` with attempt + 1, then a new message. A job whose
    /// message cannot be sent is failed (`enqueue_failed`) rather than left queued with no
    /// message, and the result is then `EnqueueFailed`. The watchdog (a lost executor) and
    /// the executor (a retryable failure) both requeue through here.
    /// Stores `body` as one of `tenant`'s input objects (`POST /v1/inputs`); its new id.
    /// Only this tenant reads it back ([`Service::stored_input`], or a job's `images`).
    pub async fn store_input(&self, tenant: &TenantId, body: Vec<u8>) -> Result<String, ServiceError> {
        let id = crate::images::new_input_id();
        self.objects.put(&crate::images::upload_key(tenant.as_str(), &id), body).await?;
        Ok(id)
    }

    /// One of `tenant`'s input objects; None when there is none by that id (never stored,
    /// someone else's, or expired).
    pub async fn stored_input(&self, tenant: &TenantId, id: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        if !crate::images::is_input_id(id) {
            return Ok(None);
        }
        Ok(self.objects.get(&crate::images::upload_key(tenant.as_str(), id)).await?)
    }

    /// Each image of `input` that is a stored input object exists for `tenant` and its header
    /// shows an image within bounds: a 422 naming `input.images[i]` otherwise, before anything
    /// is queued.
    async fn check_stored_images(&self, tenant: &TenantId, input: &ImageEmbeddingsInput) -> Result<(), ServiceError> {
        for (i, id) in input.stored() {
            let field = format!("input.images[{i}]");
            let Some(bytes) = self.stored_input(tenant, &id).await? else {
                let message = format!("no input {id} is stored for this API key (POST /v1/inputs stores one)");
                return Err(ServiceError::Rejected(ApiError::invalid(field, message)));
            };
            crate::images::check(&bytes).map_err(|m| ServiceError::Rejected(ApiError::invalid(field, m)))?;
        }
        Ok(())
    }

    pub async fn requeue(&self, job: &Job, trace_id: &str) -> Result<Job, ServiceError> {
        let next = self.apply(job, Transition::Requeue { next_attempt: true }).await?;
        self.enqueue(&next, trace_id, "the retry could not be queued").await?;
        Ok(next)
    }

    /// Sends the message for `job`'s attempt; when that fails, fails the job with `why`.
    async fn enqueue(&self, job: &Job, trace_id: &str, why: &str) -> Result<(), ServiceError> {
        let Err(e) = self.queue_for_model(&job.model).send(&WorkMessage::for_job(job, trace_id)).await else {
            return Ok(());
        };
        tracing::error!(job_id = %job.id, attempt = job.attempt, error = %e, "enqueue failed; failing the job");
        let error = JobError { kind: ENQUEUE_FAILED.into(), message: why.into() };
        if let Err(e2) = self.apply(job, Transition::Fail { error }).await {
            tracing::error!(job_id = %job.id, error = %e2, "could not mark the unqueued job failed");
        }
        Err(ServiceError::EnqueueFailed(e))
    }

    /// A tenant's job; `NotFound` when missing, another tenant's, or past retention.
    pub async fn get(&self, tenant: &TenantId, id: &JobId) -> Result<Job, ServiceError> {
        match self.jobs.get(id).await? {
            Some(job) if &job.tenant == tenant && job.retain_until > self.clock.now() => Ok(job),
            _ => Err(ServiceError::NotFound),
        }
    }

    /// A page of a tenant's jobs, newest first (records past retention are skipped: the
    /// store's TTL may take days to delete them).
    pub async fn list(&self, query: &ListQuery) -> Result<JobPage, ServiceError> {
        let mut page = self.jobs.list(query).await?;
        let now = self.clock.now();
        page.jobs.retain(|j| j.retain_until > now && j.tenant == query.tenant);
        Ok(page)
    }

    /// Cancels a job: queued -> cancelled at once, running -> cancelling (the executor stops
    /// it), cancelling stays as it is; a finished job is `AlreadyFinished`. Races with the
    /// executor (queued -> running under us) are retried against the fresh state.
    pub async fn cancel(&self, tenant: &TenantId, id: &JobId) -> Result<Job, ServiceError> {
        for _ in 0..5 {
            let job = self.get(tenant, id).await?;
            match job.status {
                JobStatus::Cancelling => return Ok(job),
                s if s.is_terminal() => return Err(ServiceError::AlreadyFinished(s)),
                _ => match self.apply(&job, Transition::RequestCancel).await {
                    Err(ServiceError::Store(StoreError::ConditionFailed { .. })) => continue,
                    other => return other,
                },
            }
        }
        Err(ServiceError::Contended)
    }

    /// Applies a transition to `job` as read, with a compare-and-set on its status and
    /// attempt, and publishes the new status as a progress event when it changed. Returns
    /// the job as written. See [`JobService::apply_with_events`].
    pub async fn apply(&self, job: &Job, t: Transition) -> Result<Job, ServiceError> {
        self.apply_with_events(job, t, Vec::new()).await
    }

    /// [`JobService::apply`], with `bodies` published with it. A job's end (a transition to
    /// a terminal state) is written in one atomic write with `bodies` and its final status
    /// event (moving `last_seq`): a follower gets that event exactly when the job ended,
    /// never a job that ended silently (a crash between two writes) nor an end that lost
    /// its race; so is a cancel request (`cancelling`). Events published since `job` was read
    /// (the executor's own progress) only renumber the write: it is tried again on the
    /// fresh `last_seq`. Other transitions
    /// write the job, then publish `bodies` and the status (if it changed) as before: the
    /// record is the truth, the events are best effort.
    pub async fn apply_with_events(
        &self,
        job: &Job,
        t: Transition,
        bodies: Vec<EventBody>,
    ) -> Result<Job, ServiceError> {
        let retention = self.config.retention_s * 1000;
        let mut read = job.clone();
        for _ in 0..LAST_SEQ_TRIES {
            let now = self.clock.now();
            let mut next = state::transition(&read, &t, now, retention)?;
            let expected = Expected { status: read.status, attempt: read.attempt };
            // A cancel request is written with its status event too: the executor ends the job
            // only once it reads `cancelling`, so a follower always gets `cancelling` before
            // `cancelled` (published after the write, a slow publish could number it later).
            if !next.status.is_terminal() && next.status != JobStatus::Cancelling {
                self.jobs.update(&next, expected).await?;
                if !bodies.is_empty()
                    && let Err(e) = self.progress.publish_batch(&next.id, bodies).await
                {
                    tracing::warn!(job_id = %next.id, error = %e, "could not publish the job's events");
                }
                if next.status != read.status || next.attempt != read.attempt {
                    self.announce(&next).await;
                }
                return Ok(next);
            }
            let status = EventBody::Status { status: next.status, attempt: next.attempt };
            let events: Vec<ProgressEvent> = bodies
                .iter()
                .cloned()
                .chain([status])
                .zip(read.last_seq + 1..)
                .map(|(body, seq)| ProgressEvent { job_id: next.id, seq, time: now, body })
                .collect();
            match self.jobs.update_with_events(&next, expected, read.last_seq, &events, next.retain_until).await {
                Ok(()) => {
                    next.last_seq = events.last().map_or(next.last_seq, |e| e.seq);
                    self.progress.fan_out_events(&events).await;
                    return Ok(next);
                }
                Err(StoreError::ConditionFailed { current: Some(fresh) })
                    if fresh.status == read.status && fresh.attempt == read.attempt =>
                {
                    // Only `last_seq` moved (progress published meanwhile): renumber.
                    read = *fresh;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Contended)
    }

    /// Publishes `job`'s status as a progress event. The job is already written, so a
    /// failure here is logged, not returned: followers still learn the status from the job
    /// (a subscribe or an events read reports it).
    async fn announce(&self, job: &Job) {
        let body = EventBody::Status { status: job.status, attempt: job.attempt };
        if let Err(e) = self.progress.publish_progress(&job.id, body).await {
            tracing::warn!(job_id = %job.id, status = %job.status, error = %e, "could not publish the status change");
        }
    }

    /// The job as clients see it: with a URL to its output when that is stored as an object.
    pub async fn view(&self, job: &Job) -> JobView {
        let now = self.clock.now();
        let mut view = JobView::new(job, now);
        if let Some(object) = &job.output_object {
            let ttl = Duration::from_secs(self.config.output_url_ttl_s);
            match self.objects.url(&object.key, ttl, now).await {
                Ok(Some(url)) => {
                    view.output_url = Some(url.url);
                    view.output_expires_at = Some(rfc3339(url.expires_at.min(job.retain_until)));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(job_id = %job.id, error = %e, "could not sign the output URL"),
            }
        }
        view
    }

    /// A finished job's output, inline or stored (`NotFound` for a job without one).
    pub async fn output(&self, tenant: &TenantId, id: &JobId) -> Result<JobOutput, ServiceError> {
        let job = self.get(tenant, id).await?;
        if let Some(output) = job.output {
            return Ok(JobOutput::Inline(output));
        }
        let Some(object) = job.output_object else { return Err(ServiceError::NoOutput(job.status)) };
        if self.objects.redirects() {
            let ttl = Duration::from_secs(self.config.output_url_ttl_s);
            if let Some(url) = self.objects.url(&object.key, ttl, self.clock.now()).await? {
                return Ok(JobOutput::Redirect(url.url));
            }
        }
        match self.objects.get(&object.key).await? {
            Some(bytes) => Ok(JobOutput::Bytes(bytes)),
            None => Err(ServiceError::NoOutput(job.status)),
        }
    }

    /// Where `job` stands (null for finished jobs, or when the pool records cannot be read:
    /// the view is still served).
    pub async fn queue_state(&self, job: &Job) -> Option<crate::queue_state::QueueState> {
        match self.fleet.queue_state(job, self.pool_of(&job.model), self.clock.now()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "could not read the pool records for queue_state");
                None
            }
        }
    }

    /// Polls until the job is terminal or `timeout` passes; returns the last state seen.
    pub async fn wait_terminal(&self, tenant: &TenantId, id: &JobId, timeout: Duration) -> Result<Job, ServiceError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut interval = Duration::from_millis(50);
        loop {
            let job = self.get(tenant, id).await?;
            let now = tokio::time::Instant::now();
            if job.status.is_terminal() || now >= deadline {
                return Ok(job);
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
            interval = (interval * 3 / 2).min(Duration::from_millis(500));
        }
    }
}

/// Checks `hook`'s URL and every address its host resolves to under `policy`: what submit
/// refuses with 422 naming `webhook.url`.
pub async fn check_webhook(hook: &WebhookRequest, policy: UrlPolicy, resolver: &dyn Resolver) -> Result<(), ApiError> {
    let target = webhook::parse_url(&hook.url, policy)?;
    if target.host.parse::<IpAddr>().is_ok() {
        return Ok(()); // parse_url checked the literal
    }
    let addrs = resolver
        .lookup(&target.host, target.port)
        .await
        .map_err(|e| ApiError::invalid("webhook.url", format!("the host {} does not resolve: {e}", target.host)))?;
    if addrs.is_empty() {
        return Err(ApiError::invalid("webhook.url", format!("the host {} has no address", target.host)));
    }
    webhook::check_addresses(&addrs, policy)
}

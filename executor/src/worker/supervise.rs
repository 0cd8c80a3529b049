//! One claimed job from start to settled: its model runs on a blocking thread while this
//! supervisor watches the clock (timeout), the job record (cancel, or another writer
//! deciding the attempt) and the shutdown latch (grace period), renews the lease and the
//! message's visibility, then records the outcome ([`super::outcome`]) with compare-and-sets
//! and settles the message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use ferry_core::fleet::ExecutorActivity;
use ferry_core::input::{ImageEmbeddingsInput, JobInput};
use ferry_core::job::{Job, JobStatus};
use ferry_core::objects::{ObjectError, ObjectRef};
use ferry_core::ports::{Delivery, StoreError};
use ferry_core::progress::EventBody;
use ferry_core::service::ServiceError;
use ferry_core::state::Transition;
use ferry_core::stream::ProgressStream;

use super::outcome::{self, Action, Decision};
use super::{Shutdown, Worker};
use crate::models::{JobRun, ModelError, Progress, RunOutcome, STOP_WAIT, StopReason, TokenOut};

impl Worker {
    /// Runs a claimed job to its outcome, then records it and settles the message.
    pub(super) async fn run_claimed(&self, job: Job, delivery: &Delivery, shutdown: &Shutdown) {
        let stream = Arc::new(ProgressStream::new(self.hub.clone(), job.id));
        let flag = Arc::new(StopFlag::default());
        let deadline = Instant::now() + Duration::from_secs(job.timeout_s);

        let input = match self.read_input(&job).await {
            Ok(input) => input,
            Err(e) => return self.finish(job, Err(e), delivery, &stream).await,
        };
        // Load (once per executor) and run on a blocking thread, supervised from here.
        let models = self.models.clone();
        let model_id = job.model.clone();
        let progress: Arc<dyn Progress> = Arc::new(StreamProgress { stream: stream.clone(), flag: flag.clone() });
        let (activity, clock) = (self.activity.clone(), self.service.clock.clone());
        let load_stream = stream.clone();
        let run = JobRun {
            job_id: job.id.to_string(),
            attempt: job.attempt,
            deadline: ferry_core::job::rfc3339(self.service.clock.now() + job.timeout_s * 1000),
        };
        // How long the work may take to answer a stop: the model's, once it is loaded.
        let stop_wait = Arc::new(std::sync::OnceLock::new());
        let model_stop_wait = stop_wait.clone();
        let mut work = tokio::spawn(async move {
            let model = models.get(&model_id, &load_stream).await?;
            let _ = model_stop_wait.set(model.stop_wait());
            activity.set(ExecutorActivity::Busy, clock.now(), Some(model_id.clone()));
            tokio::task::spawn_blocking(move || model.run_job(&run, &input, progress))
                .await
                .map_err(|e| ModelError::Runtime(format!("the model panicked: {e}")))?
        });

        let mut current = job;
        let mut renew_at = Instant::now() + self.config.lease * 2 / 3;
        let mut visible_at = Instant::now() + self.config.visibility * 2 / 3;
        let mut check = tokio::time::interval(self.config.cancel_check);
        let mut grace_deadline: Option<Instant> = None;
        let mut stop_since: Option<Instant> = None;
        let outcome = loop {
            tokio::select! {
                result = &mut work => break result.unwrap_or_else(|e| Err(ModelError::Runtime(format!("job task failed: {e}")))),
                _ = check.tick() => {}
            }
            let now = Instant::now();
            if now >= deadline {
                flag.set(StopReason::TimedOut);
            }
            // A cancel or timeout the work has not answered within its stop wait (a model busy
            // in one long pass, a download, a load; a handler past its grace period) is carried
            // out without it: the job ends now and the work, abandoned, finishes on its own
            // with its result dropped.
            if let Some(reason) = flag.get().filter(|r| *r != StopReason::Shutdown) {
                let since = *stop_since.get_or_insert(now);
                if now >= since + stop_wait.get().copied().unwrap_or(STOP_WAIT) {
                    tracing::warn!(job_id = %current.id, ?reason, "the work did not stop in time; ending the job without it");
                    work.abort();
                    break Ok(RunOutcome::Stopped { reason, partial: serde_json::Value::Null });
                }
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
            // Past the deadline and the grace after it, the lease is no longer renewed: a model
            // that does not stop is the watchdog's to time out (and its task to stop).
            if now >= renew_at && now < deadline + self.config.grace_period {
                current = self.renew_lease(current).await;
                renew_at = now + self.config.lease * 2 / 3;
            }
            if now >= visible_at {
                self.extend_visibility(&current, delivery).await;
                visible_at = now + self.config.visibility * 2 / 3;
            }
        };
        if let Err(e) = stream.flush().await {
            tracing::warn!(job_id = %current.id, error = %e, "some progress events were not published");
        }
        self.finish(current, outcome, delivery, &stream).await;
    }

    /// The job's typed input: the record's, or read back from the results store when it
    /// was too large for the record.
    async fn read_input(&self, job: &Job) -> Result<JobInput, ModelError> {
        let mut input = self.read_job_input(job).await?;
        if let JobInput::ImageEmbeddings { input } = &mut input {
            self.read_stored_images(job, input).await?;
        }
        Ok(input)
    }

    /// Replaces each image of `input` that is an input object stored by Ferry with its bytes
    /// (as a `data:` URI): models read images from the input alone.
    async fn read_stored_images(&self, job: &Job, input: &mut ImageEmbeddingsInput) -> Result<(), ModelError> {
        use base64::Engine;
        for (i, id) in input.stored() {
            let field = format!("input.images[{i}]");
            let key = ferry_core::images::upload_key(job.tenant.as_str(), &id);
            let bytes = match self.service.objects.get(&key).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    return Err(ModelError::invalid(&field, format!("input {id} is gone (past its retention)")));
                }
                Err(ObjectError::NotConfigured) => {
                    return Err(ModelError::invalid(&field, "this executor has no results store to read inputs from"));
                }
                Err(e) => return Err(ModelError::Runtime(format!("could not read input {id}: {e}"))),
            };
            let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
            // The header's format names the media type; an undecodable image fails in the model.
            let media = ferry_core::images::sniff(&bytes).map(|h| h.format.media_type()).unwrap_or("image/png");
            input.images[i] = format!("data:{media};base64,{data}");
        }
        Ok(())
    }

    async fn read_job_input(&self, job: &Job) -> Result<JobInput, ModelError> {
        let Some(object) = job.input.object() else {
            return job.input.resolve(None).map_err(|e| ModelError::Runtime(e.to_string()));
        };
        let body = match self.service.objects.get(&object.key).await {
            Ok(Some(body)) => body,
            Ok(None) => {
                return Err(ModelError::invalid("input", "the job's stored input is gone (past its retention)"));
            }
            Err(ObjectError::NotConfigured) => {
                return Err(ModelError::invalid("input", "this executor has no results store to read the input from"));
            }
            Err(e) => return Err(ModelError::Runtime(format!("could not read the job's input: {e}"))),
        };
        job.input
            .resolve(Some(&body))
            .map_err(|e| ModelError::invalid("input", format!("the job's stored input is unreadable: {e}")))
    }

    /// Stores the output `decision` records as an object when it is too large for the job
    /// record, and returns the decision recording the reference instead. A transient failure
    /// is retried ([`OutcomeRetry`]); None when it never succeeded (the message is left to
    /// come back). A store that cannot take it (none configured, access refused) gives the
    /// same end without the output ([`outcome::without_output_decision`]).
    async fn store_large_output(&self, decision: Decision, job: &mut Job, delivery: &Delivery) -> Option<Decision> {
        let Some(bytes) = outcome::large_output(&decision.action) else { return Some(decision) };
        let key = ferry_core::objects::output_key(&job.id, job.attempt);
        let object = ObjectRef { key: key.clone(), bytes: bytes.len() as u64 };
        let mut retry = self.outcome_retry();
        loop {
            match self.service.objects.put(&key, bytes.clone()).await {
                Ok(()) => {
                    return Some(Decision { action: outcome::stored_output(decision.action, object), ..decision });
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(job_id = %job.id, error = %e, "could not store the output");
                    if !self.wait_to_retry(&mut retry, job, delivery).await {
                        tracing::error!(job_id = %job.id, "could not store the output; leaving the message to come back");
                        return None;
                    }
                }
                Err(e) => {
                    tracing::error!(job_id = %job.id, error = %e, "the output cannot be stored; recording the end without it");
                    return outcome::without_output_decision(&decision.action);
                }
            }
        }
    }

    fn outcome_retry(&self) -> OutcomeRetry {
        let now = Instant::now();
        OutcomeRetry {
            give_up_at: now + self.config.outcome_retry_for,
            pause: OUTCOME_RETRY_FIRST,
            renew_at: now + self.config.lease / 3,
        }
    }

    /// Waits before the next try of an outcome's write, keeping the job ours and its message
    /// hidden meanwhile; false, without waiting, once `outcome_retry_for` would be past.
    async fn wait_to_retry(&self, retry: &mut OutcomeRetry, job: &mut Job, delivery: &Delivery) -> bool {
        if Instant::now() + retry.pause >= retry.give_up_at {
            return false;
        }
        tracing::info!(job_id = %job.id, retry_in_ms = retry.pause.as_millis() as u64, "retrying the outcome's write");
        tokio::time::sleep(retry.pause).await;
        retry.pause = (retry.pause * 2).min(OUTCOME_RETRY_MAX);
        if Instant::now() >= retry.renew_at {
            self.extend_visibility(job, delivery).await;
            *job = self.renew_lease(job.clone()).await;
            retry.renew_at = Instant::now() + self.config.lease / 3;
        }
        true
    }

    /// Records the outcome with a compare-and-set (re-reading and deciding again when the
    /// record changed under us, e.g. a cancel request arrived), then settles the message.
    /// The message is deleted only once the outcome is stored, or someone else decided the
    /// attempt: a throttled or unreachable store is retried with backoff (the lease and the
    /// message's visibility renewed meanwhile) for up to `outcome_retry_for`, then the
    /// message is left to come back; a write the store refuses for good is replaced by the
    /// same end without its output ([`outcome::without_output`]).
    async fn finish(
        &self,
        job: Job,
        outcome: Result<RunOutcome, ModelError>,
        delivery: &Delivery,
        stream: &ProgressStream,
    ) {
        let decision = outcome::decide(outcome, &job, self.config.api_url.as_deref());
        let mut current = job;
        let Some(decision) = self.store_large_output(decision, &mut current, delivery).await else {
            return;
        };
        let mut wanted = decision.action;
        // The events of a job's end go in the same atomic write as the end itself (the
        // result, or the error); those of a retry or a release are published first.
        let mut final_events = match &wanted {
            Action::Write(_) => decision.events,
            _ => {
                for e in decision.events {
                    let _ = stream.push(e);
                }
                vec![]
            }
        };
        let _ = stream.flush().await;
        let mut conflicts = 0;
        let mut retry = self.outcome_retry();
        let written = loop {
            let action = outcome::against(&wanted, &current);
            let result = match &action {
                Action::Write(t) => self.service.apply_with_events(&current, t.clone(), final_events.clone()).await,
                Action::Retry => self.service.requeue(&current, &delivery.message.trace_id).await,
                Action::Release => self.service.apply(&current, Transition::Requeue { next_attempt: false }).await,
            };
            let e = match result {
                Ok(j) => break Some((j, action)),
                Err(e) => e,
            };
            match e {
                ServiceError::Store(StoreError::ConditionFailed { current: Some(fresh) })
                    if fresh.attempt == current.attempt && !fresh.status.is_terminal() && conflicts < 5 =>
                {
                    conflicts += 1;
                    current = *fresh;
                }
                // The attempt was decided elsewhere (the watchdog), or a requeue whose message
                // could not be sent failed the job itself: nothing left for us to record.
                ServiceError::Store(StoreError::ConditionFailed { .. }) | ServiceError::EnqueueFailed(_) => {
                    tracing::warn!(job_id = %current.id, error = %e, "the outcome was settled elsewhere");
                    break None;
                }
                ServiceError::Store(StoreError::Refused(_)) if outcome::without_output(&action).is_some() => {
                    tracing::error!(job_id = %current.id, error = %e, "the store refused the outcome; recording it without its output");
                    let replacement = outcome::without_output_decision(&action).expect("checked above");
                    (wanted, final_events) = (replacement.action, replacement.events);
                }
                ServiceError::Store(ref se)
                    if se.is_transient() && self.wait_to_retry(&mut retry, &mut current, delivery).await =>
                {
                    tracing::warn!(job_id = %current.id, error = %e, "could not record the outcome; retried");
                }
                _ => {
                    // Not acknowledged: the message comes back when its visibility lapses, and
                    // the watchdog retries the job once its lease does; nothing is lost.
                    tracing::error!(job_id = %current.id, error = %e,
                        "could not record the outcome; leaving the message to come back");
                    return;
                }
            }
        };
        match written {
            Some((j, Action::Release)) => {
                // Same attempt, same message: make it visible again now.
                if let Err(e) = self.queue().set_visibility(&delivery.receipt, Duration::ZERO).await {
                    tracing::warn!(job_id = %j.id, error = %e, "could not release the message; it reappears when its visibility lapses");
                }
            }
            Some((j, Action::Retry)) => {
                // The next attempt has its own message: drop this one.
                tracing::info!(job_id = %j.id, attempt = j.attempt, "job queued for another attempt");
                self.ack(delivery).await;
            }
            Some((j, Action::Write(_))) => {
                tracing::info!(job_id = %j.id, status = %j.status, "job finished");
                self.ack(delivery).await;
            }
            None => self.ack(delivery).await,
        }
    }

    /// The job's lease renewed for another `lease`; the job as renewed, or as it was when the
    /// renewal failed (logged: the next renewal tries again).
    async fn renew_lease(&self, current: Job) -> Job {
        let lease_until = self.service.clock.now() + self.config.lease.as_millis() as u64;
        match self.service.apply(&current, Transition::Renew { lease_until }).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(job_id = %current.id, error = %e, "lease renewal failed");
                current
            }
        }
    }

    /// The message kept invisible for another `visibility`.
    async fn extend_visibility(&self, job: &Job, delivery: &Delivery) {
        if let Err(e) = self.queue().set_visibility(&delivery.receipt, self.config.visibility).await {
            tracing::warn!(job_id = %job.id, error = %e, "could not extend the message's visibility");
        }
    }
}

/// Backoff for an outcome waiting to be stored ([`Worker::wait_to_retry`]).
struct OutcomeRetry {
    give_up_at: Instant,
    pause: Duration,
    renew_at: Instant,
}

/// The first pause before an outcome write is tried again, doubling up to the second.
const OUTCOME_RETRY_FIRST: Duration = Duration::from_millis(100);
const OUTCOME_RETRY_MAX: Duration = Duration::from_secs(5);

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

    fn log(&self, level: &str, message: String) {
        let _ = self.stream.push(EventBody::Log { level: level.into(), message });
    }

    fn stop_requested(&self) -> Option<StopReason> {
        self.flag.get()
    }
}

//! The watchdog: finds jobs nobody will finish and finishes or retries them. Runs on the
//! dispatcher Lambda's schedule (every minute) and in `ferry dev`'s reconcile loop.
//!
//! - A running job whose lease lapsed lost its executor: back to the queue with attempt + 1
//!   and a new message, or `failed` (`executor_lost`) after its last attempt. The lost task
//!   is stopped, in case it is hung rather than dead.
//! - A cancelling job no executor acknowledged within the grace period: its task is
//!   stopped (ECS StopTask) and the job becomes `cancelled` with error `cancel_forced`.
//! - A running job past its deadline (`started_at + timeout_s` plus the grace period) while
//!   its executor still renews the lease (a model stuck in one long forward pass, a hung
//!   download): its task is stopped and the job becomes `timed_out`. The executor enforces
//!   the timeout itself; this is the hard stop when it cannot.
//! - A queued job past `expires_at` that never started becomes `expired` (a retried job
//!   met its queue deadline already).
//! - A message in a pool's dead-letter queue makes its job `failed` (`dead_letter`).
//! - A queued job whose message may be lost (the process crashed between the job's write
//!   and its send, in the API or in a requeue) would wait forever: every job queued for
//!   `resend_after_ms` without moving gets a new message (and again after as long). A
//!   duplicate is harmless: a claim is a compare-and-set on the attempt.
//!
//! Every change is a compare-and-set on what was read, so a watchdog racing an executor
//! (or another watchdog) changes a job at most once.

use std::sync::Arc;

use serde::Serialize;

use crate::fleet::Launcher;
use crate::job::{Job, JobError, JobStatus, Millis};
use crate::pool::Pools;
use crate::ports::{StoreError, WorkMessage};
use crate::service::{JobService, ServiceError};
use crate::state::{Transition, TransitionError};

/// How long an executor has to acknowledge a cancel, or to stop a job past its deadline,
/// before its task is stopped.
pub const DEFAULT_CANCEL_GRACE_MS: u64 = 30_000;

/// How long a job may stay queued, untouched, before its message is sent again: the work
/// queue's visibility timeout (120 s: a message received by an executor that died before
/// claiming reappears by then) plus a margin for backlogs.
pub const DEFAULT_RESEND_AFTER_MS: u64 = 300_000;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WatchdogReport {
    pub requeued: u32,
    pub failed_lost: u32,
    pub expired: u32,
    pub dead_lettered: u32,
    pub cancels_forced: u32,
    pub timed_out: u32,
    pub resent: u32,
    pub tasks_stopped: u32,
}

/// The watchdog over the job service's ports and the launcher. Built by
/// [`crate::root::Root::watchdog`].
#[derive(Clone)]
pub struct Watchdog {
    pub service: JobService,
    pub pools: Pools,
    /// Stops the tasks of lost or unresponsive executors (with [`crate::fleet::NoLauncher`],
    /// jobs are still retried or finished but nothing is stopped).
    pub launcher: Arc<dyn Launcher>,
    /// How long an executor has to act on a cancel or a deadline (see
    /// [`DEFAULT_CANCEL_GRACE_MS`]) before the watchdog does.
    pub cancel_grace_ms: u64,
    /// A job queued this long without a change gets a new message ([`DEFAULT_RESEND_AFTER_MS`]).
    pub resend_after_ms: u64,
}

impl Watchdog {
    /// One pass over every non-terminal job and every dead-letter queue.
    pub async fn run(&self) -> Result<WatchdogReport, ServiceError> {
        let mut report = WatchdogReport::default();
        for status in [JobStatus::Running, JobStatus::Cancelling, JobStatus::Queued] {
            let mut after = None;
            loop {
                let page = self.service.jobs.active(status, 100, after).await?;
                for job in &page.jobs {
                    if let Err(e) = self.check(job, &mut report).await {
                        tracing::warn!(job_id = %job.id, error = %e, "watchdog could not settle the job");
                    }
                }
                match page.next {
                    Some(next) if !page.jobs.is_empty() => after = Some(next),
                    _ => break,
                }
            }
        }
        for pool in self.pools.names() {
            self.drain_dead_letters(&pool, &mut report).await?;
        }
        if report != WatchdogReport::default() {
            tracing::info!(?report, "watchdog pass");
        }
        Ok(report)
    }

    async fn check(&self, listed: &Job, report: &mut WatchdogReport) -> Result<(), ServiceError> {
        let now = self.service.clock.now();
        let lapsed = |j: &Job| j.lease_until.is_some_and(|l| l < now);
        let overdue = |j: &Job| self.past_deadline(j, now);
        let due = match listed.status {
            JobStatus::Running => lapsed(listed) || overdue(listed),
            JobStatus::Cancelling => lapsed(listed) || self.cancel_overdue(listed, now),
            JobStatus::Queued => listed.is_expired(now) || self.resend_due(listed, now),
            _ => false,
        };
        if !due {
            return Ok(());
        }
        // The index may lag: decide on the record itself.
        let Some(job) = self.service.jobs.get(&listed.id).await? else { return Ok(()) };
        let result = match job.status {
            // Past its deadline: timed out whether its executor lives or not (no retry: the
            // next attempt would have no time either).
            JobStatus::Running if overdue(&job) => {
                tracing::warn!(job_id = %job.id, executor = ?job.executor_id, timeout_s = job.timeout_s,
                    "job past its deadline; stopping it");
                self.stop_task(&job, "past its deadline", report).await;
                let t = Transition::TimeOut { partial_output: None };
                self.service.apply(&job, t).await.map(|_| report.timed_out += 1)
            }
            JobStatus::Running if lapsed(&job) => self.recover_lost(&job, report).await,
            JobStatus::Cancelling if lapsed(&job) || self.cancel_overdue(&job, now) => {
                self.stop_task(&job, "cancel not acknowledged", report).await;
                let t = Transition::ConfirmCancel { partial_output: None, forced: true };
                self.service.apply(&job, t).await.map(|_| report.cancels_forced += 1)
            }
            JobStatus::Queued if job.is_expired(now) => {
                self.service.apply(&job, Transition::Expire).await.map(|_| report.expired += 1)
            }
            JobStatus::Queued if self.resend_due(&job, now) => self.resend(&job, report).await,
            _ => Ok(()),
        };
        ignore_lost_race(result)
    }

    /// Whether the attempt ran past `timeout_s` and the grace period after it.
    fn past_deadline(&self, job: &Job, now: Millis) -> bool {
        job.started_at.is_some_and(|s| now > s + job.timeout_s * 1000 + self.cancel_grace_ms)
    }

    fn resend_due(&self, job: &Job, now: Millis) -> bool {
        now.saturating_sub(job.updated_at) > self.resend_after_ms
    }

    /// Notes the resend on the job (so the next pass waits as long again), then sends a new
    /// message for its attempt.
    async fn resend(&self, job: &Job, report: &mut WatchdogReport) -> Result<(), ServiceError> {
        let noted = self.service.apply(job, Transition::Resend).await?;
        let message = WorkMessage::for_job(&noted, &format!("watchdog-{}", job.id));
        self.service.queue_for_model(&job.model).send(&message).await?;
        tracing::warn!(job_id = %job.id, attempt = job.attempt, queued_ms = noted.updated_at.saturating_sub(job.updated_at),
            "job queued long without moving; its message was sent again");
        report.resent += 1;
        Ok(())
    }

    fn cancel_overdue(&self, job: &Job, now: Millis) -> bool {
        job.cancel_requested_at.is_some_and(|t| now.saturating_sub(t) > self.cancel_grace_ms)
    }

    /// The executor stopped renewing: retry with the next attempt, or fail after the last.
    async fn recover_lost(&self, job: &Job, report: &mut WatchdogReport) -> Result<(), ServiceError> {
        self.stop_task(job, "lease lapsed", report).await;
        match self.service.requeue(job, &format!("watchdog-{}", job.id)).await {
            Ok(next) => {
                report.requeued += 1;
                tracing::warn!(job_id = %job.id, attempt = next.attempt, executor = ?job.executor_id, "lease lapsed; job requeued");
                Ok(())
            }
            // Requeued, then failed for want of a message: settled all the same.
            Err(ServiceError::EnqueueFailed(_)) => {
                report.requeued += 1;
                Ok(())
            }
            Err(ServiceError::Transition(TransitionError::AttemptsExhausted { attempt, max_attempts })) => {
                let error = JobError {
                    kind: "executor_lost".into(),
                    message: format!(
                        "the executor stopped renewing its lease on attempt {attempt} of {max_attempts}; no attempts left"
                    ),
                };
                self.service.apply(job, Transition::Fail { error }).await?;
                report.failed_lost += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn stop_task(&self, job: &Job, reason: &str, report: &mut WatchdogReport) {
        let Some(task) = &job.executor_id else { return };
        let Some(pool) = self.pools.get(self.service.pool_of(&job.model)) else { return };
        match self.launcher.stop(pool, task, &format!("ferry watchdog: job {} {reason}", job.id)).await {
            Ok(()) => report.tasks_stopped += 1,
            Err(e) => tracing::warn!(job_id = %job.id, task, error = %e, "could not stop the task"),
        }
    }

    /// Fails the jobs whose messages SQS moved to the pool's dead-letter queue.
    async fn drain_dead_letters(&self, pool: &str, report: &mut WatchdogReport) -> Result<(), ServiceError> {
        let Some(dlq) = self.service.queues.dlq(pool) else { return Ok(()) };
        for _ in 0..100 {
            let batch = dlq.receive(10, std::time::Duration::ZERO, std::time::Duration::from_secs(30)).await?;
            if batch.is_empty() {
                break;
            }
            for d in batch {
                let m = &d.message;
                if let Some(job) = self.service.jobs.get(&m.job_id).await?
                    && !job.status.is_terminal()
                    && job.attempt == m.attempt
                {
                    let error = JobError {
                        kind: "dead_letter".into(),
                        message: format!(
                            "attempt {} was delivered to executors repeatedly without finishing; its message was moved to the {pool} pool's dead-letter queue",
                            m.attempt
                        ),
                    };
                    if ignore_lost_race(self.service.apply(&job, Transition::Fail { error }).await.map(|_| ())).is_ok()
                    {
                        report.dead_lettered += 1;
                    }
                }
                dlq.delete(&d.receipt).await?;
            }
        }
        Ok(())
    }
}

/// A compare-and-set lost to someone else (the executor finished, a client cancelled) is
/// the job settling itself: not an error.
fn ignore_lost_race(r: Result<(), ServiceError>) -> Result<(), ServiceError> {
    match r {
        Err(ServiceError::Store(StoreError::ConditionFailed { .. })) | Err(ServiceError::Transition(_)) => Ok(()),
        other => other,
    }
}

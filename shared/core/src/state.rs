//! The job lifecycle state machine.
//!
//! [`transition`] computes the next version of a job for a [`Transition`], or refuses with a
//! typed [`TransitionError`]; callers then write it with a compare-and-set
//! ([`crate::ports::JobStore::update`]) on the status and attempt they read. So an illegal
//! change is refused here, and a stale one (someone else moved the job first) is refused by
//! the store: never a silent overwrite. `docs/STATE_MACHINE.md` holds the same table as
//! [`LEGAL`]; a test keeps the two equal.

use crate::job::{Job, JobError, JobStatus, Millis};
use crate::objects::Output;

use JobStatus::*;

/// Every legal (from, to) status change. Anything else is refused.
pub const LEGAL: &[(JobStatus, JobStatus)] = &[
    (Queued, Queued),
    (Queued, Running),
    (Queued, Cancelled),
    (Queued, Expired),
    (Queued, Failed),
    (Running, Running),
    (Running, Queued),
    (Running, Succeeded),
    (Running, Failed),
    (Running, TimedOut),
    (Running, Cancelling),
    (Cancelling, Cancelling),
    (Cancelling, Cancelled),
    (Cancelling, Succeeded),
    (Cancelling, Failed),
    (Cancelling, TimedOut),
];

/// Whether the table allows `from -> to`.
pub fn is_legal(from: JobStatus, to: JobStatus) -> bool {
    LEGAL.contains(&(from, to))
}

/// A requested change, named for why it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// An executor takes a queued job: queued -> running.
    Claim { executor_id: String, lease_until: Millis },
    /// The executor renews its lease: running -> running, cancelling -> cancelling.
    Renew { lease_until: Millis },
    /// Give the job back to the queue: running -> queued. With `next_attempt` the attempt
    /// counter grows (a failed or lost attempt); without, the same attempt is resumed later
    /// (a graceful release on shutdown).
    Requeue { next_attempt: bool },
    /// running|cancelling -> succeeded. A large output is stored as an object first (the
    /// executor does, before this write) and recorded by reference.
    Succeed { output: Output },
    /// queued|running|cancelling -> failed.
    Fail { error: JobError },
    /// running|cancelling -> timed_out, keeping what was produced.
    TimeOut { partial_output: Option<Output> },
    /// A client asks to cancel: queued -> cancelled at once, running -> cancelling.
    RequestCancel,
    /// The work stopped after a cancel request: cancelling -> cancelled. `forced` records
    /// that no executor acknowledged and the task was stopped from outside.
    ConfirmCancel { partial_output: Option<Output>, forced: bool },
    /// Still queued past `expires_at`: queued -> expired.
    Expire,
    /// Queued so long that its message may be gone (a send lost in a crash between the
    /// write and the send): queued -> queued, noting when a new message was sent.
    Resend,
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("illegal transition from {from} to {to}")]
    Illegal { from: JobStatus, to: JobStatus },
    #[error("no attempts left: attempt {attempt} of {max_attempts}")]
    AttemptsExhausted { attempt: u32, max_attempts: u32 },
}

/// Where a transition leads from `from`.
pub fn target(from: JobStatus, t: &Transition) -> JobStatus {
    match t {
        Transition::Claim { .. } => Running,
        Transition::Renew { .. } => from,
        Transition::Requeue { .. } => Queued,
        Transition::Succeed { .. } => Succeeded,
        Transition::Fail { .. } => Failed,
        Transition::TimeOut { .. } => TimedOut,
        Transition::RequestCancel => {
            if from == Queued {
                Cancelled
            } else {
                Cancelling
            }
        }
        Transition::ConfirmCancel { .. } => Cancelled,
        Transition::Expire => Expired,
        Transition::Resend => from,
    }
}

/// Computes the job after `t` at time `now`. `retention_ms` is how long a finished job is
/// kept before the store may delete it.
pub fn transition(job: &Job, t: &Transition, now: Millis, retention_ms: u64) -> Result<Job, TransitionError> {
    let from = job.status;
    let to = target(from, t);
    // Only two transitions keep the status: Renew where a lease exists, Resend while queued.
    let may_stay = match t {
        Transition::Renew { .. } => matches!(from, Running | Cancelling),
        Transition::Resend => from == Queued,
        _ => false,
    };
    if !is_legal(from, to) || (from == to && !may_stay) {
        return Err(TransitionError::Illegal { from, to });
    }
    let mut next = job.clone();
    next.status = to;
    next.updated_at = now;
    match t {
        Transition::Claim { executor_id, lease_until } => {
            next.started_at = Some(now);
            next.executor_id = Some(executor_id.clone());
            next.lease_until = Some(*lease_until);
            // Keep a running job at least until it could time out, plus retention.
            next.retain_until = next.retain_until.max(now + job.timeout_s * 1000 + retention_ms);
        }
        Transition::Renew { lease_until } => {
            next.lease_until = Some(*lease_until);
            next.retain_until = next.retain_until.max(*lease_until + retention_ms);
        }
        Transition::Requeue { next_attempt } => {
            if *next_attempt {
                if job.attempt >= job.max_attempts {
                    return Err(TransitionError::AttemptsExhausted {
                        attempt: job.attempt,
                        max_attempts: job.max_attempts,
                    });
                }
                next.attempt = job.attempt + 1;
            }
            next.executor_id = None;
            next.lease_until = None;
        }
        Transition::Succeed { output } => {
            next.set_output(output.clone());
            next.error = None;
        }
        Transition::Fail { error } => next.error = Some(error.clone()),
        Transition::TimeOut { partial_output } => {
            if let Some(p) = partial_output {
                next.set_output(p.clone());
            }
            next.error = Some(JobError {
                kind: "timed_out".into(),
                message: format!("the job ran longer than its timeout of {} s", job.timeout_s),
            });
        }
        Transition::RequestCancel => {
            next.cancel_requested_at = Some(now);
        }
        Transition::ConfirmCancel { partial_output, forced } => {
            if let Some(p) = partial_output {
                next.set_output(p.clone());
            }
            if *forced {
                next.error = Some(JobError {
                    kind: "cancel_forced".into(),
                    message: "no executor acknowledged the cancel in time; its task was stopped".into(),
                });
            }
        }
        Transition::Resend => {}
        Transition::Expire => {
            next.error =
                Some(JobError { kind: "expired".into(), message: "the job was not started before it expired".into() });
        }
    }
    if to.is_terminal() {
        next.finished_at = Some(now);
        next.lease_until = None;
        next.retain_until = now + retention_ms;
    }
    Ok(next)
}

//! What a run's outcome means for its job: a pure function from the model's result to the
//! write to make and the events to publish before it. The supervisor ([`super::supervise`])
//! carries it out with compare-and-sets, re-reading the job when it changed underneath.

use ferry_core::job::{Job, JobError, JobStatus};
use ferry_core::progress::EventBody;
use ferry_core::state::Transition;

use crate::models::{ModelError, RunOutcome, StopReason};
use crate::registry::log;

/// The write a run's outcome calls for.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// This transition: the job's end (succeeded, failed, cancelled, timed out).
    Write(Transition),
    /// Another attempt (a retryable failure with attempts left): `JobService::requeue`.
    Retry,
    /// Back to the queue for the same attempt, its message visible again (the executor is
    /// shutting down).
    Release,
}

/// An outcome decided: the events to publish first, then the action.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Decision {
    pub events: Vec<EventBody>,
    pub action: Action,
}

/// What `outcome` calls for, for `job` as the run started.
pub(super) fn decide(outcome: Result<RunOutcome, ModelError>, job: &Job) -> Decision {
    let (events, action) = match outcome {
        Ok(RunOutcome::Done(output)) => {
            (vec![EventBody::Result { output: output.clone() }], Action::Write(Transition::Succeed { output }))
        }
        Ok(RunOutcome::Stopped { reason: StopReason::Cancelled, partial }) => {
            (vec![], Action::Write(Transition::ConfirmCancel { partial_output: Some(partial), forced: false }))
        }
        Ok(RunOutcome::Stopped { reason: StopReason::TimedOut, partial }) => {
            (vec![], Action::Write(Transition::TimeOut { partial_output: Some(partial) }))
        }
        Ok(RunOutcome::Stopped { reason: StopReason::Shutdown, .. }) => {
            (vec![log("warn", "executor stopping; job released".into())], Action::Release)
        }
        Err(e) => {
            let error = JobError { kind: e.kind().into(), message: e.public_message() };
            let retry = e.is_retryable() && job.attempt < job.max_attempts;
            let action = if retry { Action::Retry } else { Action::Write(Transition::Fail { error: error.clone() }) };
            (vec![EventBody::Error { error }], action)
        }
    };
    Decision { events, action }
}

/// What to do against the job as it is now (re-read after a lost compare-and-set): a cancel
/// requested while the job is being released or retried is confirmed instead, since the
/// client asked for the work to stop.
pub(super) fn against(action: &Action, current: &Job) -> Action {
    match action {
        Action::Retry | Action::Release if current.status == JobStatus::Cancelling => {
            Action::Write(Transition::ConfirmCancel { partial_output: None, forced: false })
        }
        other => other.clone(),
    }
}

/// `error.type` of a job whose output the store refused (over its item size, say).
pub(super) const RESULT_NOT_STORED: &str = "result_not_stored";

/// The write to make instead when the store refused `action` for good (DynamoDB refuses an
/// item over 400 KB: an output too large for the job record): the same end without the
/// output (a success becomes `failed`, `result_not_stored`), so the job is settled and
/// says why, rather than left to run again. `None` when the action carries no output.
pub(super) fn without_output(action: &Action) -> Option<Action> {
    let replacement = match action {
        Action::Write(Transition::Succeed { .. }) => Transition::Fail {
            error: JobError {
                kind: RESULT_NOT_STORED.into(),
                message: "the job finished, but its output could not be stored (most often: larger than a job \
                          record holds)"
                    .into(),
            },
        },
        Action::Write(Transition::TimeOut { partial_output: Some(_) }) => Transition::TimeOut { partial_output: None },
        Action::Write(Transition::ConfirmCancel { partial_output: Some(_), forced }) => {
            Transition::ConfirmCancel { partial_output: None, forced: *forced }
        }
        _ => return None,
    };
    Some(Action::Write(replacement))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::input::JobInput;
    use ferry_core::job::{JobId, TenantId};
    use serde_json::json;

    fn job(attempt: u32, status: JobStatus) -> Job {
        Job {
            id: JobId::generate(1),
            tenant: TenantId::new("t").unwrap(),
            model: "m".into(),
            input: JobInput::prompt("p"),
            timeout_s: 60,
            max_attempts: 3,
            created_at: 1,
            expires_at: 2,
            idempotency_key: None,
            status,
            attempt,
            started_at: Some(1),
            finished_at: None,
            updated_at: 1,
            cancel_requested_at: None,
            executor_id: Some("e".into()),
            lease_until: Some(9),
            output: None,
            error: None,
            retain_until: 10,
            last_seq: 0,
        }
    }

    #[test]
    fn each_outcome_has_its_write_and_events() {
        let running = job(1, JobStatus::Running);
        let done = decide(Ok(RunOutcome::Done(json!({"text": "x"}))), &running);
        assert_eq!(done.action, Action::Write(Transition::Succeed { output: json!({"text": "x"}) }));
        assert_eq!(done.events, vec![EventBody::Result { output: json!({"text": "x"}) }]);

        let stopped = |reason| decide(Ok(RunOutcome::Stopped { reason, partial: json!({"n": 1}) }), &running);
        let partial = Some(json!({"n": 1}));
        let cancelled = Transition::ConfirmCancel { partial_output: partial.clone(), forced: false };
        assert_eq!(stopped(StopReason::Cancelled).action, Action::Write(cancelled));
        assert_eq!(
            stopped(StopReason::TimedOut).action,
            Action::Write(Transition::TimeOut { partial_output: partial })
        );
        let released = stopped(StopReason::Shutdown);
        assert_eq!(released.action, Action::Release);
        assert!(matches!(&released.events[..], [EventBody::Log { level, .. }] if level == "warn"));
    }

    #[test]
    fn failures_retry_while_attempts_remain_and_only_when_retryable() {
        let runtime = || Err(ModelError::Runtime("device lost".into()));
        assert_eq!(decide(runtime(), &job(1, JobStatus::Running)).action, Action::Retry);
        let last = decide(runtime(), &job(3, JobStatus::Running));
        let Action::Write(Transition::Fail { error }) = &last.action else { panic!("{last:?}") };
        assert_eq!(error.kind, "inference_failed");
        assert_eq!(last.events, vec![EventBody::Error { error: error.clone() }]);
        let invalid = decide(Err(ModelError::invalid("input.prompt", "too long")), &job(1, JobStatus::Running));
        assert!(matches!(&invalid.action, Action::Write(Transition::Fail { error }) if error.kind == "invalid_input"));
    }

    #[test]
    fn a_cancel_that_arrives_meanwhile_is_confirmed_instead_of_a_retry_or_release() {
        let confirm = Action::Write(Transition::ConfirmCancel { partial_output: None, forced: false });
        let cancelling = job(1, JobStatus::Cancelling);
        assert_eq!(against(&Action::Retry, &cancelling), confirm);
        assert_eq!(against(&Action::Release, &cancelling), confirm);
        assert_eq!(against(&Action::Retry, &job(1, JobStatus::Running)), Action::Retry);
        let succeed = Action::Write(Transition::Succeed { output: json!(1) });
        assert_eq!(against(&succeed, &cancelling), succeed, "a finished run is recorded as it finished");
    }

    #[test]
    fn a_refused_output_is_dropped_and_a_success_becomes_a_failure() {
        let succeed = Action::Write(Transition::Succeed { output: json!({"text": "x"}) });
        match without_output(&succeed) {
            Some(Action::Write(Transition::Fail { error })) => assert_eq!(error.kind, RESULT_NOT_STORED),
            other => panic!("{other:?}"),
        }
        let timed_out = Action::Write(Transition::TimeOut { partial_output: Some(json!("partial")) });
        assert_eq!(without_output(&timed_out), Some(Action::Write(Transition::TimeOut { partial_output: None })));
        let cancelled = Action::Write(Transition::ConfirmCancel { partial_output: Some(json!("p")), forced: false });
        assert_eq!(
            without_output(&cancelled),
            Some(Action::Write(Transition::ConfirmCancel { partial_output: None, forced: false }))
        );
        // Nothing to drop: no fallback, the refusal stands.
        assert_eq!(without_output(&Action::Retry), None);
        assert_eq!(without_output(&Action::Write(Transition::TimeOut { partial_output: None })), None);
        let fail = Action::Write(Transition::Fail { error: JobError { kind: "x".into(), message: "y".into() } });
        assert_eq!(without_output(&fail), None);
    }
}

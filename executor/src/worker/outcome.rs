//! What a run's outcome means for its job: a pure function from the model's result to the
//! write to make and the events to publish before it. The supervisor ([`super::supervise`])
//! carries it out with compare-and-sets, re-reading the job when it changed underneath.

use ferry_core::job::{Job, JobError, JobStatus};
use ferry_core::objects::{ObjectRef, Output};
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

/// What `outcome` calls for, for `job` as the run started. Outputs are inline here; the
/// supervisor stores a large one as an object before the write ([`stored_output`]). The
/// `result` event holds the output when it fits a WebSocket frame, else it points at the
/// job's output route under `api_url`.
pub(super) fn decide(outcome: Result<RunOutcome, ModelError>, job: &Job, api_url: Option<&str>) -> Decision {
    let (events, action) = match outcome {
        Ok(RunOutcome::Done(output)) => {
            let size = serde_json::to_vec(&output).map(|b| b.len()).unwrap_or(0);
            let event = EventBody::result(&job.id, output.clone(), size, api_url);
            (vec![event], Action::Write(Transition::Succeed { output: output.into() }))
        }
        // A null partial output: the work was abandoned before it reported any.
        Ok(RunOutcome::Stopped { reason: StopReason::Cancelled, partial }) => {
            let partial_output = (!partial.is_null()).then(|| partial.into());
            (vec![], Action::Write(Transition::ConfirmCancel { partial_output, forced: false }))
        }
        Ok(RunOutcome::Stopped { reason: StopReason::TimedOut, partial }) => {
            let partial_output = (!partial.is_null()).then(|| partial.into());
            (vec![], Action::Write(Transition::TimeOut { partial_output }))
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

/// The inline output `action` records when it is too large for the job record (over
/// [`ferry_core::objects::INLINE_BYTES`]): the value, serialized, to store as an object first.
pub(super) fn large_output(action: &Action) -> Option<Vec<u8>> {
    let output = match action {
        Action::Write(Transition::Succeed { output }) => output,
        Action::Write(Transition::TimeOut { partial_output: Some(output) }) => output,
        Action::Write(Transition::ConfirmCancel { partial_output: Some(output), .. }) => output,
        _ => return None,
    };
    match output {
        Output::Inline(v) => match ferry_core::objects::encode(v) {
            (bytes, true) => Some(bytes),
            (_, false) => None,
        },
        Output::Stored(_) => None,
    }
}

/// `action` with its output replaced by the reference to where it was stored.
pub(super) fn stored_output(action: Action, object: ObjectRef) -> Action {
    let stored = Output::Stored(object);
    match action {
        Action::Write(Transition::Succeed { .. }) => Action::Write(Transition::Succeed { output: stored }),
        Action::Write(Transition::TimeOut { partial_output: Some(_) }) => {
            Action::Write(Transition::TimeOut { partial_output: Some(stored) })
        }
        Action::Write(Transition::ConfirmCancel { partial_output: Some(_), forced }) => {
            Action::Write(Transition::ConfirmCancel { partial_output: Some(stored), forced })
        }
        other => other,
    }
}

/// [`without_output`] as a decision: with the `error` event a success that became a
/// failure publishes (a timeout or a cancel without its output has none).
pub(super) fn without_output_decision(action: &Action) -> Option<Decision> {
    let action = without_output(action)?;
    let events = match &action {
        Action::Write(Transition::Fail { error }) => vec![EventBody::Error { error: error.clone() }],
        _ => vec![],
    };
    Some(Decision { events, action })
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
    use ferry_core::objects::INLINE_BYTES;
    use serde_json::json;

    fn job(attempt: u32, status: JobStatus) -> Job {
        Job {
            id: JobId::generate(1),
            tenant: TenantId::new("t").unwrap(),
            model: "m".into(),
            input: JobInput::prompt("p").into(),
            timeout_s: 60,
            max_attempts: 3,
            created_at: 1,
            expires_at: 2,
            idempotency_key: None,
            webhook: None,
            status,
            attempt,
            started_at: Some(1),
            finished_at: None,
            updated_at: 1,
            cancel_requested_at: None,
            executor_id: Some("e".into()),
            lease_until: Some(9),
            output: None,
            output_object: None,
            error: None,
            retain_until: 10,
            last_seq: 0,
        }
    }

    #[test]
    fn each_outcome_has_its_write_and_events() {
        let running = job(1, JobStatus::Running);
        let done = decide(Ok(RunOutcome::Done(json!({"text": "x"}))), &running, None);
        assert_eq!(done.action, Action::Write(Transition::Succeed { output: json!({"text": "x"}).into() }));
        assert_eq!(done.events, vec![EventBody::inline_result(json!({"text": "x"}))]);

        let stopped = |reason| decide(Ok(RunOutcome::Stopped { reason, partial: json!({"n": 1}) }), &running, None);
        let partial = Some(json!({"n": 1}).into());
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
        assert_eq!(decide(runtime(), &job(1, JobStatus::Running), None).action, Action::Retry);
        let last = decide(runtime(), &job(3, JobStatus::Running), None);
        let Action::Write(Transition::Fail { error }) = &last.action else { panic!("{last:?}") };
        assert_eq!(error.kind, "inference_failed");
        assert_eq!(last.events, vec![EventBody::Error { error: error.clone() }]);
        let invalid = decide(Err(ModelError::invalid("input.prompt", "too long")), &job(1, JobStatus::Running), None);
        assert!(matches!(&invalid.action, Action::Write(Transition::Fail { error }) if error.kind == "invalid_input"));
    }

    #[test]
    fn a_cancel_that_arrives_meanwhile_is_confirmed_instead_of_a_retry_or_release() {
        let confirm = Action::Write(Transition::ConfirmCancel { partial_output: None, forced: false });
        let cancelling = job(1, JobStatus::Cancelling);
        assert_eq!(against(&Action::Retry, &cancelling), confirm);
        assert_eq!(against(&Action::Release, &cancelling), confirm);
        assert_eq!(against(&Action::Retry, &job(1, JobStatus::Running)), Action::Retry);
        let succeed = Action::Write(Transition::Succeed { output: json!(1).into() });
        assert_eq!(against(&succeed, &cancelling), succeed, "a finished run is recorded as it finished");
    }

    #[test]
    fn a_refused_output_is_dropped_and_a_success_becomes_a_failure() {
        let succeed = Action::Write(Transition::Succeed { output: json!({"text": "x"}).into() });
        match without_output(&succeed) {
            Some(Action::Write(Transition::Fail { error })) => assert_eq!(error.kind, RESULT_NOT_STORED),
            other => panic!("{other:?}"),
        }
        let timed_out = Action::Write(Transition::TimeOut { partial_output: Some(json!("partial").into()) });
        assert_eq!(without_output(&timed_out), Some(Action::Write(Transition::TimeOut { partial_output: None })));
        let cancelled =
            Action::Write(Transition::ConfirmCancel { partial_output: Some(json!("p").into()), forced: false });
        assert_eq!(
            without_output(&cancelled),
            Some(Action::Write(Transition::ConfirmCancel { partial_output: None, forced: false }))
        );
        // Nothing to drop: no fallback, the refusal stands.
        assert_eq!(without_output(&Action::Retry), None);
        assert_eq!(without_output(&Action::Write(Transition::TimeOut { partial_output: None })), None);
        let fail = Action::Write(Transition::Fail { error: JobError { kind: "x".into(), message: "y".into() } });
        assert_eq!(without_output(&fail), None);
        // As a decision, the failure that replaces a success says why in an error event.
        let d = without_output_decision(&succeed).unwrap();
        assert!(matches!(&d.events[..], [EventBody::Error { error }] if error.kind == RESULT_NOT_STORED));
        assert_eq!(without_output_decision(&timed_out).unwrap().events, vec![]);
    }

    #[test]
    fn large_outputs_are_stored_first_and_their_result_event_is_a_reference() {
        let running = job(1, JobStatus::Running);
        let small = decide(Ok(RunOutcome::Done(json!("x".repeat(20_000)))), &running, Some("https://api.example"));
        assert_eq!(large_output(&small.action), None);
        assert!(matches!(&small.events[..], [EventBody::Result { output_url: None, .. }]), "fits a frame");

        let big = json!("y".repeat(INLINE_BYTES));
        let large = decide(Ok(RunOutcome::Done(big.clone())), &running, Some("https://api.example/"));
        let bytes = large_output(&large.action).expect("over the inline threshold");
        assert_eq!(bytes, serde_json::to_vec(&big).unwrap());
        let url = format!("https://api.example/v1/jobs/{}/output", running.id);
        let reference = EventBody::Result {
            output: serde_json::Value::Null,
            output_url: Some(url),
            output_bytes: Some(bytes.len() as u64),
        };
        assert_eq!(large.events, vec![reference]);
        let object = ObjectRef { key: "outputs/x/1.json".into(), bytes: bytes.len() as u64 };
        assert_eq!(
            stored_output(large.action, object.clone()),
            Action::Write(Transition::Succeed { output: Output::Stored(object.clone()) })
        );
        let partial = decide(Ok(RunOutcome::Stopped { reason: StopReason::TimedOut, partial: big }), &running, None);
        assert!(large_output(&partial.action).is_some(), "partial outputs too");
        assert_eq!(
            stored_output(partial.action, object.clone()),
            Action::Write(Transition::TimeOut { partial_output: Some(Output::Stored(object)) })
        );
    }
}

//! Every (from, to) pair of the lifecycle, legal and illegal, against the table in
//! `docs/STATE_MACHINE.md` and the code's `LEGAL`.

use std::collections::BTreeSet;

use ferry_core::input::JobInput;
use ferry_core::job::{Job, JobError, JobId, JobStatus, TenantId};
use ferry_core::state::{LEGAL, Transition, TransitionError, is_legal, target, transition};

const RETENTION: u64 = 1_000_000;

fn job(status: JobStatus, attempt: u32) -> Job {
    Job {
        id: JobId::generate(1_000),
        tenant: TenantId::new("t").unwrap(),
        model: "m".into(),
        input: JobInput::prompt("p").into(),
        timeout_s: 60,
        max_attempts: 3,
        created_at: 1_000,
        expires_at: 100_000,
        idempotency_key: None,
        webhook: None,
        status,
        attempt,
        started_at: None,
        finished_at: None,
        updated_at: 1_000,
        cancel_requested_at: None,
        executor_id: None,
        lease_until: None,
        output: None,
        output_object: None,
        error: None,
        retain_until: 200_000,
        last_seq: 0,
    }
}

fn all_transitions() -> Vec<Transition> {
    vec![
        Transition::Claim { executor_id: "e".into(), lease_until: 9_000 },
        Transition::Renew { lease_until: 9_000 },
        Transition::Requeue { next_attempt: false },
        Transition::Requeue { next_attempt: true },
        Transition::Succeed { output: serde_json::json!({"text": "x"}).into() },
        Transition::Fail { error: JobError { kind: "model_error".into(), message: "m".into() } },
        Transition::TimeOut { partial_output: Some(serde_json::json!("part").into()) },
        Transition::RequestCancel,
        Transition::ConfirmCancel { partial_output: None, forced: false },
        Transition::Expire,
        Transition::Resend,
    ]
}

fn doc_table() -> BTreeSet<(String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/STATE_MACHINE.md")).unwrap();
    let start = doc.find("<!-- transitions:start -->").expect("start marker");
    let end = doc.find("<!-- transitions:end -->").expect("end marker");
    doc[start..end]
        .lines()
        .filter(|l| l.starts_with('|') && !l.contains("---") && !l.contains("| from |"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].to_string(), cells[2].to_string())
        })
        .collect()
}

#[test]
fn the_document_and_the_code_agree() {
    let code: BTreeSet<(String, String)> = LEGAL.iter().map(|(f, t)| (f.to_string(), t.to_string())).collect();
    assert_eq!(doc_table(), code);
}

#[test]
fn every_pair_is_allowed_or_refused_as_the_table_says() {
    let mut reached = BTreeSet::new();
    for from in JobStatus::ALL {
        for to in JobStatus::ALL {
            let leading: Vec<Transition> = all_transitions().into_iter().filter(|t| target(from, t) == to).collect();
            for t in &leading {
                let result = transition(&job(from, 1), t, 5_000, RETENTION);
                if is_legal(from, to) {
                    match result {
                        Ok(next) => {
                            assert_eq!(next.status, to);
                            reached.insert((from, to));
                        }
                        // Only `Renew` (running, cancelling) and `Resend` (queued) keep a
                        // status: another transition "staying" is refused.
                        Err(e) => assert!(
                            from == to
                                && !matches!(
                                    (t, from),
                                    (Transition::Renew { .. }, JobStatus::Running | JobStatus::Cancelling)
                                        | (Transition::Resend, JobStatus::Queued)
                                ),
                            "{from} -> {to} by {t:?}: {e}"
                        ),
                    }
                } else {
                    assert_eq!(result, Err(TransitionError::Illegal { from, to }), "{from} -> {to} by {t:?}");
                }
            }
        }
    }
    let legal: BTreeSet<_> = LEGAL.iter().copied().collect();
    assert_eq!(reached, legal, "every legal edge is reachable by some transition");
}

#[test]
fn terminal_states_never_change() {
    for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        for t in all_transitions() {
            assert!(transition(&job(from, 1), &t, 5_000, RETENTION).is_err(), "{from} by {t:?}");
        }
    }
}

#[test]
fn times_and_fields_follow_the_transition() {
    let claimed = transition(
        &job(JobStatus::Queued, 1),
        &Transition::Claim { executor_id: "e1".into(), lease_until: 9_000 },
        5_000,
        RETENTION,
    )
    .unwrap();
    assert_eq!(
        (claimed.started_at, claimed.executor_id.as_deref(), claimed.lease_until),
        (Some(5_000), Some("e1"), Some(9_000))
    );
    assert_eq!(claimed.queue_delay_ms(6_000), 4_000);
    assert!(claimed.retain_until >= 5_000 + 60_000 + RETENTION, "kept at least until it could time out");
    let done =
        transition(&claimed, &Transition::Succeed { output: serde_json::json!(42).into() }, 7_000, RETENTION).unwrap();
    assert_eq!((done.finished_at, done.lease_until, done.retain_until), (Some(7_000), None, 7_000 + RETENTION));
    assert_eq!(done.execution_ms(99_999), Some(2_000));
    assert_eq!(done.output, Some(serde_json::json!(42)));

    let cancelling = transition(&claimed, &Transition::RequestCancel, 6_000, RETENTION).unwrap();
    assert_eq!((cancelling.status, cancelling.cancel_requested_at), (JobStatus::Cancelling, Some(6_000)));
    let forced = transition(
        &cancelling,
        &Transition::ConfirmCancel { partial_output: Some(serde_json::json!("p").into()), forced: true },
        8_000,
        RETENTION,
    )
    .unwrap();
    assert_eq!(forced.error.unwrap().kind, "cancel_forced");
    assert_eq!(forced.output, Some(serde_json::json!("p")));

    let timed_out = transition(&claimed, &Transition::TimeOut { partial_output: None }, 8_000, RETENTION).unwrap();
    assert_eq!(timed_out.error.unwrap().kind, "timed_out");
    let expired = transition(&job(JobStatus::Queued, 1), &Transition::Expire, 8_000, RETENTION).unwrap();
    assert_eq!(expired.error.unwrap().kind, "expired");
}

#[test]
fn attempts_grow_on_retry_and_stop_at_the_maximum() {
    let running = |attempt| {
        let mut j = job(JobStatus::Running, attempt);
        j.executor_id = Some("e".into());
        j.lease_until = Some(9_000);
        j
    };
    let retried = transition(&running(1), &Transition::Requeue { next_attempt: true }, 5_000, RETENTION).unwrap();
    assert_eq!(
        (retried.status, retried.attempt, retried.executor_id.clone(), retried.lease_until),
        (JobStatus::Queued, 2, None, None)
    );
    let released = transition(&running(2), &Transition::Requeue { next_attempt: false }, 5_000, RETENTION).unwrap();
    assert_eq!(released.attempt, 2, "a graceful release resumes the same attempt");
    assert_eq!(
        transition(&running(3), &Transition::Requeue { next_attempt: true }, 5_000, RETENTION),
        Err(TransitionError::AttemptsExhausted { attempt: 3, max_attempts: 3 })
    );
}

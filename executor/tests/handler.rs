//! The per-job handler protocol (issue 16), with small `sh` programs: events in order, the
//! last output as the job's, plain lines as logs, stderr as warn logs and as a failure's
//! message, exit 75 retryable, the job's environment and scratch directory, and stops
//! (cancel, timeout) that leave no process of the handler's group behind, even one that
//! ignores SIGTERM or runs in the background.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_executor::handler::{
    EXIT_RETRY, HandlerCommand, HandlerEnd, HandlerEvent, JobContext, parse_stdout_line, run_per_job,
};
use ferry_executor::models::StopReason;
use serde_json::{Value, json};

fn sh(script: &str) -> HandlerCommand {
    HandlerCommand {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        grace: Duration::from_millis(500),
    }
}

fn job(root: &std::path::Path) -> JobContext {
    JobContext {
        job_id: "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B".into(),
        attempt: 2,
        deadline: "2026-12-04T21:00:00.000Z".into(),
        work_root: root.to_path_buf(),
    }
}

fn root() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-handler-test-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn run(command: &HandlerCommand, input: Value) -> (HandlerEnd, Vec<HandlerEvent>) {
    run_until(command, input, std::future::pending()).await
}

async fn run_until(
    command: &HandlerCommand,
    input: Value,
    stop: impl std::future::Future<Output = StopReason>,
) -> (HandlerEnd, Vec<HandlerEvent>) {
    let root = root();
    let mut events = vec![];
    let end = run_per_job(command, &job(&root), &input, |e| events.push(e), stop).await.unwrap();
    let _ = std::fs::remove_dir_all(&root);
    (end, events)
}

fn log(level: &str, message: &str) -> HandlerEvent {
    HandlerEvent::Log { level: level.into(), message: message.into() }
}

#[test]
fn stdout_lines_are_read_as_the_protocol_says() {
    assert_eq!(parse_stdout_line(r#"{"type": "log", "level": "error", "message": "m"}"#), log("error", "m"));
    assert_eq!(parse_stdout_line(r#"{"type": "log", "level": "loud", "message": "m"}"#), log("info", "m"));
    assert_eq!(
        parse_stdout_line(r#"{"type": "percentage", "percent": 40, "message": "step 2"}"#),
        HandlerEvent::Percentage { percent: 40.0, message: Some("step 2".into()) }
    );
    assert_eq!(
        parse_stdout_line(r#"{"type": "token", "text": " ferry"}"#),
        HandlerEvent::Token { text: " ferry".into() }
    );
    assert_eq!(parse_stdout_line(r#"{"type": "output", "output": [1, 2]}"#), HandlerEvent::Output(json!([1, 2])));
    for other in [r#"{"type": "percentage", "percent": 140}"#, r#"{"type": "nope"}"#, "[1, 2]", "plain words", ""] {
        assert_eq!(parse_stdout_line(other), log("info", other), "{other}");
    }
    let long = "é".repeat(20_000);
    let HandlerEvent::Log { message, .. } = parse_stdout_line(&long) else { panic!() };
    assert!(message.len() <= ferry_executor::handler::MAX_LINE && message.chars().all(|c| c == 'é'));
}

#[tokio::test]
async fn events_in_order_and_the_last_output_is_the_jobs() {
    let script = r#"
        read -r input
        echo '{"type": "log", "level": "info", "message": "start"}'
        echo '{"type": "percentage", "percent": 50}'
        echo "not json"
        echo "to stderr" >&2
        echo '{"type": "output", "output": {"draft": 1}}'
        echo "{\"type\": \"output\", \"output\": {\"input\": $input, \"env\": \"$GREETING $FERRY_JOB_ID $FERRY_ATTEMPT $FERRY_DEADLINE\", \"work\": \"$FERRY_WORK_DIR\", \"pwd\": \"$(pwd)\"}}"
        test -d "$FERRY_WORK_DIR" && touch "$FERRY_WORK_DIR/scratch"
    "#;
    let (end, events) = run(&sh(script), json!({"question": "why?"})).await;
    let HandlerEnd::Succeeded { output: Some(output) } = &end else { panic!("{end:?}") };
    assert_eq!(output["input"], json!({"question": "why?"}));
    assert_eq!(output["env"], "hello 01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B 2 2026-12-04T21:00:00.000Z");
    let work = PathBuf::from(output["work"].as_str().unwrap());
    assert!(work.ends_with("01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B-2"), "{work:?}");
    assert!(!work.exists(), "the scratch directory is removed afterwards");
    // The handler runs where the executor runs, so relative paths in its command work.
    assert_eq!(PathBuf::from(output["pwd"].as_str().unwrap()), std::env::current_dir().unwrap());
    let stdout: Vec<&HandlerEvent> =
        events.iter().filter(|e| !matches!(e, HandlerEvent::Log { level, .. } if level == "warn")).collect();
    assert_eq!(stdout[0], &log("info", "start"));
    assert_eq!(stdout[1], &HandlerEvent::Percentage { percent: 50.0, message: None });
    assert_eq!(stdout[2], &log("info", "not json"));
    assert_eq!(stdout[3], &HandlerEvent::Output(json!({"draft": 1})));
    assert!(events.contains(&log("warn", "to stderr")));
}

#[tokio::test]
async fn exit_75_is_retryable_and_other_exits_fail_with_the_stderr_tail() {
    let (end, _) = run(&sh(&format!("echo 'try later' >&2; exit {EXIT_RETRY}")), json!({})).await;
    assert_eq!(end, HandlerEnd::Retryable { message: "try later".into() });
    let script = "for i in $(seq 1 40); do echo \"line $i\" >&2; done; exit 1";
    let (end, events) = run(&sh(script), json!({})).await;
    let HandlerEnd::Failed { message } = end else { panic!("{end:?}") };
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), ferry_executor::handler::TAIL_LINES);
    assert_eq!((lines[0], *lines.last().unwrap()), ("line 21", "line 40"), "the last lines");
    let warns = events.iter().filter(|e| matches!(e, HandlerEvent::Log { level, .. } if level == "warn")).count();
    assert_eq!(warns, ferry_executor::handler::STDERR_LOGS_PER_S as usize, "rate-limited in one second");
    let (end, _) = run(&sh("kill -9 $$"), json!({})).await;
    assert_eq!(end, HandlerEnd::Failed { message: "the handler was killed by signal 9".into() });
    let missing = HandlerCommand { argv: vec!["/nonexistent/handler".into()], ..sh("") };
    let root = root();
    let err = run_per_job(&missing, &job(&root), &json!({}), |_| {}, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/handler"), "{err}");
}

/// Whether a process with `marker` in its command line is still there 2 s on (a SIGKILL is
/// delivered after kill(2) returns).
fn running(marker: &str) -> bool {
    let listed = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            std::fs::read(p.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(marker))
                .unwrap_or(false)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while listed() {
        if Instant::now() > deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test]
async fn a_stop_leaves_no_process_of_the_group_even_one_ignoring_sigterm() {
    let marker = format!("ferry-marker-{}", ulid::Ulid::new());
    // A background child and a foreground loop, both ignoring SIGTERM.
    let script = format!(
        "trap '' TERM; sh -c 'trap \"\" TERM; sleep 300; echo {marker}' & \
         echo '{{\"type\": \"output\", \"output\": \"half\"}}'; while true; do sleep 0.05; done"
    );
    let started = Instant::now();
    let stop = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        StopReason::Cancelled
    };
    let ran = tokio::time::timeout(Duration::from_secs(10), run_until(&sh(&script), json!({}), stop)).await;
    let (end, _) = ran.expect("stopped within the grace period");
    let took = started.elapsed();
    assert_eq!(end, HandlerEnd::Stopped { reason: StopReason::Cancelled, partial: Some(json!("half")) });
    assert!(took >= Duration::from_millis(800), "SIGTERM ignored: killed after the grace ({took:?})");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(!running(&marker), "the background child is gone too");
}

#[tokio::test]
async fn a_handler_that_leaves_a_child_behind_ends_with_it() {
    let marker = format!("ferry-marker-{}", ulid::Ulid::new());
    let script = format!("sh -c 'sleep 300; echo {marker}' & echo '{{\"type\": \"output\", \"output\": 7}}'; exit 0");
    let started = Instant::now();
    let ran = tokio::time::timeout(Duration::from_secs(10), run(&sh(&script), json!({}))).await;
    let (end, _) = ran.expect("not held by the child's open pipes");
    assert_eq!(end, HandlerEnd::Succeeded { output: Some(json!(7)) });
    assert!(started.elapsed() < Duration::from_secs(5), "not held by the child's open pipes");
    assert!(!running(&marker), "no orphan");
}

#[tokio::test]
async fn a_timeout_stops_a_handler_that_exits_on_sigterm() {
    let script = "echo '{\"type\": \"token\", \"text\": \"a\"}'; exec sleep 300";
    let stop = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        StopReason::TimedOut
    };
    let started = Instant::now();
    let (end, events) = run_until(&sh(script), json!({}), stop).await;
    assert_eq!(end, HandlerEnd::Stopped { reason: StopReason::TimedOut, partial: None });
    assert!(started.elapsed() < Duration::from_millis(450), "SIGTERM sufficed, no wait for the grace");
    assert_eq!(events, [HandlerEvent::Token { text: "a".into() }]);
}

mod worker_mode {
    use super::*;
    use ferry_executor::handler::{HandlerError, WorkerEnd, WorkerProcess};

    /// A Python worker: `ready` after a log line; answers requests by their `input.do`, keeping
    /// a count of the jobs it ran (one process for all of them).
    const WORKER: &str = r#"
import json, os, sys, time
print("loading the model", flush=True)
print(json.dumps({"type": "ready"}), flush=True)
count = 0
for line in sys.stdin:
    req = json.loads(line)
    count += 1
    i, do = req["id"], req["input"].get("do")
    say = lambda **m: print(json.dumps(dict(m, id=i)), flush=True)
    say(type="percentage", percent=50)
    print(json.dumps({"type": "log", "message": "not for this job", "id": "other"}), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if do == "fail":
        say(type="failed", retryable=False, message="bad question")
    elif do == "busy":
        say(type="failed", retryable=True, message="busy")
    elif do == "crash":
        print("segfault-ish", file=sys.stderr, flush=True)
        os._exit(3)
    elif do == "hang":
        say(type="output", output="partial")
        signal_ignored = __import__("signal").signal(__import__("signal").SIGTERM, __import__("signal").SIG_IGN)
        os.system("sleep 300; echo " + req["input"]["marker"])
    else:
        say(type="output", output={"count": count, "deadline": req["deadline"], "echo": req["input"]})
        say(type="done")
"#;

    fn python(script: &str) -> HandlerCommand {
        HandlerCommand {
            argv: vec!["python3".into(), "-c".into(), script.into()],
            env: BTreeMap::new(),
            grace: Duration::from_millis(500),
        }
    }

    async fn start(root: &std::path::Path) -> (WorkerProcess, Vec<HandlerEvent>) {
        let mut logs = vec![];
        let w = WorkerProcess::start(&python(WORKER), root, Duration::from_secs(20), |e| logs.push(e)).await.unwrap();
        (w, logs)
    }

    async fn run(w: &mut WorkerProcess, id: &str, input: Value) -> (WorkerEnd, Vec<HandlerEvent>) {
        let mut events = vec![];
        let end = w.run(id, &input, "2026-12-04T21:00:00.000Z", |e| events.push(e), std::future::pending()).await;
        (end, events)
    }

    #[tokio::test]
    async fn one_process_serves_job_after_job() {
        let root = root();
        let (mut w, logs) = start(&root).await;
        assert_eq!(logs, [log("info", "loading the model")], "lines before ready are logs");
        assert!(w.startup > Duration::ZERO);
        let (end, events) = run(&mut w, "job-1", json!({"q": 1})).await;
        let WorkerEnd::Done { output: Some(out) } = end else { panic!("{end:?}") };
        assert_eq!(out, json!({"count": 1, "deadline": "2026-12-04T21:00:00.000Z", "echo": {"q": 1}}));
        // Stdout's events keep their order; stderr's come through another pipe, in between.
        let stdout: Vec<&HandlerEvent> =
            events.iter().filter(|e| !matches!(e, HandlerEvent::Log { level, .. } if level == "warn")).collect();
        assert_eq!(stdout[0], &HandlerEvent::Percentage { percent: 50.0, message: None });
        let other =
            events.iter().any(|e| matches!(e, HandlerEvent::Log { message, .. } if message.contains("\"other\"")));
        assert!(other, "a line for another id is shown, not taken as this job's: {events:?}");
        let (end, later) = run(&mut w, "job-2", json!({})).await;
        assert!(matches!(end, WorkerEnd::Done { output: Some(ref o) } if o["count"] == 2), "the same process: {end:?}");
        // Stderr comes through its own pipe: a line shows with the job in progress when it is read.
        let warns = events.iter().chain(&later).filter(|e| **e == log("warn", "to stderr")).count();
        assert!(warns >= 1, "{events:?} {later:?}");
        let (end, _) = run(&mut w, "job-3", json!({"do": "fail"})).await;
        assert_eq!(end, WorkerEnd::Failed { retryable: false, message: "bad question".into() });
        let (end, _) = run(&mut w, "job-4", json!({"do": "busy"})).await;
        assert_eq!(end, WorkerEnd::Failed { retryable: true, message: "busy".into() });
        w.stop().await;
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_worker_that_dies_fails_its_job_and_a_new_one_serves_the_next() {
        let root = root();
        let (mut w, _) = start(&root).await;
        let (end, _) = run(&mut w, "job-1", json!({"do": "crash"})).await;
        let WorkerEnd::Died { message } = end else { panic!("{end:?}") };
        assert!(message.contains("segfault-ish"), "{message}");
        let (mut again, _) = start(&root).await;
        let (end, _) = run(&mut again, "job-2", json!({})).await;
        assert!(matches!(end, WorkerEnd::Done { output: Some(ref o) } if o["count"] == 1), "a fresh process: {end:?}");
        again.stop().await;
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_stop_ends_the_worker_and_everything_it_started() {
        let root = root();
        let (mut w, _) = start(&root).await;
        let marker = format!("ferry-marker-{}", ulid::Ulid::new());
        let stop = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            StopReason::TimedOut
        };
        let started = Instant::now();
        let input = json!({"do": "hang", "marker": marker});
        let run = w.run("job-1", &input, "d", |_| {}, stop);
        let end = tokio::time::timeout(Duration::from_secs(10), run).await.expect("stopped within the grace");
        assert_eq!(end, WorkerEnd::Stopped { reason: StopReason::TimedOut, partial: Some(json!("partial")) });
        assert!(started.elapsed() >= Duration::from_millis(900), "SIGTERM ignored: SIGKILL after the grace");
        assert!(!running(&marker), "nothing it started is left");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_worker_that_never_says_ready_is_refused() {
        let root = root();
        let started = Instant::now();
        let command = python("import time; time.sleep(300)");
        let silent = WorkerProcess::start(&command, &root, Duration::from_millis(300), |_| {});
        let err = silent.await.err().expect("refused");
        assert!(matches!(err, HandlerError::NotReady(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let command = python("import sys; print('no', file=sys.stderr)");
        let exits = WorkerProcess::start(&command, &root, Duration::from_secs(20), |_| {});
        let err = exits.await.err().expect("refused");
        assert!(err.to_string().contains("ended before it was ready"), "{err}");
        let _ = std::fs::remove_dir_all(&root);
    }
}

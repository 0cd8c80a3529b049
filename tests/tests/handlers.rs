//! Handlers (issue 16) end to end on `ferry dev`'s stack, as a client meets them over HTTP and
//! WebSocket, on the embedded adapters and on the AWS adapters against moto. The programs
//! are Python scripts in `tests/handlers/`, speaking the protocol of docs/HANDLERS.md:
//! - per-job: progress events in order (log, percentage, a plain stdout line, stderr, tokens),
//!   the output with the job's environment, a 1 MB output stored as an object, exit 75 retried
//!   and succeeding on attempt 2, exit 1 failing with the stderr tail, an input refused by the
//!   entry's schema (422 naming the field, nothing queued), a `--handler` command split as a
//!   shell would;
//! - stops: a cancel and a timeout end the job with its partial output and kill the whole
//!   process group (one ignoring SIGTERM, with a background child) within the grace period;
//!   likewise a worker, which is replaced for the next job;
//! - workers: one process serves job after job, a `failed` answer fails the job, a worker
//!   that crashes fails its job retryably, is restarted, and the retry and the next job succeed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_cli::stack::StackOptions;
use ferry_core::progress::{EventBody, ProgressEvent};
use ferry_executor::testing::ScratchDir;
use ferry_tests::dev::DevStack;
use serde_json::{Value, json};

const KEY: &str = "k-handlers";
/// The executor's grace period in these tests: SIGTERM, then SIGKILL this much later.
const GRACE: Duration = Duration::from_secs(1);
const LIMIT: Duration = Duration::from_secs(60);

ferry_tests::on_both_stacks!(per_job_protocol, stops_kill_the_whole_group, workers, the_research_agent_example);

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("handlers").join(name).display().to_string()
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/handlers").join(name).display().to_string()
}

/// A stack serving the two scripted handlers (and one given as `--handler`), its scratch
/// directory beside it; None where moto is missing.
async fn start(aws: bool) -> Option<(DevStack, ScratchDir)> {
    let scratch = ScratchDir::new("ferry-handlers-test").unwrap();
    let catalog = json!({"models": [
        {"id": "scripted", "task": "handler", "command": ["python3", script("scripted.py")], "concurrency": 4,
         "env": {"SCRIPTED_ENV": "from the catalog"},
         "input_schema": {
            "type": "object", "required": ["do"],
            "properties": {
                "do": {"enum": ["progress", "big", "retry-once", "fail", "hang"]},
                "topic": {"type": "string", "minLength": 1},
                "bytes": {"type": "integer", "minimum": 1}
            }
         }},
        {"id": "scripted-worker", "task": "handler", "mode": "worker",
         "command": ["python3", script("scripted_worker.py")]},
        {"id": "research-agent", "task": "handler", "command": ["python3", example("research_agent.py")],
         "env": {"FERRY_AGENT_API_KEY": KEY}, "timeout_s": 120},
        {"id": "tiny-llama", "task": "text-generation"},
    ]});
    let file = scratch.path().join("catalog.json");
    std::fs::write(&file, catalog.to_string()).unwrap();
    let mut opts = StackOptions {
        models_file: Some(file),
        handlers: vec![r#"quoted=python3 -c 'import json, sys; print(json.dumps({"type": "output", "output": json.loads(sys.stdin.readline())}))'"#.into()],
        ..StackOptions::embedded()
    };
    opts.worker.grace_period = GRACE;
    // As `ferry dev` runs it: as many jobs at once as the catalog's entries take (the agent
    // example's model call is a job of its own, beside the agent's).
    opts.worker.concurrency = 0;
    opts.worker.handler_work_dir = scratch.path().join("work");
    let dev = DevStack::start(aws, KEY, opts).await?;
    Some((dev, scratch))
}

/// The events other than status changes, in `seq` order, each once (a subscriber may get an
/// event live and again in the replay of what it missed; `seq` tells them apart, as it does
/// for any client).
fn bodies(events: &[ProgressEvent]) -> Vec<EventBody> {
    let by_seq: std::collections::BTreeMap<u64, &EventBody> = events.iter().map(|e| (e.seq, &e.body)).collect();
    by_seq.into_values().filter(|b| !matches!(b, EventBody::Status { .. })).cloned().collect()
}

fn log(level: &str, message: &str) -> EventBody {
    EventBody::Log { level: level.into(), message: message.into() }
}

async fn job_count(dev: &DevStack) -> usize {
    let list: Value = dev.get("/v1/jobs?limit=100").await.json().await.unwrap();
    list["jobs"].as_array().expect("jobs").len()
}

async fn per_job_protocol(aws: bool) {
    let Some((dev, scratch)) = start(aws).await else { return eprintln!("skipping: moto_server not installed") };

    // Progress, in the order the handler wrote it, then the result, then the end.
    let (id, events) =
        dev.run(&json!({"model": "scripted", "input": {"do": "progress", "topic": "ferries"}}), LIMIT).await;
    let view = dev.job(&id).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let output = view["output"].clone();
    assert_eq!(output["report"], "FERRIES");
    assert_eq!(output["job_id"], id.as_str());
    assert_eq!(output["attempt"], 1);
    assert_eq!(output["work_dir_is_private"], true);
    assert_eq!(output["env"], "from the catalog");
    let deadline = time::OffsetDateTime::parse(
        output["deadline"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("FERRY_DEADLINE is RFC 3339");
    let left = deadline - time::OffsetDateTime::now_utc();
    assert!(left.whole_seconds() > 500 && left.whole_seconds() <= 600, "the default timeout is 600 s: {left}");
    let token = |index, text: &str| EventBody::Token { index, id: 0, text: text.into(), logprob: None };
    // Stdout's lines in the order written; the stderr line among them (two pipes keep no
    // order between them).
    let mut got = bodies(&events);
    let warn = log("warn", "a warning on stderr");
    assert_eq!(got.iter().filter(|e| **e == warn).count(), 1, "{got:?}");
    got.retain(|e| *e != warn);
    assert_eq!(
        got,
        vec![
            log("info", "step 1: fetching"),
            EventBody::Percentage { percent: 25.0, message: Some("fetched".into()) },
            log("info", "a plain line"),
            token(0, "Fer"),
            token(1, "ry"),
            EventBody::Percentage { percent: 100.0, message: None },
            EventBody::inline_result(output),
        ]
    );
    let statuses: Vec<_> = events
        .iter()
        .filter_map(|e| match e.body {
            EventBody::Status { status, .. } => Some(status.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(statuses.first(), Some(&"running"));
    assert_eq!(statuses.last(), Some(&"succeeded"));
    let work = scratch.path().join("work");
    assert_eq!(std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0), 0, "the scratch directory is removed");

    // A 1 MB output is stored as an object, as any other.
    let (id, events) = dev.run(&json!({"model": "scripted", "input": {"do": "big", "bytes": 1_000_000}}), LIMIT).await;
    let view = dev.job(&id).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    let (stored, bytes) = ferry_tests::dev::stored_output(&dev, &id, &view, &events).await;
    assert_eq!(stored["report"].as_str().map(str::len), Some(1_000_000));
    assert!(bytes > 1_000_000);

    // Exit 75 is retried: attempt 2 succeeds.
    let (_, job) = dev.submit(&json!({"model": "scripted", "input": {"do": "retry-once"}})).await;
    let view = dev.settled(job["id"].as_str().unwrap(), LIMIT).await;
    assert_eq!(
        (&view["status"], &view["attempt"], &view["output"]),
        (&json!("succeeded"), &json!(2), &json!({"attempt": 2}))
    );

    // Exit 1 fails, with the last 20 stderr lines as the message.
    let (_, job) = dev.submit(&json!({"model": "scripted", "input": {"do": "fail"}})).await;
    let view = dev.settled(job["id"].as_str().unwrap(), LIMIT).await;
    assert_eq!((&view["status"], &view["attempt"]), (&json!("failed"), &json!(1)), "{view}");
    assert_eq!(view["error"]["type"], "handler_failed");
    let message = view["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("traceback line 10\n") && message.ends_with("traceback line 29"), "{message}");

    // The schema is checked at submit: 422 naming the field, and nothing is queued.
    let before = job_count(&dev).await;
    for (input, field) in [
        (json!({"do": "progress", "topic": ""}), "input.topic"),
        (json!({"do": "progress", "topic": 7}), "input.topic"),
        (json!({"do": "dance"}), "input.do"),
        (json!({"do": "big", "bytes": 0}), "input.bytes"),
        (json!({"topic": "no do"}), "input.do"),
        (json!("a string"), "input"),
    ] {
        let (status, body) = dev.submit(&json!({"model": "scripted", "input": input})).await;
        assert_eq!(status, 422, "{input}: {body}");
        assert_eq!(body["error"]["field"], field, "{input}: {body}");
    }
    let (status, body) = dev.submit(&json!({"model": "scripted", "input": {"do": "big"}, "params": {"x": 1}})).await;
    assert_eq!((status, &body["error"]["field"]), (400, &json!("params.x")), "{body}");
    assert_eq!(job_count(&dev).await, before, "a refused input queues nothing");

    // `--handler ID=COMMAND` is split as a shell splits it; any JSON input goes through.
    let (id, _) = dev.run(&json!({"model": "quoted", "input": {"words": "a b  c", "n": [1, 2]}}), LIMIT).await;
    assert_eq!(dev.job(&id).await["output"], json!({"words": "a b  c", "n": [1, 2]}));

    // The model list shows the schema clients must follow.
    let models: Value = dev.get("/v1/models").await.json().await.unwrap();
    let scripted = models["models"].as_array().unwrap().iter().find(|m| m["id"] == "scripted").unwrap();
    assert_eq!((&scripted["task"], &scripted["input_schema"]["required"]), (&json!("handler"), &json!(["do"])));
    dev.stop().await;
}

/// The pids a `hang` job recorded (the handler and its background child), once it has.
async fn hanging_pids(dir: &Path, id: &str) -> Vec<u32> {
    let file = dir.join(format!("{id}.pids"));
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(pids) = std::fs::read_to_string(&file).ok().filter(|s| !s.trim().is_empty()) {
            return pids.split_whitespace().map(|p| p.parse().unwrap()).collect();
        }
        assert!(Instant::now() < deadline, "the handler of {id} never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether process `pid` is alive (a zombie, dead but not yet reaped, has no command line).
fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// Asserts every one of `pids` is gone within `within`.
async fn all_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "processes {pids:?} outlived their job");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Submits a `hang` job to `model`; its id and the pids of its processes, once they run.
async fn hang(dev: &DevStack, pid_dir: &Path, model: &str, timeout_s: Option<u64>) -> (String, Vec<u32>) {
    let mut body = json!({"model": model, "input": {"do": "hang", "pid_dir": pid_dir}});
    if let Some(t) = timeout_s {
        body["timeout_s"] = t.into();
    }
    let (status, job) = dev.submit(&body).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let pids = hanging_pids(pid_dir, &id).await;
    assert!(pids.iter().all(|p| alive(*p)));
    (id, pids)
}

async fn stops_kill_the_whole_group(aws: bool) {
    let Some((dev, scratch)) = start(aws).await else { return eprintln!("skipping: moto_server not installed") };
    let pid_dir: PathBuf = scratch.path().to_owned();
    // The input schema of `scripted` names no pid_dir: extra properties are allowed.

    // A cancel: SIGTERM (ignored), SIGKILL after the grace period, to the whole group.
    let (id, pids) = hang(&dev, &pid_dir, "scripted", None).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // its output line is read
    let cancelled_at = Instant::now();
    let (status, body) = dev.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    assert!(status == 202 || status == 200, "{status} {body}");
    let view = dev.settled(&id, LIMIT).await;
    assert_eq!(view["status"], "cancelled", "{view}");
    assert_eq!(view["output"], json!({"partial": "half a report"}), "the last output is the partial output");
    all_gone(&pids, Duration::from_secs(1)).await;
    // The cancel is seen within the executor's cancel check, then the grace period runs.
    assert!(cancelled_at.elapsed() < GRACE + Duration::from_secs(4), "{:?}", cancelled_at.elapsed());

    // A timeout likewise.
    let (id, pids) = hang(&dev, &pid_dir, "scripted", Some(2)).await;
    let view = dev.settled(&id, LIMIT).await;
    assert_eq!(view["status"], "timed_out", "{view}");
    assert_eq!(view["output"], json!({"partial": "half a report"}));
    all_gone(&pids, Duration::from_secs(1)).await;

    // A worker's job: the worker goes with it, and a fresh one serves the next job.
    let (id, pids) = hang(&dev, &pid_dir, "scripted-worker", None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    dev.post(&format!("/v1/jobs/{id}/cancel"), &json!({})).await;
    let view = dev.settled(&id, LIMIT).await;
    assert_eq!((&view["status"], &view["output"]), (&json!("cancelled"), &json!({"partial": "some pages"})));
    all_gone(&pids, Duration::from_secs(1)).await;
    let (id, _) = dev.run(&json!({"model": "scripted-worker", "input": {"do": "count"}}), LIMIT).await;
    let view = dev.job(&id).await;
    assert_eq!((&view["status"], &view["output"]["served"]), (&json!("succeeded"), &json!(1)), "{view}");
    assert_ne!(view["output"]["pid"], json!(pids[0]));
    dev.stop().await;
}

async fn workers(aws: bool) {
    let Some((dev, scratch)) = start(aws).await else { return eprintln!("skipping: moto_server not installed") };

    // One process serves job after job; its start-up shows in the first job's progress.
    let (first, events) = dev.run(&json!({"model": "scripted-worker", "input": {"do": "count"}}), LIMIT).await;
    let first = dev.job(&first).await;
    assert_eq!((&first["status"], &first["output"]["served"]), (&json!("succeeded"), &json!(1)), "{first}");
    let got = bodies(&events);
    assert_eq!(got[0], log("info", "starting a scripted-worker worker"));
    assert!(matches!(&got[1], EventBody::Log { message, .. } if message.starts_with("worker ready in ")), "{got:?}");
    assert_eq!(
        got[2..],
        [
            EventBody::Percentage { percent: 50.0, message: Some("halfway".into()) },
            log("info", "job 1 on this worker"),
            EventBody::inline_result(first["output"].clone()),
        ]
    );
    assert!(first["output"]["deadline"].as_str().is_some_and(|d| d.ends_with('Z')), "{first}");
    let (second, events) = dev.run(&json!({"model": "scripted-worker", "input": {"do": "count"}}), LIMIT).await;
    let second = dev.job(&second).await;
    assert_eq!(second["output"]["served"], 2, "the same process: {second}");
    assert_eq!(second["output"]["pid"], first["output"]["pid"]);
    assert!(
        !bodies(&events)
            .iter()
            .any(|e| matches!(e, EventBody::Log { message, .. } if message.starts_with("worker ready")))
    );

    // A `failed` answer fails the job (not retryable: one attempt), and the worker stays.
    let (_, job) = dev.submit(&json!({"model": "scripted-worker", "input": {"do": "refuse"}})).await;
    let view = dev.settled(job["id"].as_str().unwrap(), LIMIT).await;
    assert_eq!((&view["status"], &view["attempt"]), (&json!("failed"), &json!(1)), "{view}");
    assert_eq!(view["error"], json!({"type": "handler_failed", "message": "the image is not a chart"}));

    // A worker that crashes fails its job retryably; a new worker serves the retry.
    let (_, job) = dev
        .submit(&json!({"model": "scripted-worker", "input": {"do": "crash-once", "pid_dir": scratch.path()}}))
        .await;
    let view = dev.settled(job["id"].as_str().unwrap(), LIMIT).await;
    assert_eq!((&view["status"], &view["attempt"]), (&json!("succeeded"), &json!(2)), "{view}");
    assert_ne!(view["output"]["pid"], first["output"]["pid"], "another process");
    assert!(!alive(first["output"]["pid"].as_u64().unwrap() as u32), "the crashed worker is gone");
    let (next, _) = dev.run(&json!({"model": "scripted-worker", "input": {"do": "count"}}), LIMIT).await;
    assert_eq!(dev.job(&next).await["status"], "succeeded");

    // A worker that exits while idle is not handed the next job: that job runs once, on a new one.
    let (gone, _) = dev.run(&json!({"model": "scripted-worker", "input": {"do": "exit-after"}}), LIMIT).await;
    let gone = dev.job(&gone).await;
    assert_eq!(gone["status"], "succeeded", "{gone}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (next, _) = dev.run(&json!({"model": "scripted-worker", "input": {"do": "count"}}), LIMIT).await;
    let next = dev.job(&next).await;
    assert_eq!((&next["status"], &next["attempt"]), (&json!("succeeded"), &json!(1)), "{next}");
    assert_ne!(next["output"]["pid"], gone["output"]["pid"]);
    // The idle worker ends with the executor.
    let idle = next["output"]["pid"].as_u64().unwrap() as u32;
    assert!(alive(idle));
    dev.stop().await;
    all_gone(&[idle], Duration::from_secs(2)).await;
}

/// `examples/handlers/research_agent.py`: five steps with progress after each, a source it
/// cannot fetch skipped with a warning, a chat model called through Ferry's own OpenAI route
/// (the demo Llama, a job of its own on the same stack), a Markdown report as the output.
async fn the_research_agent_example(aws: bool) {
    let Some((dev, _scratch)) = start(aws).await else { return eprintln!("skipping: moto_server not installed") };
    let question = "How do cable ferries cross rivers?";
    let input = json!({
        "question": question,
        "sources": [
            {"title": "Cable ferries", "text": "A cable ferry is guided across rivers by a cable. Cable ferries are slow. Bridges are faster."},
            {"title": "Rivers", "text": "Rivers carry water to the sea. Crossing rivers took boats before bridges."},
            {"url": "http://127.0.0.1:9/unreachable"},
        ],
        "model_url": format!("{}/openai/v1/chat/completions", dev.http),
        "model": "tiny-llama",
        // The demo Llama's context is 128 tokens.
        "max_notes": 1,
        "max_tokens": 8,
    });
    let (id, events) = dev.run(&json!({"model": "research-agent", "input": input}), Duration::from_secs(120)).await;
    let view = dev.job(&id).await;
    assert_eq!(view["status"], "succeeded", "{view}");
    assert_eq!(view["timeout_s"], 120, "the entry's timeout is its jobs' default");
    let got = bodies(&events);
    let percents: Vec<f32> = got
        .iter()
        .filter_map(|e| match e {
            EventBody::Percentage { percent, .. } => Some(*percent),
            _ => None,
        })
        .collect();
    assert_eq!(percents, [20.0, 40.0, 60.0, 80.0, 100.0]);
    assert!(got.iter().any(|e| matches!(e, EventBody::Log { level, message } if level == "warn" && message.starts_with("skipped a source"))), "{got:?}");
    let report = view["output"]["report"].as_str().expect("a report");
    assert!(report.starts_with(&format!("# {question}\n\n## Summary\n\n")), "{report}");
    assert!(
        report.contains("1. A cable ferry is guided across rivers by a cable. (Cable ferries; 3 of 4 terms)"),
        "{report}"
    );
    assert!(report.ends_with("## Sources\n\n- Cable ferries\n- Rivers"), "{report}");
    // The summary is the model's (the demo Llama's random weights write gibberish, but not
    // the fallback's ranked sentences).
    let summary = report.split("## Summary\n\n").nth(1).unwrap().split("\n\n## Findings").next().unwrap();
    assert!(!summary.is_empty() && !summary.starts_with("A cable ferry"), "{summary}");
    let jobs: Value = dev.get("/v1/jobs?limit=10").await.json().await.unwrap();
    assert!(
        jobs["jobs"].as_array().unwrap().iter().any(|j| j["model"] == "tiny-llama"),
        "the agent's model call ran as a job"
    );
    dev.stop().await;
}

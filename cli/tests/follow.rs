//! `ferry watch` and `ferry submit --follow`: the real binary against `ferry dev
//! --dev-progress` (events driven by hand through the dev progress endpoint), and the
//! follow loop in-process against the local gateway, with its socket closed under it
//! through the Management API to check that a resume misses nothing and repeats nothing.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_cli::follow::{self, FollowOptions};
use ferry_cli::gateway::{self, Gateway};
use ferry_cli::server;
use ferry_cli::stack::{self, StackOptions};
use ferry_core::JobStatus;
use ferry_core::progress::EventBody;
use serde_json::{Value, json};

mod common;

use common::{DevProcess, FERRY, spawn_dev};
const KEY: &str = "k-follow";

fn start_dev() -> DevProcess {
    spawn_dev(&["--dev-progress", "--no-executor", "--api-key", &format!("{KEY}=acme"), "--rate-limit", "0"])
}

impl DevProcess {
    fn ferry(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FERRY);
        c.args(args)
            .args(["--url", &self.http, "--ws-url", &self.ws])
            .env("FERRY_API_KEY", KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    async fn submit(&self) -> String {
        let body = json!({"model": "tiny-llama", "input": {"prompt": "hi"}});
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/jobs", self.http))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "submit: {}", resp.status());
        resp.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_string()
    }

    async fn drive(&self, job: &str, body: Value) {
        drive(&self.ws.replace("ws://", "http://"), &self.dev_token, job, body).await;
    }
}

async fn drive(gw_http: &str, token: &str, job: &str, body: Value) {
    let url = format!("{gw_http}/dev/jobs/{job}/progress");
    let resp = reqwest::Client::new().post(url).header("x-ferry-dev-token", token).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200, "driving {body}");
}

fn token(index: u32, text: &str) -> Value {
    json!({"type": "token", "index": index, "id": 1, "text": text, "logprob": null})
}

fn status(s: &str) -> Value {
    json!({"type": "status", "status": s, "attempt": 1})
}

/// Waits for a child with a deadline; returns (exit code, stdout, stderr).
async fn finish(mut child: Child) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the watcher did not exit");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code().unwrap_or(-1), out, err)
}

#[tokio::test]
async fn watch_prints_tokens_and_exits_with_the_outcome() {
    let dev = start_dev();
    let job = dev.submit().await;
    // One event before the watcher starts (replayed), the rest live.
    dev.drive(&job, token(0, "He")).await;
    let child = dev.ferry(&["watch", &job]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    dev.drive(&job, token(1, "llo")).await;
    dev.drive(&job, json!({"type": "percentage", "percent": 50.0, "message": "halfway"})).await;
    dev.drive(&job, json!({"type": "log", "level": "info", "message": "almost"})).await;
    dev.drive(&job, json!({"type": "result", "output": {"text": "Hello"}})).await;
    dev.drive(&job, status("succeeded")).await;
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.starts_with("Hello\n"), "{out}");
    assert!(out.contains(r#""text": "Hello""#), "the result, pretty: {out}");
    assert!(err.contains("\r[#####.....] 50% halfway"), "{err:?}");
    assert!(err.contains("[info] almost"), "{err}");

    // A failed job exits 3.
    let job = dev.submit().await;
    let child = dev.ferry(&["watch", &job]).spawn().unwrap();
    dev.drive(&job, json!({"type": "error", "error": {"type": "model_error", "message": "boom"}})).await;
    dev.drive(&job, status("failed")).await;
    let (code, _, err) = finish(child).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("boom"), "{err}");

    // A job already cancelled (the `subscribed` reply says so) exits 3 at once.
    let job = dev.submit().await;
    let cancel = reqwest::Client::new()
        .post(format!("{}/v1/jobs/{job}/cancel", dev.http))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert!(cancel.status().is_success());
    let (code, _, err) = finish(dev.ferry(&["watch", &job]).spawn().unwrap()).await;
    assert_eq!(code, 3, "{err}");

    // An unknown job is an error (exit 1).
    let (code, _, err) = finish(dev.ferry(&["watch", "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B"]).spawn().unwrap()).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not_found"), "{err}");
    // A refused key too, without retrying.
    let (code, _, err) = finish(dev.ferry(&["watch", &job, "--api-key", "nope"]).spawn().unwrap()).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("refused the API key"), "{err}");
}

#[tokio::test]
async fn watch_json_prints_each_event_once_in_order() {
    let dev = start_dev();
    let job = dev.submit().await;
    for i in 0..3 {
        dev.drive(&job, token(i, &format!("t{i}"))).await;
    }
    let child = dev.ferry(&["watch", &job, "--json"]).spawn().unwrap();
    for i in 3..8 {
        dev.drive(&job, token(i, &format!("t{i}"))).await;
    }
    dev.drive(&job, status("succeeded")).await;
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 0, "{err}");
    let events: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("one JSON event a line")).collect();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>(), "{out}");
    assert_eq!(events[8]["status"], "succeeded");
    assert_eq!(events[0]["job_id"], job.as_str());
}

#[tokio::test]
async fn submit_follow_submits_then_follows() {
    let dev = start_dev();
    let child = dev.ferry(&["submit", "--model", "tiny-llama", "--prompt", "hi", "--follow"]).spawn().unwrap();
    // The job's id is on stderr; find it through the API instead.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let job = loop {
        let list: Value =
            client.get(format!("{}/v1/jobs", dev.http)).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
        if let Some(id) = list["jobs"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "the job was not submitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    dev.drive(&job, token(0, "Hi")).await;
    dev.drive(&job, status("timed_out")).await;
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 3, "{err}");
    assert!(out.starts_with("Hi"), "{out}");
    assert!(err.contains(&job), "{err}");
}

/// The stack and gateway in-process: (HTTP API URL, gateway's HTTP URL, gateway, job id).
async fn in_process() -> (String, String, Arc<Gateway>, String) {
    let mut opts = StackOptions::embedded();
    opts.api_keys = vec![format!("{KEY}=acme")];
    opts.config.rate_limit_per_s = 0.0;
    let stack = stack::build(&opts).await.expect("stack");
    let ws_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = ws_listener.local_addr().unwrap();
    let gw = Gateway::new(&stack, true);
    tokio::spawn(gateway::serve(ws_listener, gw.clone(), std::future::pending()));
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = format!("http://{}", http_listener.local_addr().unwrap());
    tokio::spawn(server::serve(http_listener, server::Mode::Api(stack.api.clone()), std::future::pending()));
    let gw_http = format!("http://{ws_addr}");
    let client = reqwest::Client::new();
    let job: Value = client
        .post(format!("{http}/v1/jobs"))
        .bearer_auth(KEY)
        .json(&json!({"model": "tiny-llama", "input": {"prompt": "hi"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = job["id"].as_str().unwrap().to_string();
    (http, gw_http, gw, job)
}

#[tokio::test]
async fn a_dropped_connection_resumes_without_gaps_or_repeats() {
    let (_http, gw_http, gw, job) = in_process().await;
    let client = reqwest::Client::new();
    let ws_addr = gw_http.trim_start_matches("http://").to_string();
    let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let seen2 = seen.clone();
    let opts = FollowOptions::new(format!("ws://{ws_addr}"), KEY, &job);
    let follower = tokio::spawn(async move { follow::follow(&opts, |e| seen2.lock().unwrap().push(e.seq)).await });

    let wait_for = |n: usize| {
        let seen = seen.clone();
        async move {
            for _ in 0..500 {
                if seen.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("only {:?} arrived", seen.lock().unwrap());
        }
    };
    for i in 0..3 {
        drive(&gw_http, &gw.token, &job, token(i, "x")).await;
    }
    wait_for(3).await;
    for round in 0..2 {
        // Close the follower's socket through the Management API, as API Gateway might.
        let ids = gw.registry.ids();
        assert_eq!(ids.len(), 1, "{ids:?}");
        let del = client
            .delete(format!("{gw_http}/@connections/{}", ids[0]))
            .header("x-ferry-dev-token", &gw.token)
            .send()
            .await
            .unwrap();
        assert_eq!(del.status(), 204);
        // Events while it is away are stored and replayed on resubscribe.
        for i in 0..4 {
            drive(&gw_http, &gw.token, &job, token(10 * round + i, "y")).await;
        }
        // Wait for the new connection, then one more live event.
        for _ in 0..500 {
            let now = gw.registry.ids();
            if now.len() == 1 && now[0] != ids[0] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drive(&gw_http, &gw.token, &job, token(99, "z")).await;
        wait_for(3 + 5 * (round as usize + 1)).await;
    }
    drive(
        &gw_http,
        &gw.token,
        &job,
        serde_json::to_value(EventBody::Status { status: JobStatus::Succeeded, attempt: 1 }).unwrap(),
    )
    .await;
    let outcome = tokio::time::timeout(Duration::from_secs(20), follower).await.expect("follow ends").unwrap();
    assert_eq!(outcome.unwrap(), JobStatus::Succeeded);
    assert_eq!(*seen.lock().unwrap(), (1..=14).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_job_ended_without_a_status_event_is_noticed_by_the_recheck() {
    let (http, gw_http, _gw, job) = in_process().await;
    let mut opts = FollowOptions::new(gw_http.replace("http://", "ws://"), KEY, &job);
    opts.recheck_every = Duration::from_millis(200);
    opts.ping_every = Duration::from_millis(50);
    let follower = tokio::spawn(async move { follow::follow(&opts, |_| {}).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!follower.is_finished(), "still queued");
    // Cancelling a queued job over HTTP publishes no event; the recheck reads the status.
    let cancel =
        reqwest::Client::new().post(format!("{http}/v1/jobs/{job}/cancel")).bearer_auth(KEY).send().await.unwrap();
    assert!(cancel.status().is_success());
    let outcome = tokio::time::timeout(Duration::from_secs(10), follower).await.expect("follow ends").unwrap();
    assert_eq!(outcome.unwrap(), JobStatus::Cancelled);
}

/// Runs `command` to its end, reading its output as it goes (a large output would fill
/// the pipe and block it otherwise): (exit code, stdout, stderr).
async fn run_to_end(command: &mut Command) -> (i32, String, String) {
    let child = command.spawn().unwrap();
    let out =
        tokio::time::timeout(Duration::from_secs(120), tokio::task::spawn_blocking(move || child.wait_with_output()))
            .await
            .expect("the command ends")
            .unwrap()
            .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[tokio::test]
async fn a_stored_output_prints_in_full_from_follow_and_get() {
    let Some(dir) = ferry_executor::testing::minilm_dir() else { return };
    let model = format!("minilm={}", dir.display());
    let key = format!("{KEY}=acme");
    let dev = spawn_dev(&["--in-process", "--model", &model, "--api-key", &key, "--rate-limit", "0"]);
    // 100 vectors of 384 numbers: far over the inline threshold and a WebSocket frame.
    let texts: Vec<String> = (0..100).map(|i| format!("sentence number {i} about a river")).collect();
    let mut args = vec!["submit", "--model", "minilm", "--follow"];
    for t in &texts {
        args.extend(["--text", t.as_str()]);
    }
    let (code, out, err) = run_to_end(&mut dev.ferry(&args)).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stored: "), "the result came as a reference: {err}");
    let followed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {}", &out[..out.len().min(300)]));
    assert_eq!(followed["embeddings"].as_array().map(Vec::len), Some(100));
    let id = err.lines().find_map(|l| l.strip_prefix("job ")?.split_whitespace().next()).unwrap().to_string();

    let get = |extra: &[&str]| {
        let mut c = Command::new(FERRY);
        c.args(["get", &id, "--url", &dev.http]).args(extra).env("FERRY_API_KEY", KEY).env("RUST_LOG", "warn");
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    };
    let (code, out, err) = run_to_end(&mut get(&["--json"])).await;
    assert_eq!(code, 0, "{err}");
    let view: Value = serde_json::from_str(&out).unwrap();
    assert!(view["output_url"].is_string(), "stored: {}", view["output_url"]);
    assert_eq!(view["output"], followed, "get --json fills in the stored output");
    let (code, out, _) = run_to_end(&mut get(&[])).await;
    assert_eq!(code, 0);
    let printed = out.lines().find_map(|l| l.trim().strip_prefix("output: ")).expect("an output line");
    assert_eq!(serde_json::from_str::<Value>(printed).unwrap(), followed);
}

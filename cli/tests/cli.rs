//! The real `ferry` binary: `ferry dev` on a free port, the client commands against it with
//! readable and `--json` output and their exit codes, and a clean stop on Ctrl-C (SIGINT).

use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{DevProcess, FERRY, spawn_dev};

fn start_dev(extra: &[&str]) -> DevProcess {
    let mut args = vec!["--api-key", "k-cli-test=acme"];
    args.extend_from_slice(extra);
    spawn_dev(&args)
}

fn ferry(dev: &DevProcess, args: &[&str]) -> (i32, String) {
    let out = Command::new(FERRY)
        .args(args)
        .args(["--url", &dev.http])
        .env("FERRY_API_KEY", "k-cli-test")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn client_commands_against_dev_and_clean_ctrl_c() {
    // No executor: the job stays queued for get/list/cancel to see.
    let dev = start_dev(&["--no-executor"]);
    let (code, out) = ferry(
        &dev,
        &["submit", "--model", "tiny-llama", "--prompt", "hi", "--params", r#"{"max_new_tokens": 4}"#, "--json"],
    );
    assert_eq!(code, 0, "{out}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["status"], "queued");

    let (code, out) = ferry(&dev, &["get", &id]);
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("queued"), "{out}");

    let (code, out) = ferry(&dev, &["list", "--status", "queued"]);
    assert_eq!(code, 0);
    assert!(out.contains(&id), "{out}");

    let (code, out) = ferry(&dev, &["models", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("all-minilm-l6-v2"));

    // A cancelled job exits non-zero, so scripts can tell.
    let (code, out) = ferry(&dev, &["cancel", &id]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("cancelled"));

    // API errors are shown with their field and exit 1.
    let (code, out) =
        ferry(&dev, &["submit", "--model", "tiny-llama", "--prompt", "hi", "--params", r#"{"temprature": 1}"#]);
    assert_eq!(code, 1);
    assert!(out.contains("params.temprature") && out.contains("400"), "{out}");
    let (code, out) = ferry(&dev, &["get", "nope"]);
    assert_eq!(code, 1);
    assert!(out.contains("field: id"), "{out}");

    // Ctrl-C: the server stops cleanly and exits 0.
    let mut dev = dev;
    let pid = dev.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = dev.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "ferry dev did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let rest: Vec<String> = dev.lines.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

/// The processes (other than this test's) whose environment holds `marker`.
fn processes_with_env(marker: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()) && *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
        })
        .collect()
}

#[test]
fn demo_runs_and_exits_with_once() {
    // A state directory of its own marks this run's processes, executors included.
    let state = ferry_executor::testing::ScratchDir::new("dev-once-state").unwrap();
    let out = Command::new(FERRY)
        .args(["dev", "--http", "127.0.0.1:0", "--demo", "--once"])
        .env("RUST_LOG", "warn")
        .env("FERRY_STATE_DIR", state.path())
        .output()
        .unwrap();
    let marker = format!("FERRY_STATE_DIR={}", state.path().display());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with_env(&marker).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(processes_with_env(&marker), Vec::<String>::new(), "executor processes left behind by --once");
    assert!(state.path().join("executors").is_dir(), "its executors logged under the state directory");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("fry_dev_local_key"), "the dev key is printed: {text}");
    assert!(text.contains("-> HTTP 202"), "{text}");
    // The in-process executor ran the demo job on the demo model, tokens streamed live.
    assert!(text.contains("status running") && text.contains("tokens: "), "{text}");
    assert!(text.contains("the demo job finished: succeeded"), "{text}");
    assert!(text.contains("\"finish_reason\""), "the output is shown: {text}");
    assert!(text.contains("and cancelled it"), "{text}");
}

/// `ferry submit --follow` against `ferry dev` with its executor: live tokens on stdout,
/// exit 0 when the job succeeds.
#[test]
fn submit_follow_runs_to_the_result() {
    let dev = start_dev(&[]);
    let (code, out) = ferry(
        &dev,
        &[
            "submit",
            "--model",
            "tiny-llama",
            "--prompt",
            "the river",
            "--params",
            r#"{"max_new_tokens": 8}"#,
            "--follow",
            "--ws-url",
            &dev.ws,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("succeeded"), "{out}");
    assert!(out.contains("\"token_ids\""), "the result is printed: {out}");
}

/// `ferry dev --model ID=FILE.gguf` serves a GGUF file (its tokenizer.json beside it) as it
/// serves a directory: listed with its family, and a chat job runs to the end on it.
#[test]
fn dev_serves_a_gguf_file() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../executor/tests/fixtures/gguf/qwen2/qwen2-Q4_K_M.gguf")
        .canonicalize()
        .unwrap();
    let dev = start_dev(&["--model", &format!("qwen-q4={}", file.display())]);
    let (code, out) = ferry(&dev, &["models", "--json"]);
    assert_eq!(code, 0, "{out}");
    let models: serde_json::Value = serde_json::from_str(&out).unwrap();
    let entry = models["models"].as_array().unwrap().iter().find(|m| m["id"] == "qwen-q4").expect("listed");
    assert_eq!(entry["architecture"], "Qwen2ForCausalLM", "{entry}");
    let (code, out) = ferry(
        &dev,
        &[
            "submit",
            "--model",
            "qwen-q4",
            "--prompt",
            "the river",
            "--params",
            r#"{"max_new_tokens": 4}"#,
            "--follow",
            "--ws-url",
            &dev.ws,
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("succeeded") && out.contains("\"token_ids\""), "{out}");
}

/// `ferry webhooks secret` prints the tenant's secret (the same one twice); `ferry webhooks
/// rotate` prints the new one first and the old one after it.
#[test]
fn webhook_secrets_from_the_cli() {
    let dev = start_dev(&["--no-executor"]);
    let (code, first) = ferry(&dev, &["webhooks", "secret"]);
    assert_eq!(code, 0, "{first}");
    let first: Vec<&str> = first.lines().filter(|l| l.starts_with("whsec_")).collect();
    assert_eq!(first.len(), 1, "{first:?}");
    let (_, again) = ferry(&dev, &["webhooks", "secret"]);
    assert!(again.contains(first[0]), "{again}");
    let (code, rotated) = ferry(&dev, &["webhooks", "rotate", "--json"]);
    assert_eq!(code, 0, "{rotated}");
    let rotated: serde_json::Value = serde_json::from_str(&rotated).unwrap();
    let secrets = rotated["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 2, "{rotated}");
    assert_eq!(secrets[1], first[0], "the old secret second");
}

#[test]
fn bad_flags_are_refused() {
    let out =
        Command::new(FERRY).args(["dev", "--api-key", "k=bad tenant!", "--http", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenant"));
    let out = Command::new(FERRY).args(["dev", "--model", "x=/nonexistent", "--http", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}

/// A loopback receiver for one webhook POST: its headers (lower-case names) and body.
fn receive_one_post() -> (String, std::sync::mpsc::Receiver<(Vec<(String, String)>, Vec<u8>)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut headers = vec![];
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n").unwrap();
        tx.send((headers, body)).unwrap();
    });
    (url, rx)
}

/// `ferry submit --webhook URL`: `ferry dev` posts the finished job there, signed with the
/// secret `ferry webhooks secret` prints; `ferry webhooks list` shows it delivered.
#[test]
fn dev_delivers_a_signed_webhook() {
    let dev = start_dev(&[]);
    let (url, posts) = receive_one_post();
    let (code, out) = ferry(
        &dev,
        &["submit", "--model", "tiny-llama", "--prompt", "the river", "--params", r#"{"max_new_tokens": 4}"#]
            .into_iter()
            .chain(["--webhook", &url, "--wait", "20", "--json"])
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{out}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = job["id"].as_str().unwrap();
    let (headers, body) = posts.recv_timeout(Duration::from_secs(30)).expect("a webhook POST");
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
    assert_eq!(header("webhook-id"), format!("msg_{id}_completed"));
    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((sent["type"].as_str(), sent["data"]["id"].as_str()), (Some("job.completed"), Some(id)));
    let (code, secrets) = ferry(&dev, &["webhooks", "secret", "--json"]);
    assert_eq!(code, 0, "{secrets}");
    let secrets: serde_json::Value = serde_json::from_str(&secrets).unwrap();
    let secret = ferry_core::webhook::WebhookSecret::parse(secrets["secrets"][0].as_str().unwrap()).unwrap();
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
    assert_eq!(header("webhook-signature"), secret.sign(&header("webhook-id"), timestamp, &body));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, list) = ferry(&dev, &["webhooks", "list", id]);
        assert_eq!(code, 0, "{list}");
        if list.contains("delivered") {
            assert!(list.contains("tries [204]"), "{list}");
            break;
        }
        assert!(Instant::now() < deadline, "never shown delivered: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A webhook receiver that accepts connections and never answers: `ferry dev`'s executor
/// finishes the job, and the next one, without waiting on it.
#[test]
fn a_hanging_webhook_receiver_delays_no_job() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (seen_tx, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = vec![];
        for stream in listener.incoming() {
            held.push(stream.unwrap()); // never answered
            let _ = seen_tx.send(());
        }
    });
    let dev = start_dev(&[]);
    let run = |url: &str| {
        let started = Instant::now();
        let args = ["submit", "--model", "tiny-llama", "--prompt", "the river", "--params", r#"{"max_new_tokens": 4}"#];
        let (code, out) =
            ferry(&dev, &args.into_iter().chain(["--webhook", url, "--wait", "20", "--json"]).collect::<Vec<_>>());
        assert_eq!(code, 0, "{out}");
        let job: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(job["status"], "succeeded", "{out}");
        (job["id"].as_str().unwrap().to_string(), started.elapsed())
    };
    let (first, _) = run(&url);
    seen.recv_timeout(Duration::from_secs(20)).expect("the delivery connected");
    // Its try now hangs (for the 15 s timeout); the next job runs as fast as the first.
    let (_, took) = run(&url);
    assert!(took < Duration::from_secs(10), "the second job took {took:?}");
    let (code, list) = ferry(&dev, &["webhooks", "list", &first]);
    assert_eq!(code, 0, "{list}");
    assert!(list.contains("pending"), "the hanging try is still in flight: {list}");
}

/// `ferry dev --handler ID=COMMAND`: the command split as a shell would, run by the executor
/// processes `ferry dev` launches, from the directory `ferry dev` was started in (the script's
/// path is relative); `ferry submit --follow` shows its progress and its report.
#[test]
fn dev_runs_a_handler_given_on_the_command_line() {
    let dev = start_dev(&["--handler", "agent=python3 '../examples/handlers/research_agent.py'"]);
    let (code, out) = ferry(&dev, &["models"]);
    assert!(code == 0 && out.contains("agent") && out.contains("handler"), "{out}");
    let input = r#"{"question": "How do ferries cross rivers?",
        "sources": [{"title": "notes", "text": "Ferries cross rivers on cables. Boats float."}]}"#;
    let (code, out) = ferry(&dev, &["submit", "--model", "agent", "--input", input, "--follow", "--ws-url", &dev.ws]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("step 5/5: writing the report"), "its logs are followed: {out}");
    assert!(out.contains("# How do ferries cross rivers?"), "its report is printed: {out}");
    assert!(out.contains("1. Ferries cross rivers on cables."), "{out}");
}

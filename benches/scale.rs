//! Scale from zero on `ferry dev`: from submit to the first token with no executor
//! running (the dispatcher launches an executor process, which loads the model, claims
//! the job and generates), split into launch, model load and first token; beside it the
//! same job on the warm executor that is left behind. Rounds alternate cold and warm and
//! wait for the pool to return to zero processes between rounds.
//!
//! Run: `bash benches/scale.sh` (builds the release executor, then this bench). Env:
//! ROUNDS [10], FERRY_EXECUTOR_BIN (the executor binary; required), BENCH_MODEL
//! [tiny|small]: `small` is a ~20M-parameter random Llama (80 MB of f32 weights) so the
//! model load is visible.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_cli::client::Client;
use ferry_cli::server::{self, Mode};
use ferry_cli::stack::{self, ScaleOptions};
use ferry_core::job::{Job, JobId};
use ferry_core::pool::{PoolConfig, Pools};
use ferry_core::progress::EventBody;

/// One measured job, in ms from its creation.
#[derive(Debug, Clone, Copy)]
struct Split {
    /// Submit -> the executor claims it (dispatcher tick, process start, executor init).
    launch: f64,
    /// Model load (the executor's "loading model" to "model loaded" log events; 0 if loaded).
    load: f64,
    /// Model loaded (or claim, when warm) -> first token event.
    first_token: f64,
    /// Submit -> first token.
    total: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let program = std::env::var_os("FERRY_EXECUTOR_BIN").map(PathBuf::from).expect(
        "set FERRY_EXECUTOR_BIN to a release ferry-executor (benches/scale.sh builds it: cargo build --release -p ferry-executor)",
    );
    let which = std::env::var("BENCH_MODEL").unwrap_or_else(|_| "small".into());
    let dir = std::env::temp_dir().join(format!("ferry-scale-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model_dir = dir.join("model");
    let cfg = match which.as_str() {
        "tiny" => ferry_executor::tiny::TINY_CONFIG,
        _ => ferry_executor::tiny::TinyConfig {
            hidden_size: 512,
            intermediate_size: 1376,
            num_hidden_layers: 8,
            num_attention_heads: 8,
            num_key_value_heads: 8,
            max_position_embeddings: 1024,
        },
    };
    ferry_executor::tiny::write_llama(&model_dir, 3, cfg).unwrap();

    let ((listener, addr), (ports_listener, ports_addr)) = ferry_benches::dev_listeners().await;
    let mut opts = ferry_benches::dev_options(&model_dir);
    opts.pools =
        Pools::from_list(vec![PoolConfig { max_tasks: 1, idle_timeout_s: 2, ..PoolConfig::named("cpu") }]).unwrap();
    opts.scale = Some(ScaleOptions {
        // The dispatcher Lambda reacts to the table's stream within about a second; ferry
        // dev polls at this interval instead.
        reconcile_every: Duration::from_millis(200),
        log_dir: dir.join("logs"),
        program: Some((program, vec![])),
        ..ScaleOptions::new(format!("http://{ports_addr}"))
    });
    let st = std::sync::Arc::new(stack::build(&opts).await.unwrap());
    tokio::spawn(server::serve(listener, Mode::Api(st.api.clone()), std::future::pending()));
    let ports = st.served_ports().expect("a scaling stack serves its ports");
    tokio::spawn(server::serve_ports(ports_listener, ports, std::future::pending()));
    let stop = ferry_executor::worker::Shutdown::default();
    let running = {
        let (st, stop) = (st.clone(), stop.clone());
        tokio::spawn(async move { st.run(stop).await })
    };
    let client = Client::new(&format!("http://{addr}"), stack::DEV_API_KEY);
    let launcher = st.launcher.clone().unwrap();

    let run = async |warm_expected: bool| -> Split {
        let body = serde_json::json!({"model": "bench", "input": {"prompt": "the ferry crosses"},
            "params": {"max_new_tokens": 8}});
        let id: JobId = client.submit(&body, None, None).await.unwrap().body.id;
        let started = Instant::now();
        let job: Job = loop {
            let j = st.jobs().get(&id).await.unwrap().unwrap();
            if j.status.is_terminal() {
                break j;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "job did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let events = st.root.ports.events.read(&job.id, 0, job.last_seq, 1000).await.unwrap();
        let at = |pred: &dyn Fn(&EventBody) -> bool| events.iter().find(|e| pred(&e.body)).map(|e| e.time);
        let loading = at(&|b| matches!(b, EventBody::Log { message, .. } if message.starts_with("loading model")));
        let loaded = at(&|b| matches!(b, EventBody::Log { message, .. } if message.starts_with("model loaded")));
        let token = at(&|b| matches!(b, EventBody::Token { .. })).expect("a token event");
        let claim = job.started_at.unwrap();
        let created = job.created_at;
        assert_eq!(loading.is_none(), warm_expected, "cold rounds load the model, warm ones do not");
        let ms = |a: u64, b: u64| b.saturating_sub(a) as f64;
        Split {
            launch: ms(created, claim),
            load: match (loading, loaded) {
                (Some(a), Some(b)) => ms(a, b),
                _ => 0.0,
            },
            first_token: ms(loaded.unwrap_or(claim).max(claim), token),
            total: ms(created, token),
        }
    };

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for round in 0..rounds {
        // Back to zero processes first.
        let t = Instant::now();
        while !launcher.pids("cpu").is_empty() {
            assert!(t.elapsed() < Duration::from_secs(60), "the pool did not scale to zero");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let c = run(false).await;
        let w = run(true).await;
        eprintln!("round {round}: cold {c:?}\n          warm {w:?}");
        cold.push(c);
        warm.push(w);
    }
    let col = |v: &[Split], f: fn(&Split) -> f64| median(v.iter().map(f).collect());
    println!("scale from zero, {rounds} rounds, model {which}, medians in ms (job created -> first token event)");
    println!("| | launch (submit -> claim) | model load | load/claim -> first token | submit -> first token |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, v) in [("cold (no executor)", &cold), ("warm executor", &warm)] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
            col(v, |s| s.launch),
            col(v, |s| s.load),
            col(v, |s| s.first_token),
            col(v, |s| s.total)
        );
    }
    println!(
        "cold/warm ratio of submit -> first token: {:.1}",
        col(&cold, |s| s.total) / col(&warm, |s| s.total).max(1.0)
    );
    stop.trigger();
    let _ = running.await;
    launcher.terminate_all(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

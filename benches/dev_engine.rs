//! The engine through `ferry dev`, the whole path (HTTP submit, queue, dispatcher, executor
//! processes, store): aggregate decode tokens/s with 1, 8 and 32 jobs submitted at once,
//! each 128 greedy tokens of the 24M-parameter Llama shape (random weights), with batching
//! on (the default, 32 sequences an engine) and off (`--max-batch-sequences 1`: each
//! executor serves one job at a time, and the pool's jobs_per_task is 1, so the dispatcher
//! launches up to `max_tasks` 4 of them, today's shape before the engine). Beside the
//! aggregate: per-job inter-token latency p50/p99 at 32 jobs, from the token events' times.
//!
//! Executors are warmed before measuring (a burst of 4 jobs, so all the processes a mode
//! would launch are up with the model loaded): this measures serving, not cold starts
//! (benches/scale.sh measures those).
//!
//! Run: `bash benches/engine.sh` (builds the release executor). Env: FERRY_EXECUTOR_BIN
//! (required), DEV_ROUNDS [1] (rounds within one run).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_cli::client::Client;
use ferry_cli::server::{self, Mode};
use ferry_cli::stack::{self, ScaleOptions};
use ferry_core::job::{JobId, JobStatus};
use ferry_core::pool::{PoolConfig, Pools};
use ferry_core::progress::EventBody;

const NEW_TOKENS: u32 = 128;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// One burst's figures.
struct Burst {
    tokens: u64,
    seconds: f64,
    /// Gaps between consecutive token events of each job, ms.
    gaps: Vec<f64>,
}

async fn burst(st: &stack::Stack, client: &Client, jobs: usize) -> Burst {
    let started = Instant::now();
    let mut ids = Vec::new();
    for prompt in ferry_benches::prompts(jobs) {
        let body = serde_json::json!({"model": "bench", "input": {"prompt": prompt},
            "params": {"max_new_tokens": NEW_TOKENS}});
        ids.push(client.submit(&body, None, None).await.expect("submit").body.id);
    }
    let mut finished = vec![None; jobs];
    while finished.iter().any(Option::is_none) {
        for (i, id) in ids.iter().enumerate() {
            if finished[i].is_none() {
                let j = st.jobs().get(id).await.unwrap().unwrap();
                if j.status.is_terminal() {
                    assert_eq!(j.status, JobStatus::Succeeded, "{:?}", j.error);
                    finished[i] = Some(j);
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the burst did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (mut tokens, mut gaps) = (0, Vec::new());
    for job in finished.into_iter().flatten() {
        let id: JobId = job.id;
        let events = st.root.ports.events.read(&id, 0, job.last_seq, 10_000).await.unwrap();
        let times: Vec<u64> =
            events.iter().filter(|e| matches!(e.body, EventBody::Token { .. })).map(|e| e.time).collect();
        tokens += times.len() as u64;
        gaps.extend(times.windows(2).map(|w| w[1].saturating_sub(w[0]) as f64));
    }
    Burst { tokens, seconds, gaps }
}

async fn mode(program: &Path, model_dir: &Path, dir: &Path, max_batch: Option<u32>) {
    let ((listener, addr), (ports_listener, ports_addr)) = ferry_benches::dev_listeners().await;
    let mut opts = ferry_benches::dev_options(&model_dir);
    // jobs_per_task unset: the engine's capacity (32, or 1 with batching off).
    opts.pools =
        Pools::from_list(vec![PoolConfig { max_tasks: 4, idle_timeout_s: 600, ..PoolConfig::named("cpu") }]).unwrap();
    opts.worker.concurrency = 0;
    opts.worker.max_batch_sequences = max_batch.map(|n| n as usize);
    opts.scale = Some(ScaleOptions {
        reconcile_every: Duration::from_millis(200),
        log_dir: dir.join(format!("logs-{}", max_batch.unwrap_or(0))),
        program: Some((program.to_path_buf(), vec![])),
        ..ScaleOptions::new(format!("http://{ports_addr}"))
    });
    let st = std::sync::Arc::new(stack::build(&opts).await.unwrap());
    let stop_serving = ferry_executor::worker::Shutdown::default();
    tokio::spawn(server::serve(listener, Mode::Api(st.api.clone()), {
        let s = stop_serving.clone();
        async move { s.wait().await }
    }));
    let ports = st.served_ports().expect("a scaling stack serves its ports");
    tokio::spawn(server::serve_ports(ports_listener, ports, {
        let s = stop_serving.clone();
        async move { s.wait().await }
    }));
    let stop = ferry_executor::worker::Shutdown::default();
    let running = {
        let (st, stop) = (st.clone(), stop.clone());
        tokio::spawn(async move { st.run(stop).await })
    };
    let client = Client::new(&format!("http://{addr}"), stack::DEV_API_KEY);
    let name = if max_batch == Some(1) { "batching off (--max-batch-sequences 1)" } else { "batching on" };
    // Warm: every executor this mode launches is up with its model.
    burst(&st, &client, 4).await;
    let mut one = 0.0;
    for jobs in [1usize, 8, 32] {
        let mut b = burst(&st, &client, jobs).await;
        let rate = b.tokens as f64 / b.seconds;
        if jobs == 1 {
            one = rate;
        }
        let itl = if jobs == 32 {
            format!(
                r#","itl_p50_ms":{:.1},"itl_p99_ms":{:.1}"#,
                percentile(&mut b.gaps, 0.5),
                percentile(&mut b.gaps, 0.99)
            )
        } else {
            String::new()
        };
        println!(
            r#"{{"bench":"dev_engine","mode":"{name}","jobs":{jobs},"tokens":{},"seconds":{:.2},"tokens_per_s":{rate:.1},"x_one_job":{:.2},"executors":{}{itl}}}"#,
            b.tokens,
            b.seconds,
            rate / one,
            st.launcher.as_ref().unwrap().pids("cpu").len()
        );
    }
    stop.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(60), running).await;
    stop_serving.trigger();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let program = std::env::var_os("FERRY_EXECUTOR_BIN").map(PathBuf::from).expect(
        "set FERRY_EXECUTOR_BIN to a release ferry-executor (benches/engine.sh builds it: cargo build --release -p ferry-executor)",
    );
    let rounds: usize = std::env::var("DEV_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let dir = std::env::temp_dir().join(format!("ferry-dev-engine-bench-{}", std::process::id()));
    let model_dir = dir.join("model");
    // The shape of benches/engine.rs.
    ferry_executor::tiny::write_llama(&model_dir, 1, ferry_benches::SMALL_H512_L8).unwrap();
    for _ in 0..rounds {
        mode(&program, &model_dir, &dir, None).await;
        mode(&program, &model_dir, &dir, Some(1)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

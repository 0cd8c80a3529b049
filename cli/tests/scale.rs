//! Fault tests with real executor processes: `ferry dev`'s stack (in this process, serving
//! its ports on loopback) launches `ferry executor` processes through the dispatcher, and
//! the tests kill them. Each test is bounded in time and asserts what users rely on: one
//! terminal state and one result per job, retries with the next attempt, a progress stream
//! without gaps or repeats, and the pool back at zero processes when the work is done.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_cli::client::Client;
use ferry_cli::server::{self, Mode};
use ferry_cli::stack::{self, ScaleOptions, Stack, StackOptions};
use ferry_core::job::{Job, JobId, JobStatus};
use ferry_core::pool::{PoolConfig, Pools};
use ferry_core::progress::{EventBody, ProgressEvent};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

struct Running {
    stack: Arc<Stack>,
    stop: ferry_executor::worker::Shutdown,
    client: Client,
    _dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.trigger();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// The stack with one pool `cpu` of up to `max_tasks` executor processes, a 3 s lease, a
/// watchdog every 500 ms, and `models` (`ID=DIR`) besides the demo catalog's.
async fn start(max_tasks: u32, max_attempts: u32, models: Vec<String>) -> Running {
    let dir = std::env::temp_dir().join(format!("ferry-scale-test-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ports_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ports_addr = ports_listener.local_addr().unwrap();
    let mut opts = StackOptions::embedded();
    opts.config.max_attempts = max_attempts;
    opts.config.rate_limit_per_s = 0.0;
    opts.models = models;
    opts.worker.grace_period = Duration::from_secs(1);
    opts.pools =
        Pools::from_list(vec![PoolConfig { max_tasks, idle_timeout_s: 2, ..PoolConfig::named("cpu") }]).unwrap();
    opts.scale = Some(ScaleOptions {
        reconcile_every: Duration::from_millis(200),
        watchdog_every: Duration::from_millis(500),
        cancel_grace: Duration::from_secs(3),
        lease_s: 3,
        visibility_s: 5,
        log_dir: dir.join("logs"),
        program: Some((PathBuf::from(FERRY), vec!["executor".into()])),
        ..ScaleOptions::new(format!("http://{ports_addr}"))
    });
    if !opts.models.is_empty() {
        // `--model` replaces the demo catalog: keep the demo Llama too.
        opts.models.push("tiny-llama=".to_string() + &demo_llama(&dir));
    }
    let stack = Arc::new(stack::build(&opts).await.expect("stack builds"));
    let stop = ferry_executor::worker::Shutdown::default();
    tokio::spawn({
        let (stack, stop) = (stack.clone(), stop.clone());
        async move { stack.run(stop).await }
    });
    tokio::spawn(server::serve(listener, Mode::Api(stack.api.clone()), std::future::pending()));
    let ports = stack.served_ports().expect("a scaling stack serves its ports");
    tokio::spawn(server::serve_ports(ports_listener, ports, std::future::pending()));
    let client = Client::new(&format!("http://{addr}"), stack::DEV_API_KEY);
    Running { stack, stop, client, _dir: dir }
}

fn demo_llama(dir: &std::path::Path) -> String {
    let d = dir.join("tiny-llama");
    ferry_executor::testing::write_tiny_llama(&d, 42).unwrap();
    d.display().to_string()
}

/// A slow Llama: the tiny one with a 4096-token context, so a job of 3000 tokens runs for
/// seconds (long enough to kill its executor in the middle).
fn slow_llama(dir: &std::path::Path) -> String {
    let d = dir.join("slow-llama");
    // Wider and deeper than the tiny model, so that 3000 tokens take seconds even on the
    // batching engine (the tiny shape decodes them within the 1 s grace period).
    let cfg = ferry_executor::testing::TinyConfig {
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 4,
        max_position_embeddings: 4096,
        ..ferry_executor::testing::TINY_CONFIG
    };
    ferry_executor::testing::write_llama(&d, 7, cfg).unwrap();
    format!("slow-llama={}", d.display())
}

impl Running {
    async fn submit(&self, model: &str, max_new_tokens: u32) -> JobId {
        let body = serde_json::json!({"model": model, "input": {"prompt": "once upon a time"},
            "params": {"max_new_tokens": max_new_tokens}});
        self.client.submit(&body, None, None).await.expect("submit").body.id
    }

    async fn job(&self, id: &JobId) -> Job {
        self.stack.root.ports.jobs.get(id).await.unwrap().expect("job exists")
    }

    async fn events(&self, job: &Job) -> Vec<ProgressEvent> {
        let mut out = Vec::new();
        let mut after = 0;
        while after < job.last_seq {
            let page = self.stack.root.ports.events.read(&job.id, after, job.last_seq, 500).await.unwrap();
            after = page.last().map_or(job.last_seq, |e| e.seq);
            out.extend(page);
        }
        out
    }

    async fn wait_until(&self, what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pids(&self) -> Vec<(String, u32)> {
        self.stack.launcher.as_ref().unwrap().pids("cpu")
    }

    /// The job's executor process (by the executor id on the job).
    fn pid_of(&self, job: &Job) -> u32 {
        let id = job.executor_id.as_deref().expect("running job has an executor");
        self.pids().into_iter().find(|(e, _)| e == id).map(|(_, p)| p).expect("its process is ours")
    }
}

/// A slow job, running on an executor with its tokens streaming; then `sig` to that
/// executor and the job followed to its end. Returns (the job when signalled, at its end).
async fn signal_mid_job(sig: &str, max_attempts: u32) -> (Running, PathBuf, Job, Job) {
    let dir = std::env::temp_dir().join(format!("ferry-scale-models-{}", ulid::Ulid::new()));
    let r = start(2, max_attempts, vec![slow_llama(&dir)]).await;
    let id = r.submit("slow-llama", 3000).await;
    r.wait_until("tokens", Duration::from_secs(30), async || {
        let j = r.job(&id).await;
        j.status == JobStatus::Running && j.last_seq > 20
    })
    .await;
    let before = r.job(&id).await;
    signal(r.pid_of(&before), sig);
    r.wait_until("the job to finish", Duration::from_secs(90), async || r.job(&id).await.status.is_terminal()).await;
    let end = r.job(&id).await;
    (r, dir, before, end)
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

/// Seqs 1..=last_seq, each once.
fn assert_gap_free(events: &[ProgressEvent], last_seq: u64) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=last_seq).collect::<Vec<_>>(), "progress seqs without gaps or repeats");
}

fn results(events: &[ProgressEvent]) -> usize {
    events.iter().filter(|e| matches!(e.body, EventBody::Result { .. })).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_job_completes_on_another_executor() {
    // Running, with tokens streamed: then kill its executor without warning.
    let (r, dir, victim, end) = signal_mid_job("-KILL", 3).await;
    assert_eq!((end.status, end.attempt), (JobStatus::Succeeded, 2), "{:?}", end.error);
    assert_ne!(end.executor_id, victim.executor_id, "another executor finished it");
    let events = r.events(&end).await;
    assert_gap_free(&events, end.last_seq);
    assert_eq!(results(&events), 1, "one result");
    let statuses: Vec<(JobStatus, u32)> = events
        .iter()
        .filter_map(|e| match e.body {
            EventBody::Status { status, attempt } => Some((status, attempt)),
            _ => None,
        })
        .collect();
    assert!(statuses.contains(&(JobStatus::Queued, 2)), "the retry is announced: {statuses:?}");
    assert_eq!(statuses.last(), Some(&(JobStatus::Succeeded, 2)));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_job_releases_it_to_another_executor() {
    let (r, dir, first, end) = signal_mid_job("-TERM", 3).await;
    // Released, not lost: the same attempt resumes elsewhere.
    assert_eq!((end.status, end.attempt), (JobStatus::Succeeded, 1), "{:?}", end.error);
    assert_ne!(end.executor_id, first.executor_id);
    let events = r.events(&end).await;
    assert_gap_free(&events, end.last_seq);
    assert_eq!(results(&events), 1);
    assert!(
        events.iter().any(|e| matches!(&e.body, EventBody::Log { message, .. } if message.contains("released"))),
        "the release is reported"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_jobs_while_executors_are_killed_at_random() {
    let r = Arc::new(start(4, 5, vec![]).await);
    let mut ids = Vec::new();
    for _ in 0..200 {
        ids.push(r.submit("tiny-llama", 24).await);
    }
    // Kill a random executor every 300 ms for 6 s, while the burst is worked off.
    let killer = {
        let r = r.clone();
        tokio::spawn(async move {
            let mut killed = 0;
            for i in 0..20u64 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let pids = r.pids();
                if !pids.is_empty() {
                    let (_, pid) = pids[(i as usize * 7919) % pids.len()];
                    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                    killed += 1;
                }
            }
            killed
        })
    };
    let killed = killer.await.unwrap();
    assert!(killed > 3, "executors were killed ({killed})");
    r.wait_until("every job to end", Duration::from_secs(150), async || {
        for id in &ids {
            if !r.job(id).await.status.is_terminal() {
                return false;
            }
        }
        true
    })
    .await;
    let mut retried = 0;
    for id in &ids {
        let j = r.job(id).await;
        let events = r.events(&j).await;
        assert_gap_free(&events, j.last_seq);
        // The record's terminal state is exactly-once (compare-and-set), and its final
        // `status` event is written in the same transaction: exactly one, whoever ended it
        // and whatever was killed when.
        let finals = events.iter().filter(|e| e.body.is_final()).count();
        assert_eq!(finals, 1, "one terminal status event for {id}");
        match j.status {
            JobStatus::Succeeded => {
                assert!(j.output.is_some(), "{id} succeeded with its output");
                // The result event is written with the success: exactly one.
                assert_eq!(results(&events), 1, "{id}: one result event in {} attempt(s)", j.attempt);
            }
            JobStatus::Failed => {
                assert_eq!(results(&events), 0);
                assert_eq!(j.error.as_ref().unwrap().kind, "executor_lost", "{id}: {:?}", j.error);
            }
            other => panic!("{id} ended {other}"),
        }
        retried += (j.attempt > 1) as u32;
    }
    assert!(retried > 0, "some jobs lost their executor and were retried");
    // Once the work is done the executors exit (2 s idle) and the pool is back to zero (the
    // killed executors' messages count as in-flight backlog until their 5 s visibility
    // lapses and an executor acknowledges them as stale).
    r.wait_until("the pool to scale to zero", Duration::from_secs(60), async || r.pids().is_empty()).await;
    let pools = r.client.pools().await.unwrap().body;
    let cpu = pools.pools.iter().find(|p| p.name == "cpu").unwrap();
    assert_eq!((cpu.desired, cpu.backlog.visible, cpu.backlog.in_flight), (0, 0, 0));
}

//! The API handler alone, in-process: `Api::handle` on the embedded stack, no HTTP server,
//! no sockets. `cargo bench -p ferry-benches --bench handler` prints a markdown table.
//!
//! Three operations run side by side, interleaved batch by batch so drift (frequency,
//! other load) hits them alike:
//! - `GET /healthz`: routing and response building only, the floor;
//! - `POST /v1/jobs` with a params value out of range: auth, content checks and JSON
//!   parsing, then a 422 from validation, no store write;
//! - `POST /v1/jobs` valid: the same plus the embedded store's create and the queue send, 202.
//!
//! Per operation: the median over batches of the batch mean (the headline number), the
//! range of batch means, per-op p50/p99/max from one `Instant` read per op (the per-op
//! numbers include that read; its cost is printed), and ops/s from the median batch mean.
//!
//! The embedded store and queue keep every job submitted (nothing consumes them), so they
//! grow by `(batches + 1) * iters` jobs over a run. The store's job map grows by rehashing
//! under its one mutex: at 7/8 of each power-of-two capacity (14337, 28673, 57345, 114689
//! jobs, ...) one submit stalls for milliseconds to tens of milliseconds. That shows in the
//! per-op max (and in the batch-mean range), not in the medians.
//!
//! Knobs (environment): `FERRY_BENCH_ITERS` (ops per batch, default 10000),
//! `FERRY_BENCH_BATCHES` (default 20), `FERRY_BENCH_LOG=1` installs the CLI's log
//! subscriber (text on stderr, level from `RUST_LOG`, default info) so each request also
//! formats its log line as `ferry dev` does; redirect stderr (`2>/dev/null`) then.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_cli::stack::{self, DEV_API_KEY, StackOptions};
use ferry_core::config::Config;
use ferry_http::Api;
use http::{Method, Request, StatusCode};

const SUBMIT_BODY: &str = r#"{"model":"tiny-llama","input":{"prompt":"hello"},"params":{"max_new_tokens":16}}"#;
/// Well-formed, but `max_new_tokens` must be at least 1: a 422 from validation.
const INVALID_BODY: &str = r#"{"model":"tiny-llama","input":{"prompt":"hello"},"params":{"max_new_tokens":0}}"#;

struct Op {
    name: &'static str,
    expect: StatusCode,
    make: fn() -> Request<Bytes>,
    /// Mean ns/op of each batch.
    batch_means: Vec<f64>,
    /// Every op's latency in ns (one `Instant` read apart).
    samples: Vec<u64>,
    wrong_status: u64,
}

impl Op {
    fn new(name: &'static str, expect: StatusCode, make: fn() -> Request<Bytes>) -> Op {
        Op { name, expect, make, batch_means: Vec::new(), samples: Vec::new(), wrong_status: 0 }
    }
}

fn healthz() -> Request<Bytes> {
    Request::builder().method(Method::GET).uri("/healthz").body(Bytes::new()).unwrap()
}

fn post_jobs(body: &'static str) -> Request<Bytes> {
    Request::builder()
        .method(Method::POST)
        .uri("/v1/jobs")
        .header("authorization", format!("Bearer {DEV_API_KEY}"))
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Bytes::from_static(body.as_bytes()))
        .unwrap()
}

fn submit() -> Request<Bytes> {
    post_jobs(SUBMIT_BODY)
}

fn invalid() -> Request<Bytes> {
    post_jobs(INVALID_BODY)
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name} must be a positive integer, got {v:?}")),
        Err(_) => default,
    }
}

/// Runs one batch: requests are built beforehand, so only `handle` (and the drop of its
/// response) is timed.
async fn run_batch(api: &Api, op: &mut Op, iters: usize, record: bool) {
    let reqs: Vec<Request<Bytes>> = (0..iters).map(|_| (op.make)()).collect();
    let mut stamps: Vec<Instant> = Vec::with_capacity(iters + 1);
    let mut wrong = 0u64;
    stamps.push(Instant::now());
    for req in reqs {
        let resp = api.handle(req).await;
        if resp.status() != op.expect {
            wrong += 1;
        }
        drop(black_box(resp));
        stamps.push(Instant::now());
    }
    if !record {
        return;
    }
    op.wrong_status += wrong;
    let total = stamps[iters].duration_since(stamps[0]);
    op.batch_means.push(total.as_nanos() as f64 / iters as f64);
    op.samples.extend(stamps.windows(2).map(|w| w[1].duration_since(w[0]).as_nanos() as u64));
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// The cost of one `Instant::now()`, included in each per-op sample.
fn instant_cost() -> f64 {
    let n = 1_000_000;
    let t0 = Instant::now();
    let mut last = t0;
    for _ in 0..n {
        last = black_box(Instant::now());
    }
    last.duration_since(t0).as_nanos() as f64 / n as f64
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let iters = env_usize("FERRY_BENCH_ITERS", 10_000).max(1);
    let batches = env_usize("FERRY_BENCH_BATCHES", 20).max(1);
    let log = std::env::var("FERRY_BENCH_LOG").is_ok_and(|v| v == "1");
    if log {
        ferry_core::telemetry::init(false);
    }

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let opts =
        StackOptions { config: Config { rate_limit_per_s: 0.0, ..Default::default() }, ..StackOptions::embedded() };
    let stack = rt.block_on(stack::build(&opts)).expect("building the embedded stack");
    let api: Arc<Api> = stack.api.clone();

    let mut ops = [
        Op::new("GET /healthz (floor)", StatusCode::OK, healthz),
        Op::new("POST /v1/jobs → 422 (validation)", StatusCode::UNPROCESSABLE_ENTITY, invalid),
        Op::new("POST /v1/jobs → 202 (submit)", StatusCode::ACCEPTED, submit),
    ];

    let started = Instant::now();
    rt.block_on(async {
        // Warm-up: one unrecorded batch of each.
        for op in ops.iter_mut() {
            run_batch(&api, op, iters, false).await;
        }
        for b in 0..batches {
            // Rotate the order each batch so no op always runs right after another.
            for k in 0..ops.len() {
                let i = (b + k) % ops.len();
                run_batch(&api, &mut ops[i], iters, true).await;
            }
        }
    });
    let elapsed = started.elapsed();
    let now_cost = instant_cost();

    let floor = median(&mut ops[0].batch_means.clone());
    println!();
    println!(
        "ferry handler bench: {batches} batches × {iters} ops per operation (+1 warm-up batch), \
         current-thread tokio runtime, embedded stack, rate limit off, logging {}",
        if log { "on (telemetry::init, RUST_LOG or info)" } else { "off (no subscriber)" }
    );
    println!();
    println!(
        "| operation | median ns/op (batch means) | batch mean min – max | per-op p50 | per-op p99 | per-op max | ops/s (1 thread) | × floor |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = false;
    for op in ops.iter_mut() {
        let med = median(&mut op.batch_means);
        let (lo, hi) = (op.batch_means[0], op.batch_means[op.batch_means.len() - 1]);
        op.samples.sort_unstable();
        let p50 = percentile(&op.samples, 50.0);
        let p99 = percentile(&op.samples, 99.0);
        let max = op.samples[op.samples.len() - 1];
        println!(
            "| {} | {} | {} – {} | {} | {} | {} | {:.0} | {:.1} |",
            op.name,
            fmt_ns(med),
            fmt_ns(lo),
            fmt_ns(hi),
            fmt_ns(p50 as f64),
            fmt_ns(p99 as f64),
            fmt_ns(max as f64),
            1e9 / med,
            med / floor
        );
        if op.wrong_status > 0 {
            failed = true;
            eprintln!(
                "error: {} answered {} responses with a status other than {}",
                op.name, op.wrong_status, op.expect
            );
        }
    }
    println!();
    println!(
        "Instant::now() ≈ {now_cost:.0} ns (inside every per-op sample and batch mean). \
         Jobs left in the embedded store and queue: {}. Wall time {:.1} s.",
        (batches + 1) * iters,
        Duration::as_secs_f64(&elapsed)
    );
    drop(stack);
    if failed {
        std::process::exit(1);
    }
}

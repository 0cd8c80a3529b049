//! Cold init of the Lambda binaries, locally: from process start to the first Runtime API
//! `GET /2018-06-01/runtime/invocation/next`, which is the moment Lambda's init phase ends
//! and the function is ready for its first event. A stand-in for the Runtime API listens on
//! loopback; each round spawns every binary once (interleaved, so drift hits them alike),
//! waits for its `/next` request, reads its peak resident memory (`VmHWM`) at that moment,
//! then kills it. Nothing leaves the machine: the AWS endpoint is a closed loopback port and
//! the credentials are static, so a binary that made an AWS call during init would fail
//! rather than reach a network.
//!
//! `benches/lambda.sh` builds the binaries and runs this with
//! `FERRY_LAMBDA_BINS="name=path,name=path,..."` (the first is the baseline of the ratio
//! column) and `ROUNDS` (default 30). The output is a markdown table.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NEXT: &str = "GET /2018-06-01/runtime/invocation/next ";

struct Bin {
    name: String,
    path: String,
    /// Milliseconds from spawn to the `/next` request, one per round.
    init_ms: Vec<f64>,
    /// Peak resident set at `/next`, KiB, one per round.
    hwm_kib: Vec<u64>,
}

fn main() {
    let spec = std::env::var("FERRY_LAMBDA_BINS").expect("FERRY_LAMBDA_BINS=name=path,... (see benches/lambda.sh)");
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let mut bins: Vec<Bin> = spec
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (name, path) = s.split_once('=').expect("each entry is name=path");
            Bin { name: name.into(), path: path.into(), init_ms: Vec::new(), hwm_kib: Vec::new() }
        })
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the Runtime API stand-in");
    let api = listener.local_addr().unwrap().to_string();
    // A port nothing listens on: any AWS call during init fails fast instead of leaving.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    // One warm-up round (page cache), not recorded.
    for round in 0..=rounds {
        for bin in &mut bins {
            let (ms, hwm) = one_cold_start(&bin.path, &api, &format!("http://{closed}"), &listener);
            if round > 0 {
                bin.init_ms.push(ms);
                bin.hwm_kib.push(hwm);
            }
        }
    }

    let base = median(&bins[0].init_ms);
    println!("| binary | init median (ms) | p10 | p90 | vs {} | peak RSS at /next (MiB) |", bins[0].name);
    println!("|---|---:|---:|---:|---:|---:|");
    for bin in &bins {
        let m = median(&bin.init_ms);
        let hwm = median(&bin.hwm_kib.iter().map(|&k| k as f64).collect::<Vec<_>>()) / 1024.0;
        println!(
            "| {} | {m:.2} | {:.2} | {:.2} | {:.2}x | {hwm:.1} |",
            bin.name,
            percentile(&bin.init_ms, 0.10),
            percentile(&bin.init_ms, 0.90),
            m / base
        );
    }
    println!("\n{rounds} rounds, interleaved; init = spawn to the first `{}` request.", NEXT.trim());
}

fn one_cold_start(path: &str, runtime_api: &str, aws_endpoint: &str, listener: &TcpListener) -> (f64, u64) {
    let start = Instant::now();
    let mut child = spawn(path, runtime_api, aws_endpoint);
    let (stream, elapsed) = accept_next(listener, &mut child, start, path);
    let hwm = peak_rss_kib(&child);
    check_next(stream, path);
    stop(&mut child);
    (elapsed.as_secs_f64() * 1e3, hwm)
}

/// Waits for the function's first connection; a binary that exits first (or takes over 30 s)
/// fails the bench instead of hanging it.
fn accept_next(listener: &TcpListener, child: &mut Child, start: Instant, path: &str) -> (TcpStream, Duration) {
    listener.set_nonblocking(true).unwrap();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let elapsed = start.elapsed();
                stream.set_nonblocking(false).unwrap();
                return (stream, elapsed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{path} exited ({status}) before calling the Runtime API: its init failed");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{path} did not call the Runtime API within 30 s");
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// The environment Lambda gives a function (the parts the runtime and the SDK read), and the
/// settings Ferry's Lambdas need to build (what infra/locals.tf sets).
fn spawn(path: &str, runtime_api: &str, aws_endpoint: &str) -> Child {
    Command::new(path)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", "ferry-bench")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/ferry-bench")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_SESSION_TOKEN", "test")
        .env("AWS_ENDPOINT_URL", aws_endpoint)
        .env("FERRY_TABLE", "ferry-jobs")
        .env("FERRY_QUEUE_URL", format!("{aws_endpoint}/000000000000/ferry-work"))
        .env("FERRY_DLQ_URL", format!("{aws_endpoint}/000000000000/ferry-work-dlq"))
        .env("FERRY_WS_MANAGEMENT_ENDPOINT", format!("{aws_endpoint}/prod"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {path}: {e}"))
}

/// The request must be the Runtime API's `next`: anything else means the binary did not
/// reach its event loop (a crash report to `/init/error`, say), and the number is not an init.
fn check_next(stream: TcpStream, path: &str) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with(NEXT), "{path} sent {line:?} instead of the first /next: its init failed");
    let _ = reader.get_mut().write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn peak_rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((s.len() - 1) as f64 * q).round() as usize;
    s[i]
}

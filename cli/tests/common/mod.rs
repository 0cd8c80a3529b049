//! Starting the real `ferry dev` binary for the CLI tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A running `ferry dev`; killed when dropped.
pub struct DevProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT` of the HTTP API.
    pub http: String,
    /// `ws://127.0.0.1:PORT` of the WebSocket gateway.
    pub ws: String,
    /// The token its Management API and progress driver take.
    pub dev_token: String,
    /// What it printed up to "Ctrl-C stops it.".
    pub startup: Vec<String>,
    /// Everything it prints after that (read on a thread, so its stdout never blocks).
    pub lines: Receiver<String>,
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferry dev --http 127.0.0.1:0 --ws 127.0.0.1:0 ARGS...`, once it is serving.
// The child is owned by `DevProcess`, whose Drop kills and waits for it.
#[allow(clippy::zombie_processes)]
pub fn spawn_dev(args: &[&str]) -> DevProcess {
    let mut child = Command::new(FERRY)
        .args(["dev", "--http", "127.0.0.1:0", "--ws", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ferry starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut startup = Vec::new();
    loop {
        let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("ferry dev starts up");
        let done = line.contains("Ctrl-C stops it.");
        startup.push(line);
        if done {
            break;
        }
    }
    let url_after = |marker: &str| {
        startup
            .iter()
            .find_map(|l| l.split(marker).nth(1).map(|rest| rest.split_whitespace().next().unwrap().to_string()))
            .unwrap_or_else(|| panic!("ferry dev printed no {marker:?} line: {startup:?}"))
    };
    let (http, ws) = (url_after("HTTP API on "), url_after("WebSocket API on "));
    let dev_token = url_after("as x-ferry-dev-token): ");
    DevProcess { child, http, ws, dev_token, startup, lines }
}

//! A moto server (the AWS emulator) for tests of the AWS adapters.
//!
//! One server per test process ([`shared`]) serves every test in it: tests isolate
//! themselves with unique table and queue names instead of resetting the emulator, so
//! they can run in parallel. Without moto for `python3` the AWS half of a suite is
//! skipped locally, but fails in CI (`CI=true`): a missing emulator must never pass
//! silently there.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What the messages call the emulator.
const MOTO: &str = "moto's server";
/// How long a fresh server may take to answer (a cold Python start imports a lot).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Ports are picked free and then released, so another process may grab one first.
const START_TRIES: u32 = 3;

/// The interpreter that runs [`LAUNCHER`]: the one moto is installed for (`.ci/run` checks
/// that `python3` imports the pinned moto).
const PYTHON: &str = "python3";
/// moto's server with DynamoDB's item operations isolated from each other: moto's own
/// TransactWriteItems can undo concurrent writes (see the script).
const LAUNCHER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/moto_server.py");

/// Runs moto under a small shell guard: the guard kills moto as soon as its stdin (a pipe
/// whose only writer is this process) closes. That covers every way the test process can
/// end, including a panic or SIGKILL, which a `Drop` on a static never would: statics
/// are not dropped at exit. The guard itself exits when moto does, so an early death of
/// moto (port taken) shows up as an exited child.
const GUARD: &str = r#"
exec 3<&0
"$0" "$2" -H 127.0.0.1 -p "$1" </dev/null &
moto=$!
( read -r _ <&3; kill "$moto" 2>/dev/null ) &
wait "$moto"
"#;

/// A running moto server, stopped when dropped.
#[derive(Debug)]
pub struct MotoServer {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub endpoint: String,
    /// Where moto's output goes while it starts, kept only when it fails to start; set
    /// `FERRY_MOTO_LOG` to a path to keep the whole request log of a run.
    pub log: PathBuf,
    child: Child,
    /// Held open to keep the guard's watcher waiting; closing it stops moto.
    stdin: Option<ChildStdin>,
}

impl MotoServer {
    /// Starts a private server on a free port and waits until it answers HTTP.
    /// Panics when it cannot; callers check [`installed`] first.
    pub fn start() -> MotoServer {
        let mut last_error = String::new();
        for _ in 0..START_TRIES {
            match Self::try_start() {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("could not start {MOTO} after {START_TRIES} tries: {last_error}");
    }

    fn try_start() -> Result<MotoServer, String> {
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let keep_log = std::env::var_os("FERRY_MOTO_LOG").map(PathBuf::from);
        let log = keep_log
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("ferry-moto-{}-{port}.log", std::process::id())));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg(PYTHON)
            .arg(port.to_string())
            .arg(LAUNCHER)
            .stdin(Stdio::piped())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("spawning {MOTO}: {e}"))?;
        let stdin = child.stdin.take();
        let mut server = MotoServer { endpoint: format!("http://127.0.0.1:{port}"), log, child, stdin };

        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        loop {
            // Our moto must still be running: if another server took the port between
            // `free_port` and moto's bind, moto exits and the answer was not its own.
            if answers_http(addr) && matches!(server.child.try_wait(), Ok(None)) {
                if keep_log.is_none() {
                    // moto keeps writing to the unlinked file, which vanishes with it:
                    // no log files pile up in the temp directory, run after run.
                    let _ = std::fs::remove_file(&server.log);
                }
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("{MOTO} exited with {status}; log: {}", server.log.display()));
            }
            if start.elapsed() > READY_TIMEOUT {
                // Dropping `server` stops it.
                return Err(format!("{MOTO} not answering after {READY_TIMEOUT:?}; log: {}", server.log.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // EOF on the guard's stdin makes it kill moto; then reap the guard.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `python3` has moto's server (what [`LAUNCHER`] runs), looked up without
/// importing it.
pub fn installed() -> bool {
    let probe = "import importlib.util as u, sys; sys.exit(not (u.find_spec('moto') and u.find_spec('flask')))";
    Command::new(PYTHON)
        .args(["-c", probe])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The server shared by every test in this process, started on first use. `None` when
/// moto is not installed, outside CI; in CI (`CI=true`) that case panics instead.
pub fn shared() -> Option<&'static MotoServer> {
    static SERVER: OnceLock<Option<MotoServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            if installed() {
                return Some(MotoServer::start());
            }
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "{MOTO} is not installed for {PYTHON}, and CI=true: AWS conformance tests must run in CI. \
                     Install it with: pip install 'moto[server]==5.2.5'"
                );
            }
            None
        })
        .as_ref()
}

/// A port that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether an HTTP server answers at `addr` (any status line counts: moto is up).
fn answers_http(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

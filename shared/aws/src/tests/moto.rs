//! The moto harness for this crate's tests: one `moto_server` per test process, started
//! on a free port the first time a test asks for it, and ended by a watcher shell when
//! the process exits. Without `moto_server` on PATH, [`backend`] returns None and tests
//! skip; `FERRY_TEST_MOTO_URL` points them at a server already running instead.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{AwsBackend, QueueUrls, bootstrap, sdk_config_for_endpoint};

/// The moto endpoint, or None when moto is unavailable (tests then skip).
pub(super) fn moto() -> Option<&'static str> {
    static ENDPOINT: OnceLock<Option<String>> = OnceLock::new();
    ENDPOINT.get_or_init(start_moto).as_deref()
}

fn start_moto() -> Option<String> {
    if let Ok(url) = std::env::var("FERRY_TEST_MOTO_URL") {
        return Some(url);
    }
    let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    // A watcher shell ends moto when this test process exits, so no server outlives it.
    let script = format!(
        "moto_server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
         while kill -0 {parent} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 1; done; kill $m 2>/dev/null",
        parent = std::process::id()
    );
    let has_moto = Command::new("sh")
        .args(["-c", "command -v moto_server"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_moto {
        eprintln!("moto_server not found: skipping ferry-aws emulator tests");
        return None;
    }
    Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).spawn().ok()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if http_ok(port) {
            return Some(format!("http://127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto_server did not answer on port {port} within 30 s");
}

/// Whether something answers HTTP on the port.
fn http_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /moto-api/ HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/")
}

/// A fresh table and queue for one test.
pub(super) async fn backend(test: &str) -> Option<(AwsBackend, QueueUrls)> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let endpoint = moto()?;
    let name = format!("{test}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
    let sdk = sdk_config_for_endpoint(endpoint).await;
    let urls = bootstrap(&sdk, &name, &name).await.expect("bootstrap");
    Some((AwsBackend::connect(&sdk, &name, &urls.queue_url).await, urls))
}

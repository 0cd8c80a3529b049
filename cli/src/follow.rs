//! Following a job over the WebSocket API: `ferry watch JOB_ID` and `ferry submit --follow`.
//!
//! [`follow`] connects (`?token=<api key>`), subscribes with `after_seq` = the highest
//! contiguous seq seen, and hands events to a callback in `seq` order, each exactly once:
//! a live event can overtake replayed ones (see `ferry_core::ws`), so events are kept by
//! seq, repeats dropped and gaps waited for. A dropped connection is reopened with backoff
//! (0.2 s doubling to 5 s, [`MAX_RECONNECTS`] tries in a row) and resubscribed from the
//! highest contiguous seq, so nothing is missed and nothing is seen twice. It returns the
//! job's terminal status: from a terminal `status` event, or from the `subscribed` reply
//! once every event up to its `last_seq` has been seen. [`Printer`] renders events for a
//! terminal.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_core::JobStatus;
use ferry_core::progress::{EventBody, ProgressEvent};
use ferry_core::publish::ServerMessage;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Reconnect attempts in a row before giving up.
pub const MAX_RECONNECTS: u32 = 10;
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Keep-alive ping: API Gateway closes connections idle for 10 minutes.
pub const PING_EVERY: Duration = Duration::from_secs(5 * 60);
/// A gap in seqs that lasts this long is re-requested (subscribe again from the gap).
const GAP_RETRY: Duration = Duration::from_secs(5);
/// After this long without an event, subscribe again to re-read the job's status: status
/// changes are published as events, but one whose publish failed after the job was written
/// (a store outage) is only visible on the job, and this bounds how long that goes unseen.
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// What to follow, and where.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// `ws://host:port/` (with or without a path).
    pub ws_url: String,
    pub api_key: String,
    pub job_id: String,
    /// Keep-alive ping interval ([`PING_EVERY`]).
    pub ping_every: Duration,
    /// Re-read the job's status after this long without an event ([`RECHECK_EVERY`]).
    pub recheck_every: Duration,
}

impl FollowOptions {
    pub fn new(ws_url: impl Into<String>, api_key: impl Into<String>, job_id: impl Into<String>) -> Self {
        FollowOptions {
            ws_url: ws_url.into(),
            api_key: api_key.into(),
            job_id: job_id.into(),
            ping_every: PING_EVERY,
            recheck_every: RECHECK_EVERY,
        }
    }
}

/// Reconnect state: failures in a row and the next delay.
struct Retry {
    failures: u32,
    backoff: Duration,
}

impl Retry {
    fn reset(&mut self) {
        self.failures = 0;
        self.backoff = BACKOFF_START;
    }
}

/// The WebSocket URL `ferry dev` serves next to an HTTP API URL: scheme http→ws
/// (https→wss), port + 1, path `/`. `http://127.0.0.1:8080` → `ws://127.0.0.1:8081/`.
pub fn default_ws_url(http_url: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(http_url).with_context(|| format!("--url {http_url} is not a URL"))?;
    let port = url.port_or_known_default().context("--url has no port")?;
    let scheme = match url.scheme() {
        "http" => "ws",
        "https" => "wss",
        s => bail!("--url has scheme {s}; expected http or https (or give --ws-url)"),
    };
    url.set_scheme(scheme).map_err(|_| anyhow::anyhow!("cannot derive a WebSocket URL from {http_url}"))?;
    url.set_port(Some(port.wrapping_add(1))).map_err(|_| anyhow::anyhow!("cannot set the port of {http_url}"))?;
    url.set_path("/");
    url.set_query(None);
    url.set_fragment(None);
    Ok(url.to_string())
}

/// `ws_url` with `token=<api key>` added to its query.
fn connect_url(ws_url: &str, api_key: &str) -> anyhow::Result<String> {
    let mut url = reqwest::Url::parse(ws_url).with_context(|| format!("--ws-url {ws_url} is not a URL"))?;
    match url.scheme() {
        "ws" | "wss" => {}
        s => bail!("--ws-url has scheme {s}; expected ws:// or wss://"),
    }
    url.query_pairs_mut().append_pair("token", api_key);
    Ok(url.to_string())
}

/// Seqs seen and events waiting for a gap to fill.
#[derive(Default)]
struct Seqs {
    /// Every seq up to this one has been handed out.
    contiguous: u64,
    /// Seqs above `contiguous` already received (and kept in `pending`).
    seen: BTreeSet<u64>,
    pending: BTreeMap<u64, ProgressEvent>,
}

impl Seqs {
    /// Takes an event; returns the events now ready, in order (none for a repeat).
    fn push(&mut self, e: ProgressEvent) -> Vec<ProgressEvent> {
        if e.seq <= self.contiguous || !self.seen.insert(e.seq) {
            return vec![];
        }
        self.pending.insert(e.seq, e);
        let mut ready = vec![];
        while let Some(e) = self.pending.remove(&(self.contiguous + 1)) {
            self.seen.remove(&e.seq);
            self.contiguous = e.seq;
            ready.push(e);
        }
        ready
    }
}

/// Why one connection ended.
enum Ended {
    /// The job reached this status.
    Done(JobStatus),
    /// The connection dropped (or could not be opened): try again.
    Dropped(String),
}

/// Follows a job until it ends; `on_event` gets each event once, in seq order. Returns the
/// terminal status. Errors: a refused key, an unknown job, too many failed reconnects.
pub async fn follow(opts: &FollowOptions, mut on_event: impl FnMut(&ProgressEvent)) -> anyhow::Result<JobStatus> {
    let url = connect_url(&opts.ws_url, &opts.api_key)?;
    let mut seqs = Seqs::default();
    let mut retry = Retry { failures: 0, backoff: BACKOFF_START };
    loop {
        match connection(&url, opts, &mut seqs, &mut on_event, &mut retry).await? {
            Ended::Done(status) => return Ok(status),
            Ended::Dropped(why) => {
                retry.failures += 1;
                if retry.failures > MAX_RECONNECTS {
                    bail!(
                        "no WebSocket connection to {} ({why}); gave up after {MAX_RECONNECTS} tries in a row",
                        opts.ws_url
                    );
                }
                tracing::info!(why, failures = retry.failures, "websocket dropped; reconnecting");
                tokio::time::sleep(retry.backoff).await;
                retry.backoff = (retry.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One connection: connect, subscribe, read until the job ends or the connection drops.
async fn connection(
    url: &str,
    opts: &FollowOptions,
    seqs: &mut Seqs,
    on_event: &mut impl FnMut(&ProgressEvent),
    retry: &mut Retry,
) -> anyhow::Result<Ended> {
    let mut ws = match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(WsError::Http(resp)) if resp.status() == 401 || resp.status() == 403 => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            bail!("the WebSocket API refused the API key ({}): {body}", resp.status());
        }
        Err(e) => return Ok(Ended::Dropped(format!("connecting to {}: {e}", opts.ws_url))),
    };
    let subscribe = |after: u64| {
        let mut msg = json!({"action": "subscribe", "job_id": opts.job_id});
        if after > 0 {
            msg["after_seq"] = after.into();
        }
        Message::Text(msg.to_string().into())
    };
    if let Err(e) = ws.send(subscribe(seqs.contiguous)).await {
        return Ok(Ended::Dropped(e.to_string()));
    }
    // Set by a `subscribed` reply with a terminal status: done once `last_seq` is reached.
    let mut ends_at: Option<(JobStatus, u64)> = None;
    let start = tokio::time::Instant::now();
    let mut ping = tokio::time::interval_at(start + opts.ping_every, opts.ping_every);
    let mut gap_check = tokio::time::interval(GAP_RETRY);
    let mut gap_seen_at: Option<u64> = None;
    let recheck = tokio::time::sleep(opts.recheck_every);
    tokio::pin!(recheck);
    loop {
        let msg = tokio::select! {
            msg = ws.next() => msg,
            _ = &mut recheck => {
                recheck.as_mut().reset(tokio::time::Instant::now() + opts.recheck_every);
                if let Err(e) = ws.send(subscribe(seqs.contiguous)).await {
                    return Ok(Ended::Dropped(e.to_string()));
                }
                continue;
            }
            _ = ping.tick() => {
                if let Err(e) = ws.send(Message::Text(json!({"action": "ping"}).to_string().into())).await {
                    return Ok(Ended::Dropped(e.to_string()));
                }
                continue;
            }
            _ = gap_check.tick() => {
                // A gap that has not filled since the last check: ask for a replay from it.
                let gap = (!seqs.pending.is_empty()).then_some(seqs.contiguous);
                if gap.is_some()
                    && gap == gap_seen_at
                    && let Err(e) = ws.send(subscribe(seqs.contiguous)).await
                {
                    return Ok(Ended::Dropped(e.to_string()));
                }
                gap_seen_at = gap;
                continue;
            }
        };
        let text = match msg {
            None => return Ok(Ended::Dropped("connection closed".into())),
            Some(Err(e)) => return Ok(Ended::Dropped(e.to_string())),
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map(|f| format!("closed: {} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                return Ok(Ended::Dropped(why));
            }
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
        };
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable WebSocket message");
                continue;
            }
        };
        match v["action"].as_str() {
            Some("subscribed") => {
                retry.reset();
                let status: Option<JobStatus> = serde_json::from_value(v["status"].clone()).ok();
                let last_seq = v["last_seq"].as_u64().unwrap_or(0);
                if let Some(status) = status.filter(JobStatus::is_terminal) {
                    if last_seq <= seqs.contiguous {
                        let _ = ws.close(None).await;
                        return Ok(Ended::Done(status));
                    }
                    ends_at = Some((status, last_seq));
                }
            }
            Some("event" | "events") => {
                recheck.as_mut().reset(tokio::time::Instant::now() + opts.recheck_every);
                let message: ServerMessage = match serde_json::from_value(v) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable event");
                        continue;
                    }
                };
                for event in message.into_events() {
                    for e in seqs.push(event) {
                        on_event(&e);
                        if let EventBody::Status { status, .. } = &e.body
                            && status.is_terminal()
                        {
                            let _ = ws.close(None).await;
                            return Ok(Ended::Done(*status));
                        }
                    }
                }
                if let Some((status, last)) = ends_at
                    && seqs.contiguous >= last
                {
                    let _ = ws.close(None).await;
                    return Ok(Ended::Done(status));
                }
            }
            Some("error") => {
                let e = &v["error"];
                let kind = e["type"].as_str().unwrap_or("error");
                let message = e["message"].as_str().unwrap_or("");
                if kind == "unauthorized" {
                    // "this connection is not registered; reconnect".
                    return Ok(Ended::Dropped(format!("{kind}: {message}")));
                }
                bail!("job {}: {kind}: {message}", opts.job_id);
            }
            _ => {}
        }
    }
}

/// Renders events for a terminal: token text inline on stdout, logs and errors on stderr,
/// percentages as a one-line bar on stderr, the result as pretty JSON on stdout; or, with
/// `json`, each event as one JSON line on stdout.
#[derive(Default)]
pub struct Printer {
    pub json: bool,
    /// Token text was written and no newline since.
    tokens_open: bool,
    /// A progress bar is on the current stderr line.
    bar_open: bool,
    /// Its width in characters (a shorter bar is padded over it).
    bar_width: usize,
    /// The `result` event was a reference to an output too large for a frame: the caller
    /// fetches it (`GET /v1/jobs/{id}/output`) and prints it after the stream.
    pub output_by_reference: bool,
}

impl Printer {
    pub fn new(json: bool) -> Self {
        Printer { json, ..Printer::default() }
    }

    pub fn event(&mut self, e: &ProgressEvent) {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        if self.json {
            let _ = writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default());
            let _ = out.flush();
            return;
        }
        if !matches!(e.body, EventBody::Percentage { .. }) && self.bar_open {
            let _ = writeln!(err);
            self.bar_open = false;
        }
        match &e.body {
            EventBody::Token { text, .. } => {
                let _ = write!(out, "{text}");
                let _ = out.flush();
                self.tokens_open = true;
            }
            EventBody::Log { level, message } => {
                let _ = writeln!(err, "[{level}] {message}");
            }
            EventBody::Percentage { percent, message } => {
                let bar = progress_bar(*percent, message.as_deref());
                let width = bar.chars().count();
                let pad = if self.bar_open { self.bar_width.saturating_sub(width) } else { 0 };
                let _ = write!(err, "\r{bar}{}", " ".repeat(pad));
                let _ = err.flush();
                self.bar_open = true;
                self.bar_width = width;
            }
            EventBody::Result { output, output_url, output_bytes } => {
                if std::mem::take(&mut self.tokens_open) {
                    let _ = writeln!(out);
                }
                match output_url {
                    Some(url) if output.is_null() => {
                        let bytes = output_bytes.unwrap_or(0);
                        let _ = writeln!(err, "[result] {bytes} bytes, stored: {url}");
                        self.output_by_reference = true;
                    }
                    _ => {
                        let _ = writeln!(out, "{}", serde_json::to_string_pretty(output).unwrap_or_default());
                    }
                }
            }
            EventBody::Error { error } => {
                let _ = writeln!(err, "error: {} ({})", error.message, error.kind);
            }
            EventBody::Status { status, attempt } => {
                if status.is_terminal() && std::mem::take(&mut self.tokens_open) {
                    let _ = writeln!(out);
                    let _ = out.flush();
                }
                let _ = writeln!(err, "[status] {status} (attempt {attempt})");
            }
        }
    }

    /// Ends open lines (after the last event).
    pub fn finish(&mut self) {
        if std::mem::take(&mut self.bar_open) {
            eprintln!();
        }
        if std::mem::take(&mut self.tokens_open) {
            println!();
        }
    }
}

/// `[#####.....] 50% message`, ten cells wide.
pub fn progress_bar(percent: f32, message: Option<&str>) -> String {
    let p = if percent.is_finite() { percent.clamp(0.0, 100.0) } else { 0.0 };
    let filled = ((p / 10.0).round() as usize).min(10);
    let mut s = format!("[{}{}] {:.0}%", "#".repeat(filled), ".".repeat(10 - filled), p);
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        s.push(' ');
        s.push_str(m);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::JobId;

    fn ev(seq: u64) -> ProgressEvent {
        let job_id: JobId = "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B".parse().unwrap();
        ProgressEvent { job_id, seq, time: 0, body: EventBody::Log { level: "info".into(), message: seq.to_string() } }
    }

    /// `wss://` speaks TLS (API Gateway's WebSocket URLs are wss://): the server sees a TLS
    /// ClientHello (a handshake record, 0x16 0x03) naming the host, not an HTTP request.
    #[tokio::test]
    async fn wss_urls_speak_tls() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            // One whole TLS record: a 5-byte header whose last two bytes are the length.
            let mut header = [0u8; 5];
            sock.read_exact(&mut header).await.unwrap();
            let mut hello = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
            sock.read_exact(&mut hello).await.unwrap();
            [&header[..], &hello].concat()
        });
        let url = connect_url(&format!("wss://localhost:{port}/prod"), "k").unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url)).await;
        assert!(!matches!(result, Ok(Ok(_))), "no TLS server there, so no connection");
        let hello = server.await.unwrap();
        assert_eq!(&hello[..2], [0x16, 0x03], "a TLS handshake record: {:?}", &hello[..hello.len().min(16)]);
        assert!(hello.windows(9).any(|w| w == b"localhost"), "the ClientHello carries the host name (SNI)");
    }

    #[test]
    fn seqs_are_ordered_and_deduplicated() {
        let mut s = Seqs::default();
        let got = |v: Vec<ProgressEvent>| v.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(got(s.push(ev(1))), vec![1]);
        assert_eq!(got(s.push(ev(3))), Vec::<u64>::new());
        assert_eq!(got(s.push(ev(3))), Vec::<u64>::new());
        assert_eq!(got(s.push(ev(1))), Vec::<u64>::new());
        assert_eq!(got(s.push(ev(2))), vec![2, 3]);
        assert_eq!(s.contiguous, 3);
        assert!(s.seen.is_empty() && s.pending.is_empty());
    }

    #[test]
    fn urls() {
        assert_eq!(default_ws_url("http://127.0.0.1:8080").unwrap(), "ws://127.0.0.1:8081/");
        assert_eq!(default_ws_url("http://localhost:9000/api/").unwrap(), "ws://localhost:9001/");
        assert_eq!(default_ws_url("https://example.com").unwrap(), "wss://example.com:444/");
        assert_eq!(connect_url("ws://127.0.0.1:8081", "k y&").unwrap(), "ws://127.0.0.1:8081/?token=k+y%26");
        assert_eq!(connect_url("wss://x.example/prod", "k").unwrap(), "wss://x.example/prod?token=k");
        assert!(connect_url("https://x.example/", "k").unwrap_err().to_string().contains("expected ws://"));
        assert!(default_ws_url("ftp://x/").is_err());
    }

    #[test]
    fn bars() {
        assert_eq!(progress_bar(50.0, Some("loading")), "[#####.....] 50% loading");
        assert_eq!(progress_bar(0.0, None), "[..........] 0%");
        assert_eq!(progress_bar(250.0, Some("")), "[##########] 100%");
    }
}

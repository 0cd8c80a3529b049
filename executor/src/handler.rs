//! A user's own program as a job (issue 16, per-job mode): one process per job, the job's
//! input as one JSON line on stdin, progress and output as JSON lines on stdout.
//!
//! [`run_per_job`] runs one job's process and turns what it writes into [`HandlerEvent`]s:
//! - each stdout line that is a JSON object with a `type` of `log` `{level, message}`,
//!   `percentage` `{percent, message?}`, `token` `{text}` or `output` `{output}` is that event
//!   (the last `output` is the job's output); any other stdout line is an info log;
//! - stderr lines are warn logs, each capped at [`MAX_LINE`] bytes and at most
//!   [`STDERR_LOGS_PER_S`] a second (the rest are counted, and the tail kept for the error).
//!
//! The process runs in its own process group with `FERRY_JOB_ID`, `FERRY_ATTEMPT`,
//! `FERRY_DEADLINE` (RFC 3339) and `FERRY_WORK_DIR` (a private scratch directory, removed
//! afterwards; the working directory stays the executor's). Exit 0 is success, 75 (`EX_TEMPFAIL`) a retryable failure, anything else (a
//! signal too) a failure with the last stderr lines as its message. A stop (cancel, timeout)
//! sends SIGTERM to the whole group, then SIGKILL after the grace period; and whatever the
//! end, the group is killed once the process is gone, so nothing it started outlives the job.
//!
//! Worker mode ([`WorkerProcess`]): one long-lived process per slot, requests and replies as
//! lines with the job's `id`; see its documentation.
//!
//! [`crate::handlers`] runs the catalog's handlers with it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::models::StopReason;

/// The longest stdout or stderr line kept (longer ones are cut at a character boundary).
pub const MAX_LINE: usize = 16 * 1024;
/// Stderr lines turned into log events per second; the rest are counted.
pub const STDERR_LOGS_PER_S: u32 = 20;
/// The stderr tail a failure's message keeps: this many lines, at most [`MAX_TAIL_BYTES`].
pub const TAIL_LINES: usize = 20;
pub const MAX_TAIL_BYTES: usize = 4 * 1024;
/// The exit status of a retryable failure (`EX_TEMPFAIL` in sysexits.h).
pub const EXIT_RETRY: i32 = 75;

/// How to start a handler.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerCommand {
    /// The program and its arguments (`["python3", "/app/agent.py"]`).
    pub argv: Vec<String>,
    /// Extra environment (the catalog entry's `env`).
    pub env: BTreeMap<String, String>,
    /// How long a stopped handler has between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// The job a process runs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobContext {
    pub job_id: String,
    pub attempt: u32,
    /// RFC 3339: when the job times out.
    pub deadline: String,
    /// Where the private scratch directory is made (`<work_root>/<job id>-<attempt>`).
    pub work_root: PathBuf,
}

/// What a handler reported.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerEvent {
    Log {
        level: String,
        message: String,
    },
    Percentage {
        percent: f32,
        message: Option<String>,
    },
    Token {
        text: String,
    },
    /// An output (the last one is the job's).
    Output(Value),
}

/// How a handler's run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerEnd {
    /// Exit 0, with the last `output` it wrote (`None`: it wrote none).
    Succeeded { output: Option<Value> },
    /// Exit 75: another attempt may succeed. `message`: the stderr tail.
    Retryable { message: String },
    /// Any other exit, or a signal. `message`: the stderr tail (or how it ended, without one).
    Failed { message: String },
    /// Stopped from outside (cancel, timeout); `partial`: the last `output` seen.
    Stopped { reason: StopReason, partial: Option<Value> },
}

/// Why a handler could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("the handler has no command")]
    NoCommand,
    #[error("the handler {program:?} could not be started: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("the handler's scratch directory could not be made: {0}")]
    WorkDir(std::io::Error),
    /// A worker-mode handler did not say it was ready.
    #[error("the worker did not start: {0}")]
    NotReady(String),
}

/// Reads one stdout line as an event.
pub fn parse_stdout_line(line: &str) -> HandlerEvent {
    let info = || HandlerEvent::Log { level: "info".into(), message: cap(line).to_string() };
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else { return info() };
    let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    match obj.get("type").and_then(Value::as_str) {
        Some("log") => {
            let level = match text("level").as_deref() {
                Some(l @ ("debug" | "info" | "warn" | "error")) => l.to_string(),
                _ => "info".into(),
            };
            HandlerEvent::Log { level, message: cap(&text("message").unwrap_or_default()).to_string() }
        }
        Some("percentage") => match obj.get("percent").and_then(Value::as_f64) {
            Some(p) if (0.0..=100.0).contains(&p) => {
                HandlerEvent::Percentage { percent: p as f32, message: text("message") }
            }
            _ => info(),
        },
        Some("token") => match text("text") {
            Some(t) => HandlerEvent::Token { text: t },
            None => info(),
        },
        Some("output") => match obj.get("output") {
            Some(v) => HandlerEvent::Output(v.clone()),
            None => info(),
        },
        _ => info(),
    }
}

/// `s` cut to at most [`MAX_LINE`] bytes, at a character boundary.
fn cap(s: &str) -> &str {
    cap_at(s, MAX_LINE)
}

fn cap_at(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

/// `command` as a process in a group of its own, its scratch directory `work_dir` given as
/// `FERRY_WORK_DIR` (its working directory stays the executor's, so that relative paths in
/// its command, `python3 agent.py` under `ferry dev`, mean what they meant where it was typed), its
/// three pipes taken, killed if dropped.
fn process(
    command: &HandlerCommand,
    program: &str,
    args: &[String],
    work_dir: &std::path::Path,
) -> tokio::process::Command {
    let mut p = tokio::process::Command::new(program);
    p.args(args)
        .envs(&command.env)
        .env("FERRY_WORK_DIR", work_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    p
}

/// The last stderr lines, for a failure's message.
#[derive(Default)]
struct Tail(VecDeque<String>);

impl Tail {
    fn push(&mut self, line: &str) {
        self.0.push_back(cap_at(line, MAX_TAIL_BYTES).to_string());
        while self.0.len() > TAIL_LINES || (self.0.len() > 1 && self.bytes() > MAX_TAIL_BYTES) {
            self.0.pop_front();
        }
    }
    fn bytes(&self) -> usize {
        self.0.iter().map(|l| l.len() + 1).sum()
    }
    fn text(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// How long a handler stopped for `reason` has between SIGTERM and SIGKILL: the grace period,
/// or at most [`SHUTDOWN_GRACE`] when the executor itself is stopping (it has waited its own
/// grace period for the job already, and ECS kills the whole task soon after).
fn stop_grace(grace: Duration, reason: StopReason) -> Duration {
    match reason {
        StopReason::Shutdown => grace.min(SHUTDOWN_GRACE),
        StopReason::Cancelled | StopReason::TimedOut => grace,
    }
}

/// A handler's grace when the executor is stopping ([`stop_grace`]).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Kills a process group when dropped: a handler's run that is abandoned (its future dropped)
/// leaves nothing behind either.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, libc::SIGKILL);
        }
    }
}

/// Sends `signal` to the process group `pgid`; false when no process of it is left.
fn signal_group(pgid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory.
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// Runs one job's handler process to its end, calling `on_event` for what it reports in order;
/// `stop` completing stops it (SIGTERM to its group, SIGKILL after the grace period).
pub async fn run_per_job(
    command: &HandlerCommand,
    job: &JobContext,
    input: &Value,
    mut on_event: impl FnMut(HandlerEvent),
    stop: impl std::future::Future<Output = StopReason>,
) -> Result<HandlerEnd, HandlerError> {
    let (program, args) = command.argv.split_first().ok_or(HandlerError::NoCommand)?;
    let work_dir = job.work_root.join(format!("{}-{}", job.job_id, job.attempt));
    std::fs::create_dir_all(&work_dir).map_err(HandlerError::WorkDir)?;
    let spawned = process(command, program, args, &work_dir)
        .env("FERRY_JOB_ID", &job.job_id)
        .env("FERRY_ATTEMPT", job.attempt.to_string())
        .env("FERRY_DEADLINE", &job.deadline)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(source) => {
            let _ = std::fs::remove_dir_all(&work_dir);
            return Err(HandlerError::Spawn { program: program.clone(), source });
        }
    };
    // Whatever the end (even this future dropped), nothing the handler started outlives the job.
    let guard = GroupGuard(child.id().map(|id| id as i32));
    let end = drive(&mut child, command.grace, input, &mut on_event, stop).await;
    drop(guard);
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(end)
}

/// Lets through at most [`STDERR_LOGS_PER_S`] stderr lines a second as log events.
struct StderrLimiter {
    window: tokio::time::Instant,
    logged: u32,
    dropped: u64,
}

impl StderrLimiter {
    /// The events for one stderr line: a note of the lines held back in the last window when a
    /// new one starts, then the line, unless this window is full.
    fn events(&mut self, line: &str) -> Vec<HandlerEvent> {
        let mut out = vec![];
        if self.window.elapsed() >= Duration::from_secs(1) {
            if self.dropped > 0 {
                out.push(warn(format!("({} stderr lines not shown)", self.dropped)));
            }
            (self.window, self.logged, self.dropped) = (tokio::time::Instant::now(), 0, 0);
        }
        if self.logged < STDERR_LOGS_PER_S {
            self.logged += 1;
            out.push(warn(cap(line).to_string()));
        } else {
            self.dropped += 1;
        }
        out
    }
}

fn warn(message: String) -> HandlerEvent {
    HandlerEvent::Log { level: "warn".into(), message }
}

/// Feeds the input, reads both pipes to their end and waits for the process; stops it when
/// `stop` completes. When the process ends, its group is killed at once (what it left running
/// would otherwise hold the pipes open), and what is still in the pipes is read.
async fn drive(
    child: &mut tokio::process::Child,
    grace: Duration,
    input: &Value,
    on_event: &mut impl FnMut(HandlerEvent),
    stop: impl std::future::Future<Output = StopReason>,
) -> HandlerEnd {
    let pgid = child.id().map(|id| id as i32);
    let kill_group = |signal| {
        if let Some(pgid) = pgid {
            signal_group(pgid, signal);
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A handler that exits without reading its input is judged by its exit, not by this.
        let _ = stdin.write_all(format!("{input}\n").as_bytes()).await;
    } // dropped: EOF
    let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let (mut out_open, mut err_open) = (true, true);
    let mut output: Option<Value> = None;
    let mut tail = Tail::default();
    let mut limiter = StderrLimiter { window: tokio::time::Instant::now(), logged: 0, dropped: 0 };
    let mut exit: Option<std::io::Result<std::process::ExitStatus>> = None;
    let mut stopped: Option<StopReason> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    tokio::pin!(stop);
    while exit.is_none() || out_open || err_open {
        tokio::select! {
            line = stdout.next_line(), if out_open => match line {
                Ok(Some(line)) => {
                    let event = parse_stdout_line(&line);
                    if let HandlerEvent::Output(v) = &event {
                        output = Some(v.clone());
                    }
                    on_event(event);
                }
                _ => out_open = false,
            },
            line = stderr.next_line(), if err_open => match line {
                Ok(Some(line)) => {
                    tail.push(&line);
                    limiter.events(&line).into_iter().for_each(&mut *on_event);
                }
                _ => err_open = false,
            },
            status = child.wait(), if exit.is_none() => {
                exit = Some(status);
                kill_group(libc::SIGKILL);
            },
            reason = &mut stop, if stopped.is_none() && exit.is_none() => {
                kill_group(libc::SIGTERM);
                stopped = Some(reason);
                kill_at = Some(tokio::time::Instant::now() + stop_grace(grace, reason));
            },
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(tokio::time::Instant::now)), if kill_at.is_some() => {
                kill_group(libc::SIGKILL);
                kill_at = None;
            },
        }
    }
    if let Some(reason) = stopped {
        return HandlerEnd::Stopped { reason, partial: output };
    }
    match exit.expect("the loop ends once the process has") {
        Ok(s) if s.success() => HandlerEnd::Succeeded { output },
        Ok(s) if s.code() == Some(EXIT_RETRY) => HandlerEnd::Retryable { message: tail.text() },
        Ok(s) => {
            let how = match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(code), _) => format!("the handler exited with status {code}"),
                (None, Some(sig)) => format!("the handler was killed by signal {sig}"),
                _ => "the handler ended abnormally".to_string(),
            };
            let text = tail.text();
            HandlerEnd::Failed { message: if text.is_empty() { how } else { text } }
        }
        Err(e) => HandlerEnd::Failed { message: format!("the handler could not be waited for: {e}") },
    }
}

/// How a worker-mode handler's job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEnd {
    /// `{"id", "type": "done"}`, with the last `output` it wrote for the job.
    Done { output: Option<Value> },
    /// `{"id", "type": "failed", "retryable", "message"}`.
    Failed { retryable: bool, message: String },
    /// Stopped from outside: the worker was stopped with it (SIGTERM to its group, SIGKILL after
    /// the grace) and must be started again for the next job.
    Stopped { reason: StopReason, partial: Option<Value> },
    /// The worker died during the job (retryable); `message` is its stderr tail. Start it again.
    Died { message: String },
}

/// A long-lived worker-mode handler: one process per slot, which can keep a model loaded.
/// It writes `{"type": "ready"}` once when it can take requests; each request is one line
/// `{"id", "input", "deadline"}` on its stdin, and it answers with the per-job line types
/// plus `id`, ending with `done` or `failed`. Its stderr lines are warn logs of the job in
/// progress.
pub struct WorkerProcess {
    child: tokio::process::Child,
    pgid: Option<i32>,
    stdin: tokio::process::ChildStdin,
    /// Its stdout and stderr lines, read all along (so a worker writing between jobs never
    /// blocks on a full pipe; what it wrote between jobs shows with the next one).
    stdout: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: tokio::sync::mpsc::UnboundedReceiver<String>,
    grace: Duration,
    work_dir: PathBuf,
    /// How long it took to say it was ready.
    pub startup: Duration,
}

impl WorkerProcess {
    /// Starts the worker in its own process group (`FERRY_WORK_DIR`: a scratch directory for
    /// its life, under `work_root`) and waits up to `ready_within` for its `ready` line; lines
    /// before it go to `on_log`.
    pub async fn start(
        command: &HandlerCommand,
        work_root: &std::path::Path,
        ready_within: Duration,
        mut on_log: impl FnMut(HandlerEvent),
    ) -> Result<WorkerProcess, HandlerError> {
        let (program, args) = command.argv.split_first().ok_or(HandlerError::NoCommand)?;
        let work_dir = work_root.join(format!("worker-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&work_dir).map_err(HandlerError::WorkDir)?;
        let mut child = process(command, program, args, &work_dir)
            .spawn()
            .map_err(|source| HandlerError::Spawn { program: program.clone(), source })?;
        let mut worker = WorkerProcess {
            pgid: child.id().map(|id| id as i32),
            stdin: child.stdin.take().expect("piped"),
            stdout: read_lines(child.stdout.take().expect("piped")),
            stderr: read_lines(child.stderr.take().expect("piped")),
            child,
            grace: command.grace,
            work_dir,
            startup: Duration::ZERO,
        };
        let started = tokio::time::Instant::now();
        let deadline = started + ready_within;
        let mut tail = Tail::default();
        let mut err_open = true;
        loop {
            tokio::select! {
                line = worker.stdout.recv() => match line {
                    Some(line) if is_ready(&line) => break,
                    Some(line) => on_log(parse_stdout_line(&line)),
                    _ => {
                        let message = format!("the worker ended before it was ready: {}", tail.text());
                        worker.stop().await;
                        return Err(HandlerError::NotReady(message));
                    }
                },
                line = worker.stderr.recv(), if err_open => match line {
                    Some(line) => {
                        tail.push(&line);
                        on_log(warn(cap(&line).to_string()));
                    }
                    None => err_open = false,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    worker.stop().await;
                    return Err(HandlerError::NotReady(format!("no ready line within {ready_within:?}")));
                }
            }
        }
        worker.startup = started.elapsed();
        Ok(worker)
    }

    /// Runs one job on the worker. After `Stopped` or `Died` the worker is gone: drop it and
    /// start another.
    pub async fn run(
        &mut self,
        job_id: &str,
        input: &Value,
        deadline: &str,
        mut on_event: impl FnMut(HandlerEvent),
        stop: impl std::future::Future<Output = StopReason>,
    ) -> WorkerEnd {
        let request = serde_json::json!({"id": job_id, "input": input, "deadline": deadline});
        if self.stdin.write_all(format!("{request}\n").as_bytes()).await.is_err() || self.stdin.flush().await.is_err() {
            return WorkerEnd::Died { message: "the worker's stdin is closed".into() };
        }
        let mut output = None;
        let mut tail = Tail::default();
        let mut limiter = StderrLimiter { window: tokio::time::Instant::now(), logged: 0, dropped: 0 };
        let mut err_open = true;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                line = self.stdout.recv() => {
                    let Some(line) = line else {
                        self.stop().await;
                        return WorkerEnd::Died { message: died(&tail) };
                    };
                    match reply(&line, job_id) {
                        Reply::Event(HandlerEvent::Output(v)) => {
                            output = Some(v.clone());
                            on_event(HandlerEvent::Output(v));
                        }
                        Reply::Event(e) => on_event(e),
                        answer => {
                            // Stderr written before the answer and already read is this job's.
                            while let Ok(line) = self.stderr.try_recv() {
                                tail.push(&line);
                                limiter.events(&line).into_iter().for_each(&mut on_event);
                            }
                            return match answer {
                                Reply::Failed { retryable, message } => WorkerEnd::Failed { retryable, message },
                                _ => WorkerEnd::Done { output },
                            };
                        }
                    }
                }
                line = self.stderr.recv(), if err_open => match line {
                    Some(line) => {
                        tail.push(&line);
                        limiter.events(&line).into_iter().for_each(&mut on_event);
                    }
                    None => err_open = false,
                },
                reason = &mut stop => {
                    self.stop_within(stop_grace(self.grace, reason)).await;
                    return WorkerEnd::Stopped { reason, partial: output };
                }
                _ = self.child.wait() => {
                    // It exited (what it left running may hold the pipes open): its group goes
                    // too, and what it wrote before is still read.
                    if let Some(pgid) = self.pgid {
                        signal_group(pgid, libc::SIGKILL);
                    }
                    // Every writer is gone now, so the pipes end soon.
                    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(1), self.stdout.recv()).await {
                        match reply(&line, job_id) {
                            Reply::Event(HandlerEvent::Output(v)) => {
                                output = Some(v.clone());
                                on_event(HandlerEvent::Output(v));
                            }
                            Reply::Event(e) => on_event(e),
                            Reply::Done => {
                                self.stop().await;
                                return WorkerEnd::Done { output };
                            }
                            Reply::Failed { retryable, message } => {
                                self.stop().await;
                                return WorkerEnd::Failed { retryable, message };
                            }
                        }
                    }
                    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(1), self.stderr.recv()).await {
                        tail.push(&line);
                    }
                    self.stop().await;
                    return WorkerEnd::Died { message: died(&tail) };
                }
            }
        }
    }

    /// Whether the worker process is still running (one that exited while idle is not given
    /// another job).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the worker: SIGTERM to its group, SIGKILL after the grace period, its scratch
    /// directory removed. Nothing it started outlives it.
    pub async fn stop(&mut self) {
        self.stop_within(self.grace).await;
    }

    async fn stop_within(&mut self, grace: Duration) {
        // Taken: once the group is gone its id may be reused, and Drop must not signal it.
        if let Some(pgid) = self.pgid.take() {
            signal_group(pgid, libc::SIGTERM);
            if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
                signal_group(pgid, libc::SIGKILL);
                let _ = self.child.wait().await;
            }
            signal_group(pgid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

impl Drop for WorkerProcess {
    /// A worker dropped without [`WorkerProcess::stop`] (its executor exiting) takes its whole
    /// group with it.
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            signal_group(pgid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// The lines of `pipe`, read by a task of their own until it closes.
fn read_lines(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn died(tail: &Tail) -> String {
    match tail.text() {
        t if t.is_empty() => "the worker died".to_string(),
        t => format!("the worker died: {t}"),
    }
}

fn is_ready(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v["type"] == "ready" && v.get("id").is_none())
}

/// What one stdout line of a worker says about the job `job_id`.
enum Reply {
    Event(HandlerEvent),
    Done,
    Failed { retryable: bool, message: String },
}

fn reply(line: &str, job_id: &str) -> Reply {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(line) else {
        return Reply::Event(parse_stdout_line(line));
    };
    if obj.get("id").and_then(Value::as_str) != Some(job_id) {
        // Not about this job (no id, another one): shown, never taken as its answer.
        return Reply::Event(HandlerEvent::Log { level: "info".into(), message: cap(line).to_string() });
    }
    match obj.get("type").and_then(Value::as_str) {
        Some("done") => Reply::Done,
        Some("failed") => Reply::Failed {
            retryable: obj.get("retryable").and_then(Value::as_bool).unwrap_or(false),
            message: cap(obj.get("message").and_then(Value::as_str).unwrap_or("the handler reported a failure"))
                .to_string(),
        },
        _ => Reply::Event(parse_stdout_line(line)),
    }
}

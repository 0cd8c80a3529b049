//! The catalog's handlers as runners (issue 16): a `task: "handler"` entry is served by
//! [`HandlerRunner`], which the model registry builds instead of loading a model. It runs the
//! entry's program through the protocol of [`crate::handler`] (a process per job, or workers
//! kept between jobs) and answers the worker loop as a model does: progress as events, the
//! last `output` as the job's output, failures as [`ModelError::Handler`], a stop (cancel,
//! timeout) with the output seen so far.
//!
//! At most `concurrency` of the entry's jobs run at once on an executor (the others wait, and
//! a stop ends their wait); in worker mode that is also the most worker processes it keeps.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::catalog::{HandlerMode, ModelSpec};
use ferry_core::input::JobInput;
use serde_json::Value;

use crate::handler::{HandlerCommand, HandlerEnd, HandlerError, HandlerEvent, JobContext, WorkerEnd, WorkerProcess};
use crate::models::{JobRun, ModelError, Progress, RunOutcome, Runner, StopReason, TokenOut};

/// Where and how an executor runs handlers.
#[derive(Debug, Clone)]
pub struct HandlerOptions {
    /// Where each job's (or worker's) private scratch directory is made.
    pub work_root: PathBuf,
    /// Between SIGTERM and SIGKILL when a handler is stopped (the executor's grace period).
    pub grace: Duration,
    /// How long a worker-mode handler may take to say it is ready (it may load a model).
    pub ready_within: Duration,
}

impl HandlerOptions {
    /// How long a worker may take to write its `ready` line by default.
    pub const READY_WITHIN: Duration = Duration::from_secs(600);

    /// Scratch directories under the system's temporary directory.
    pub fn new(grace: Duration) -> HandlerOptions {
        HandlerOptions {
            work_root: std::env::temp_dir().join("ferry-handlers"),
            grace,
            ready_within: Self::READY_WITHIN,
        }
    }
}

/// How often a waiting or running handler looks at its job's stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Room beyond the grace period for a stopped handler's end to be read and reported.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// One catalog handler on this executor.
pub struct HandlerRunner {
    id: String,
    command: HandlerCommand,
    mode: HandlerMode,
    options: HandlerOptions,
    /// One permit per job that may run at once.
    slots: Arc<tokio::sync::Semaphore>,
    /// Worker mode: workers ready for a job (each started, and still alive after its last).
    idle: Arc<Mutex<Vec<WorkerProcess>>>,
}

impl HandlerRunner {
    /// The runner of a `task: "handler"` catalog entry (the catalog checked its fields).
    pub fn new(spec: &ModelSpec, options: HandlerOptions) -> Result<HandlerRunner, ModelError> {
        let argv = spec
            .command
            .clone()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ModelError::Load(format!("{}: a handler entry needs a command", spec.id)))?;
        let command = HandlerCommand { argv, env: spec.env.clone().unwrap_or_default(), grace: options.grace };
        let slots = spec.concurrency.unwrap_or(1).max(1) as usize;
        Ok(HandlerRunner {
            id: spec.id.clone(),
            command,
            mode: spec.mode.unwrap_or_default(),
            options,
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            idle: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Jobs of this handler the executor runs at once.
    pub fn concurrency(spec: &ModelSpec) -> usize {
        spec.concurrency.unwrap_or(1).max(1) as usize
    }

    async fn serve(&self, job: &JobRun, input: &Value, progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError> {
        let _slot = tokio::select! {
            permit = self.slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            reason = stop_requested(progress.as_ref()) => {
                return Ok(RunOutcome::Stopped { reason, partial: Value::Null });
            }
        };
        let events = EventSink::new(progress.clone());
        match self.mode {
            HandlerMode::PerJob => {
                let context = JobContext {
                    job_id: job.job_id.clone(),
                    attempt: job.attempt,
                    deadline: job.deadline.clone(),
                    work_root: self.options.work_root.clone(),
                };
                let end = crate::handler::run_per_job(
                    &self.command,
                    &context,
                    input,
                    |e| events.emit(e),
                    stop_requested(progress.as_ref()),
                )
                .await
                .map_err(|e| self.start_error(e))?;
                Ok(per_job_outcome(end)?)
            }
            HandlerMode::Worker => {
                let mut worker = match self.take_idle() {
                    Some(w) => w,
                    None => self.start_worker(&events).await?,
                };
                let end = worker
                    .run(&job.job_id, input, &job.deadline, |e| events.emit(e), stop_requested(progress.as_ref()))
                    .await;
                match &end {
                    WorkerEnd::Done { .. } | WorkerEnd::Failed { .. } => self.idle.lock().unwrap().push(worker),
                    WorkerEnd::Died { .. } => {
                        tracing::warn!(handler = %self.id, job_id = %job.job_id, "the worker died; starting another");
                        drop(worker);
                        self.restart_in_background();
                    }
                    WorkerEnd::Stopped { .. } => drop(worker),
                }
                worker_outcome(end)
            }
        }
    }

    /// An idle worker still alive (one that exited while idle is dropped, its group killed).
    fn take_idle(&self) -> Option<WorkerProcess> {
        let mut idle = self.idle.lock().unwrap();
        while let Some(mut worker) = idle.pop() {
            if worker.is_alive() {
                return Some(worker);
            }
            tracing::warn!(handler = %self.id, "an idle worker had exited; starting another");
        }
        None
    }

    /// A new worker, its start-up reported to the job as log events.
    async fn start_worker(&self, events: &EventSink) -> Result<WorkerProcess, ModelError> {
        events.emit(HandlerEvent::Log { level: "info".into(), message: format!("starting a {} worker", self.id) });
        let worker =
            WorkerProcess::start(&self.command, &self.options.work_root, self.options.ready_within, |e| events.emit(e))
                .await
                .map_err(|e| self.start_error(e))?;
        let ms = worker.startup.as_millis();
        tracing::info!(handler = %self.id, startup_ms = ms as u64, "handler worker ready");
        events.emit(HandlerEvent::Log { level: "info".into(), message: format!("worker ready in {ms} ms") });
        Ok(worker)
    }

    /// After a worker died, a new one is started at once, so the next job finds it ready.
    fn restart_in_background(&self) {
        let (command, options, idle, id) =
            (self.command.clone(), self.options.clone(), Arc::downgrade(&self.idle), self.id.clone());
        tokio::spawn(async move {
            match WorkerProcess::start(&command, &options.work_root, options.ready_within, |_| {}).await {
                Ok(worker) => match idle.upgrade() {
                    Some(idle) => idle.lock().unwrap().push(worker),
                    None => drop(worker), // the runner is gone: so is its worker
                },
                Err(e) => {
                    tracing::warn!(handler = %id, error = %e, "the worker could not be restarted; the next job tries")
                }
            }
        });
    }

    fn start_error(&self, e: HandlerError) -> ModelError {
        tracing::error!(handler = %self.id, error = %e, "the handler could not be started");
        match e {
            // The scratch space is the executor's: another executor may have it.
            HandlerError::WorkDir(_) => ModelError::Runtime(e.to_string()),
            HandlerError::NotReady(_) => ModelError::Handler { message: e.to_string(), retryable: true },
            HandlerError::NoCommand | HandlerError::Spawn { .. } => {
                ModelError::Handler { message: e.to_string(), retryable: false }
            }
        }
    }
}

impl Runner for HandlerRunner {
    fn run(&self, input: &JobInput, progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError> {
        let job = JobRun { job_id: ulid::Ulid::new().to_string(), attempt: 1, deadline: String::new() };
        self.run_job(&job, input, progress)
    }

    /// Runs on the worker's blocking thread, driving the handler's processes on the runtime.
    fn run_job(&self, job: &JobRun, input: &JobInput, progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError> {
        let JobInput::Handler { input } = input else {
            return Err(ModelError::invalid("model", format!("{} is a handler: its jobs are handler jobs", self.id)));
        };
        tokio::runtime::Handle::current().block_on(self.serve(job, input, progress))
    }

    fn stop_wait(&self) -> Duration {
        self.options.grace + STOP_MARGIN
    }

    /// Idle workers end with the executor (dropped: their process groups are killed; none
    /// is running a job).
    fn close(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap());
        if !idle.is_empty() {
            tracing::info!(handler = %self.id, workers = idle.len(), "stopping idle workers");
        }
    }
}

/// A job's handler events as progress: logs, percentages and tokens (numbered in order). An
/// `output` is not an event of its own: the last one is the job's output (or partial output).
struct EventSink {
    progress: Arc<dyn Progress>,
    tokens: AtomicU32,
}

impl EventSink {
    fn new(progress: Arc<dyn Progress>) -> EventSink {
        EventSink { progress, tokens: AtomicU32::new(0) }
    }

    fn emit(&self, event: HandlerEvent) {
        match event {
            HandlerEvent::Log { level, message } => self.progress.log(&level, message),
            HandlerEvent::Percentage { percent, message } => self.progress.percentage(percent, message),
            HandlerEvent::Token { text } => {
                let index = self.tokens.fetch_add(1, Ordering::SeqCst);
                self.progress.token(TokenOut { index, id: 0, text, logprob: None });
            }
            HandlerEvent::Output(_) => {}
        }
    }
}

/// Resolves once the job's stop flag is set.
async fn stop_requested(progress: &dyn Progress) -> StopReason {
    loop {
        if let Some(reason) = progress.stop_requested() {
            return reason;
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}

/// A per-job process's end as a run's outcome.
fn per_job_outcome(end: HandlerEnd) -> Result<RunOutcome, ModelError> {
    match end {
        HandlerEnd::Succeeded { output } => Ok(RunOutcome::Done(output.unwrap_or(Value::Null))),
        HandlerEnd::Retryable { message } => {
            Err(ModelError::Handler { message: retry_message(message), retryable: true })
        }
        HandlerEnd::Failed { message } => Err(ModelError::Handler { message, retryable: false }),
        HandlerEnd::Stopped { reason, partial } => {
            Ok(RunOutcome::Stopped { reason, partial: partial.unwrap_or(Value::Null) })
        }
    }
}

/// A worker's answer for a job as a run's outcome.
fn worker_outcome(end: WorkerEnd) -> Result<RunOutcome, ModelError> {
    match end {
        WorkerEnd::Done { output } => Ok(RunOutcome::Done(output.unwrap_or(Value::Null))),
        WorkerEnd::Failed { retryable, message } => Err(ModelError::Handler { message, retryable }),
        WorkerEnd::Stopped { reason, partial } => {
            Ok(RunOutcome::Stopped { reason, partial: partial.unwrap_or(Value::Null) })
        }
        WorkerEnd::Died { message } => {
            let message =
                if message.is_empty() { "the worker died".to_string() } else { format!("the worker died: {message}") };
            Err(ModelError::Handler { message, retryable: true })
        }
    }
}

/// A retryable exit's message: its stderr tail, or what it was when it wrote none.
fn retry_message(message: String) -> String {
    if message.is_empty() {
        format!("the handler exited with status {} (retry)", crate::handler::EXIT_RETRY)
    } else {
        message
    }
}

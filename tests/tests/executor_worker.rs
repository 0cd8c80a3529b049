//! The executor's work loop over real adapters (embedded, and DynamoDB + SQS on moto), with
//! a scripted model so each case controls timing and failure exactly: a job runs once from
//! submit to result, duplicates and stale messages are skipped, a cancel stops the work
//! with the partial output kept, the timeout is enforced, retryable errors get another
//! attempt and others fail at once (and the executor serves the next job), SIGTERM
//! releases the job to another executor, the lease and the message's visibility are
//! renewed during a long job, and an idle executor exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry_core::catalog::Catalog;
use ferry_core::input::JobInput;
use ferry_core::job::{Job, JobStatus};
use ferry_core::ports::WorkMessage;
use ferry_core::progress::EventBody;
use ferry_core::root::Root;
use ferry_core::service::JobService;
use ferry_executor::models::{LoadedModel, ModelError, Progress, RunOutcome, Runner, TokenOut};
use ferry_executor::worker::{Exit, Shutdown, Worker, WorkerConfig};
use ferry_tests::backends::{self, Backend};
use serde_json::{Value, json};

/// A model driven by the job's prompt, a JSON script: `{"tokens": n, "step_ms": ms, "emit":
/// e, "fail": "runtime" | "invalid", "fail_runs": k, "pad": b}` takes n steps, checking for
/// a stop before each, and reports the first e of them as token events (default all); fails
/// its first k runs when `fail` is set; adds b bytes of padding to its (partial) output;
/// with `"block_ms": ms` first works that long without looking at stop requests (one
/// long forward pass, a stuck load).
/// Counts its runs.
#[derive(Default)]
struct Scripted {
    runs: AtomicUsize,
}

impl Runner for Scripted {
    fn run(&self, input: &JobInput, progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst);
        let JobInput::TextGeneration { input, .. } = input else { panic!("scripted jobs are text generation") };
        let input: Value =
            serde_json::from_str(input.as_prompt().expect("a prompt")).expect("the prompt is a JSON script");
        let n = input["tokens"].as_u64().unwrap_or(3) as u32;
        let emit = input["emit"].as_u64().unwrap_or(u64::MAX);
        let step = Duration::from_millis(input["step_ms"].as_u64().unwrap_or(5));
        if run < input["fail_runs"].as_u64().unwrap_or(u64::MAX) as usize {
            match input["fail"].as_str() {
                Some("runtime") => return Err(ModelError::Runtime("device lost".into())),
                Some("invalid") => return Err(ModelError::invalid("input.prompt", "too long for the context")),
                _ => {}
            }
        }
        if let Some(ms) = input["block_ms"].as_u64() {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let mut text = String::new();
        let pad = input["pad"].as_u64().map(|b| "p".repeat(b as usize));
        let output = |text: &str, tokens: u32| match &pad {
            Some(pad) => json!({"text": text, "tokens": tokens, "pad": pad}),
            None => json!({"text": text, "tokens": tokens}),
        };
        for index in 0..n {
            if let Some(reason) = progress.stop_requested() {
                return Ok(RunOutcome::Stopped { reason, partial: output(&text, index) });
            }
            std::thread::sleep(step);
            let piece = format!(" t{index}");
            text.push_str(&piece);
            if u64::from(index) < emit {
                progress.token(TokenOut { index, id: index + 10, text: piece, logprob: Some(-0.5) });
            }
        }
        Ok(RunOutcome::Done(output(&text, n)))
    }
}

struct Setup {
    b: Backend,
    root: Root,
    service: JobService,
    model: Arc<Scripted>,
}

fn setup(b: Backend) -> Setup {
    let root = b.root(Catalog::demo());
    Setup { service: root.service(), root, b, model: Arc::default() }
}

impl Setup {
    fn worker(&self, tweak: impl FnOnce(&mut WorkerConfig)) -> Arc<Worker> {
        self.worker_with(LoadedModel::Custom(self.model.clone()), tweak)
    }

    /// A worker serving `tiny-llama` with `model`.
    fn worker_with(&self, model: LoadedModel, tweak: impl FnOnce(&mut WorkerConfig)) -> Arc<Worker> {
        let mut config = WorkerConfig {
            idle_timeout: Duration::from_millis(1500),
            poll_wait: Duration::from_millis(200),
            cancel_check: Duration::from_millis(100),
            ..WorkerConfig::default()
        };
        tweak(&mut config);
        let w = Worker::new(&self.root, config);
        w.models.preload("tiny-llama", model);
        w
    }

    /// A queued job running `script`, recorded and its message sent.
    async fn submit(&self, script: Value, timeout_s: u64) -> Job {
        let mut job = ferry_tests::fixtures::job("acme", JobStatus::Queued);
        job.input = JobInput::prompt(script.to_string()).into();
        job.timeout_s = timeout_s;
        self.b.jobs.create(&job, None).await.unwrap();
        self.send(&job).await;
        job
    }

    async fn send(&self, job: &Job) {
        self.b.queue.send(&WorkMessage::for_job(job, "test")).await.unwrap();
    }

    async fn job(&self, job: &Job) -> Job {
        self.b.jobs.get(&job.id).await.unwrap().unwrap()
    }

    async fn wait_status(&self, job: &Job, want: JobStatus, limit: Duration) -> Job {
        let deadline = Instant::now() + limit;
        loop {
            let j = self.job(job).await;
            if j.status == want {
                return j;
            }
            assert!(Instant::now() < deadline, "job stayed {} (wanted {want})", j.status);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The job's events, once the final status event is stored (it follows the job's own
    /// write, so a reader that saw the terminal job may be a moment early).
    async fn events(&self, job: &Job) -> Vec<EventBody> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let j = self.job(job).await;
            let events: Vec<EventBody> =
                self.b.events.read(&job.id, 0, j.last_seq, 1000).await.unwrap().into_iter().map(|e| e.body).collect();
            if events.last().is_some_and(EventBody::is_final) || Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn queue_empty(&self) -> bool {
        let d = self.b.queue.depth().await.unwrap();
        d.visible == 0 && d.in_flight == 0
    }
}

fn statuses(events: &[EventBody]) -> Vec<JobStatus> {
    events
        .iter()
        .filter_map(|e| match e {
            EventBody::Status { status, .. } => Some(*status),
            _ => None,
        })
        .collect()
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() { super::$name(super::setup(super::backends::embedded())).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn aws() {
                if let Some(b) = super::backends::aws().await { super::$name(super::setup(b)).await }
            }
        }
    )*};
}

both_backends!(
    a_retry_that_cannot_be_queued_fails_the_job,
    a_throttled_outcome_is_retried_until_it_is_stored,
    an_outcome_the_store_refuses_is_recorded_without_its_output,
    an_executor_whose_queue_stays_unreachable_exits_with_an_error,
    time_with_a_failing_queue_counts_as_idle,
    runs_a_job_once_and_exits_when_idle,
    duplicates_and_stale_messages_are_skipped,
    cancel_stops_the_work_and_keeps_the_partial_output,
    timeout_is_enforced,
    retryable_errors_retry_and_others_fail_at_once,
    sigterm_releases_the_job_to_another_executor,
    sigterm_releases_every_job_of_a_batch,
    lease_and_visibility_are_renewed,
    another_pools_job_is_left_for_that_pool,
    a_large_output_is_stored_and_its_result_event_is_a_reference,
    a_large_partial_output_is_stored,
    a_large_input_is_read_back_from_the_results_store,
    without_a_results_store_a_large_output_fails_the_job,
    work_that_ignores_a_timeout_or_a_cancel_is_ended_without_it,
);

async fn work_that_ignores_a_timeout_or_a_cancel_is_ended_without_it(s: Setup) {
    // Longer than its timeout in one uninterruptible step.
    let slow = s.submit(json!({"block_ms": 4_000}), 1).await;
    let w = s.worker(|c| c.idle_timeout = Duration::from_secs(30));
    let started = Instant::now();
    let running = tokio::spawn({
        let w = w.clone();
        async move { w.run(Shutdown::default()).await }
    });
    let done = s.wait_status(&slow, JobStatus::TimedOut, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(3_000), "timed out after {took:?}: the 1 s timeout and at most 1 s more");
    assert_eq!((done.output, done.output_object), (None, None), "no partial output from abandoned work");
    // A cancel the work does not look at, the same way.
    let stuck = s.submit(json!({"block_ms": 4_000}), 60).await;
    s.wait_status(&stuck, JobStatus::Running, Duration::from_secs(10)).await;
    s.service.cancel(&stuck.tenant, &stuck.id).await.unwrap();
    let asked = Instant::now();
    s.wait_status(&stuck, JobStatus::Cancelled, Duration::from_secs(10)).await;
    assert!(asked.elapsed() < Duration::from_millis(2_500), "cancelled after {:?}", asked.elapsed());
    running.abort();
}

/// The stored output of `job` (as recorded), parsed.
async fn stored_output(s: &Setup, job: &Job) -> Value {
    let object = job.output_object.clone().expect("the output is stored");
    assert_eq!(job.output, None, "never both");
    assert_eq!(object.key, ferry_core::objects::output_key(&job.id, job.attempt));
    let bytes = s.b.objects.get(&object.key).await.unwrap().expect("the object exists");
    assert_eq!(bytes.len() as u64, object.bytes);
    serde_json::from_slice(&bytes).unwrap()
}

async fn a_large_output_is_stored_and_its_result_event_is_a_reference(s: Setup) {
    let job = s.submit(json!({"tokens": 2, "pad": 100_000}), 60).await;
    let w = s.worker(|c| c.api_url = Some("https://api.example".into()));
    assert_eq!(w.run(Shutdown::default()).await, Exit::Idle);
    let done = s.job(&job).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{:?}", done.error);
    let output = stored_output(&s, &done).await;
    assert_eq!((&output["text"], output["pad"].as_str().map(str::len)), (&json!(" t0 t1"), Some(100_000)));
    let events = s.events(&job).await;
    let reference = EventBody::Result {
        output: Value::Null,
        output_url: Some(format!("https://api.example/v1/jobs/{}/output", job.id)),
        output_bytes: done.output_object.map(|o| o.bytes),
    };
    assert_eq!(events.iter().filter(|e| **e == reference).count(), 1, "{events:?}");
    // The output route's answer: the bytes (embedded), or a presigned URL to them (S3).
    let bytes = match s.service.output(&job.tenant, &job.id).await.unwrap() {
        ferry_core::service::JobOutput::Bytes(b) => b,
        ferry_core::service::JobOutput::Redirect(url) => {
            reqwest::get(&url).await.unwrap().bytes().await.unwrap().to_vec()
        }
        ferry_core::service::JobOutput::Inline(_) => panic!("a stored output is not inline"),
    };
    assert!(bytes == serde_json::to_vec(&output).unwrap(), "the output route gives the stored output");
}

async fn a_large_partial_output_is_stored(s: Setup) {
    let job = s.submit(json!({"tokens": 10_000, "step_ms": 20, "pad": 100_000}), 1).await;
    let w = s.worker(|_| {});
    assert_eq!(w.run(Shutdown::default()).await, Exit::Idle);
    let done = s.job(&job).await;
    assert_eq!(done.status, JobStatus::TimedOut);
    let partial = stored_output(&s, &done).await;
    assert!(partial["tokens"].as_u64().is_some_and(|n| n > 0 && n < 10_000), "{}", partial["tokens"]);
}

async fn a_large_input_is_read_back_from_the_results_store(s: Setup) {
    let mut job = ferry_tests::fixtures::job("acme", JobStatus::Queued);
    // The script, then whitespace past the inline threshold (JSON ignores it).
    let prompt = format!("{}{}", json!({"tokens": 3}), " ".repeat(70_000));
    let (input, body) =
        ferry_core::input::Input::for_record(JobInput::prompt(prompt), || ferry_core::objects::input_key(&job.id));
    let object = input.object().expect("stored").clone();
    s.b.objects.put(&object.key, body.unwrap()).await.unwrap();
    job.input = input;
    s.b.jobs.create(&job, None).await.unwrap();
    s.send(&job).await;
    // And one whose object is gone: an input error, not a retry.
    let mut lost = ferry_tests::fixtures::job("acme", JobStatus::Queued);
    lost.input = ferry_core::input::Input::Stored {
        task: ferry_core::Task::TextGeneration,
        params: json!({}),
        object: ferry_core::objects::ObjectRef { key: ferry_core::objects::input_key(&lost.id), bytes: 70_000 },
    };
    s.b.jobs.create(&lost, None).await.unwrap();
    s.send(&lost).await;
    let w = s.worker(|_| {});
    assert_eq!(w.run(Shutdown::default()).await, Exit::Idle);
    let done = s.job(&job).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{:?}", done.error);
    assert_eq!(done.output, Some(json!({"text": " t0 t1 t2", "tokens": 3})));
    let failed = s.job(&lost).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.attempt, 1, "not retried");
    assert_eq!(failed.error.map(|e| e.kind), Some("invalid_input".to_string()));
}

async fn without_a_results_store_a_large_output_fails_the_job(s: Setup) {
    let b = s.b.without_objects();
    let s = setup(b);
    let job = s.submit(json!({"tokens": 2, "pad": 100_000}), 60).await;
    let w = s.worker(|_| {});
    assert_eq!(w.run(Shutdown::default()).await, Exit::Idle);
    let done = s.job(&job).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.error.as_ref().map(|e| e.kind.as_str()), Some("result_not_stored"));
    assert!(!done.has_output());
    let events = s.events(&job).await;
    assert!(!events.iter().any(|e| matches!(e, EventBody::Result { .. })), "no result: {events:?}");
    assert!(events.iter().any(|e| matches!(e, EventBody::Error { error } if error.kind == "result_not_stored")));
    assert!(s.queue_empty().await, "settled, not left to run again");
}

async fn runs_a_job_once_and_exits_when_idle(s: Setup) {
    let job = s.submit(json!({"tokens": 4}), 60).await;
    let w = s.worker(|_| {});
    let started = Instant::now();
    assert_eq!(w.run(Shutdown::default()).await, Exit::Idle);
    assert!(started.elapsed() >= Duration::from_millis(1500), "idle timeout honoured");
    let done = s.job(&job).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"text": " t0 t1 t2 t3", "tokens": 4})));
    assert!(done.executor_id.as_deref().is_some_and(|e| e.starts_with("executor-")));
    assert_eq!(s.model.runs.load(Ordering::SeqCst), 1);
    assert!(s.queue_empty().await, "the message was deleted");
    // The stream: running, the tokens in order, the result, succeeded; gap-free seqs.
    let events = s.events(&job).await;
    assert_eq!(statuses(&events), [JobStatus::Running, JobStatus::Succeeded]);
    let tokens: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            EventBody::Token { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, [0, 1, 2, 3]);
    let result_at = events.iter().position(|e| matches!(e, EventBody::Result { .. })).expect("a result event");
    assert_eq!(result_at, events.len() - 2, "result just before the final status: {events:?}");
}

async fn duplicates_and_stale_messages_are_skipped(s: Setup) {
    let job = s.submit(json!({"tokens": 2}), 60).await;
    s.send(&job).await; // SQS delivered it twice
    let mut stale = job.clone();
    stale.attempt = 0; // a message for an attempt that is long gone
    s.send(&stale).await;
    let w = s.worker(|c| c.idle_timeout = Duration::from_millis(800));
    w.run(Shutdown::default()).await;
    assert_eq!(s.job(&job).await.status, JobStatus::Succeeded);
    assert_eq!(s.model.runs.load(Ordering::SeqCst), 1, "run exactly once");
    assert!(s.queue_empty().await, "every copy acknowledged");

    // Two executors racing for one job (embedded: moto's DynamoDB does not isolate
    // concurrent conditional writes, see the conformance notes).
    if s.b.name == "embedded" {
        let job = s.submit(json!({"tokens": 3, "step_ms": 20}), 60).await;
        s.send(&job).await;
        let (a, b) = (s.worker(|_| {}), s.worker(|_| {}));
        tokio::join!(a.run(Shutdown::default()), b.run(Shutdown::default()));
        assert_eq!(s.job(&job).await.status, JobStatus::Succeeded);
        assert_eq!(s.model.runs.load(Ordering::SeqCst), 2, "one more run, not two");
    }
}

async fn cancel_stops_the_work_and_keeps_the_partial_output(s: Setup) {
    // Tokens stop being reported before the cancel: on moto, whose DynamoDB does not isolate
    // concurrent transactions, a token append racing the cancel's status append can both
    // "win" the same seq (see the conformance notes); real DynamoDB and the embedded store
    // serialize them (tests/tests/progress.rs races publishers on the embedded store).
    let job = s.submit(json!({"tokens": 10_000, "step_ms": 20, "emit": 5}), 600).await;
    let w = s.worker(|_| {});
    let run = tokio::spawn(async move { w.run(Shutdown::default()).await });
    s.wait_status(&job, JobStatus::Running, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    assert_eq!(s.service.cancel(&job.tenant, &job.id).await.unwrap().status, JobStatus::Cancelling);
    let done = s.wait_status(&job, JobStatus::Cancelled, Duration::from_secs(10)).await;
    assert!(asked.elapsed() < Duration::from_secs(3), "acknowledged in {:?}", asked.elapsed());
    let partial = done.output.expect("partial output kept");
    let n = partial["tokens"].as_u64().unwrap();
    assert!(n > 0 && n < 10_000, "{partial}");
    assert!(done.error.is_none(), "a confirmed cancel is not forced");
    assert_eq!(statuses(&s.events(&job).await), [JobStatus::Running, JobStatus::Cancelling, JobStatus::Cancelled]);
    assert_eq!(run.await.unwrap(), Exit::Idle);
    assert!(s.queue_empty().await);
}

async fn timeout_is_enforced(s: Setup) {
    let job = s.submit(json!({"tokens": 10_000, "step_ms": 20}), 1).await;
    let w = s.worker(|_| {});
    w.run(Shutdown::default()).await;
    let done = s.job(&job).await;
    assert_eq!(done.status, JobStatus::TimedOut);
    assert_eq!(done.error.as_ref().map(|e| e.kind.as_str()), Some("timed_out"));
    let n = done.output.expect("partial output kept")["tokens"].as_u64().unwrap();
    assert!(n > 10 && n < 200, "ran about a second: {n} tokens of 20 ms");
    assert!(s.queue_empty().await);
}

async fn retryable_errors_retry_and_others_fail_at_once(s: Setup) {
    let flaky = s.submit(json!({"tokens": 2, "fail": "runtime", "fail_runs": 1}), 60).await;
    let w = s.worker(|c| c.idle_timeout = Duration::from_millis(1000));
    w.run(Shutdown::default()).await;
    let done = s.job(&flaky).await;
    assert_eq!((done.status, done.attempt), (JobStatus::Succeeded, 2), "second attempt succeeded");
    let events = s.events(&flaky).await;
    assert!(events.iter().any(|e| matches!(e, EventBody::Error { error } if error.kind == "inference_failed")));
    assert_eq!(statuses(&events), [JobStatus::Running, JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded]);

    // Not retryable: failed at attempt 1; and the executor goes on to the next job.
    let runs_before = s.model.runs.load(Ordering::SeqCst);
    let bad = s.submit(json!({"fail": "invalid", "fail_runs": 99}), 60).await;
    let next = s.submit(json!({"tokens": 1}), 60).await;
    w.run(Shutdown::default()).await;
    let failed = s.job(&bad).await;
    assert_eq!((failed.status, failed.attempt), (JobStatus::Failed, 1));
    let error = failed.error.unwrap();
    assert_eq!(error.kind, "invalid_input");
    assert!(error.message.contains("input.prompt"), "{}", error.message);
    assert_eq!(s.job(&next).await.status, JobStatus::Succeeded);
    assert_eq!(s.model.runs.load(Ordering::SeqCst), runs_before + 2);

    // Retryable but out of attempts: failed.
    let doomed = s.submit(json!({"fail": "runtime"}), 60).await;
    w.run(Shutdown::default()).await;
    let failed = s.job(&doomed).await;
    assert_eq!((failed.status, failed.attempt), (JobStatus::Failed, failed.max_attempts));
    assert!(s.queue_empty().await);
}

/// A retryable failure whose next attempt cannot be queued (the send fails after the
/// requeue's write): the job is failed, saying so, never left queued with no message.
async fn a_retry_that_cannot_be_queued_fails_the_job(s: Setup) {
    let (b, sends) = s.b.with_failing_queue();
    let s = Setup { root: b.root(Catalog::demo()), service: b.root(Catalog::demo()).service(), b, ..s };
    let flaky = s.submit(json!({"tokens": 2, "fail": "runtime", "fail_runs": 1}), 60).await;
    sends.fail_sends(true);
    let w = s.worker(|c| c.idle_timeout = Duration::from_millis(1000));
    w.run(Shutdown::default()).await;
    let done = s.job(&flaky).await;
    assert_eq!((done.status, done.attempt), (JobStatus::Failed, 2), "requeued, then failed");
    let error = done.error.expect("the failure says why");
    assert_eq!(error.kind, "enqueue_failed");
    assert_eq!(s.model.runs.load(Ordering::SeqCst), 1, "never run again");
    assert!(s.queue_empty().await, "the first attempt's message is acknowledged");
}

/// The store throttles the write of the job's end: the executor keeps trying (the message
/// still in flight) until the outcome is stored, and only then deletes the message.
async fn a_throttled_outcome_is_retried_until_it_is_stored(s: Setup) {
    let (b, fails) = s.b.with_failing_finish();
    let s = Setup { root: b.root(Catalog::demo()), service: b.root(Catalog::demo()).service(), b, ..s };
    fails.throttle(3);
    let job = s.submit(json!({"tokens": 3}), 60).await;
    let w = s.worker(|c| c.idle_timeout = Duration::from_millis(1000));
    assert_eq!(w.run(Shutdown::default()).await, Exit::Idle);
    let done = s.job(&job).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.output, Some(json!({"text": " t0 t1 t2", "tokens": 3})));
    assert_eq!(fails.failed.load(Ordering::SeqCst), 3, "three throttled writes, then the stored one");
    assert_eq!(s.model.runs.load(Ordering::SeqCst), 1, "run once");
    assert!(s.queue_empty().await, "the message was deleted after the outcome was stored");
    let events = s.events(&job).await;
    assert_eq!(events.iter().filter(|e| matches!(e, EventBody::Result { .. })).count(), 1, "one result");
    assert_eq!(statuses(&events), [JobStatus::Running, JobStatus::Succeeded]);
}

/// The store refuses the output for good (an item over DynamoDB's size limit): the job is
/// not left to run again and again; it ends `failed` saying its result was not stored.
async fn an_outcome_the_store_refuses_is_recorded_without_its_output(s: Setup) {
    let (b, fails) = s.b.with_failing_finish();
    let s = Setup { root: b.root(Catalog::demo()), service: b.root(Catalog::demo()).service(), b, ..s };
    fails.refuse_outputs(true);
    let job = s.submit(json!({"tokens": 2}), 60).await;
    let w = s.worker(|c| c.idle_timeout = Duration::from_millis(1000));
    assert_eq!(w.run(Shutdown::default()).await, Exit::Idle);
    let done = s.job(&job).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.output, None);
    let error = done.error.expect("the failure says why");
    assert_eq!(error.kind, "result_not_stored");
    assert_eq!(s.model.runs.load(Ordering::SeqCst), 1, "not run again");
    assert!(s.queue_empty().await, "the message was deleted once the failure was stored");
    let events = s.events(&job).await;
    assert!(events.iter().any(|e| matches!(e, EventBody::Error { error } if error.kind == "result_not_stored")));
    assert_eq!(statuses(&events), [JobStatus::Running, JobStatus::Failed]);
}

/// A queue that cannot be reached (a broken VPC endpoint, revoked credentials) for longer
/// than the bound: the executor exits with an error instead of retrying forever.
async fn an_executor_whose_queue_stays_unreachable_exits_with_an_error(s: Setup) {
    let (b, queue) = s.b.with_failing_queue();
    queue.fail_receives(true);
    let s = Setup { root: b.root(Catalog::demo()), service: b.root(Catalog::demo()).service(), b, ..s };
    let w = s.worker(|c| {
        c.idle_timeout = Duration::from_secs(600);
        c.unreachable_exit = Duration::from_millis(1500);
    });
    let exit = tokio::time::timeout(Duration::from_secs(30), w.run(Shutdown::default())).await;
    assert_eq!(exit.expect("the executor never gave up"), Exit::Unreachable);
}

/// The idle timeout counts time without work whatever the reason: failing receives do not
/// keep an executor (and the instance it bills) alive.
async fn time_with_a_failing_queue_counts_as_idle(s: Setup) {
    let (b, queue) = s.b.with_failing_queue();
    queue.fail_receives(true);
    let s = Setup { root: b.root(Catalog::demo()), service: b.root(Catalog::demo()).service(), b, ..s };
    let w = s.worker(|c| {
        c.idle_timeout = Duration::from_millis(1500);
        c.unreachable_exit = Duration::from_secs(600);
    });
    let exit = tokio::time::timeout(Duration::from_secs(30), w.run(Shutdown::default())).await;
    assert_eq!(exit.expect("a failing queue kept the executor up"), Exit::Idle);
}

async fn sigterm_releases_the_job_to_another_executor(s: Setup) {
    let job = s.submit(json!({"tokens": 60, "step_ms": 50}), 600).await;
    let first = s.worker(|c| c.grace_period = Duration::from_millis(300));
    let shutdown = Shutdown::default();
    let stop = shutdown.clone();
    let run = tokio::spawn(async move { first.run(stop).await });
    s.wait_status(&job, JobStatus::Running, Duration::from_secs(10)).await;
    shutdown.trigger();
    assert_eq!(run.await.unwrap(), Exit::Shutdown);
    let released = s.job(&job).await;
    assert_eq!((released.status, released.attempt), (JobStatus::Queued, 1), "released, same attempt");
    assert!(released.executor_id.is_none());

    // Another executor picks it up at once (the message was made visible) and finishes it.
    let second = s.worker(|c| c.idle_timeout = Duration::from_millis(800));
    second.run(Shutdown::default()).await;
    let done = s.job(&job).await;
    assert_eq!((done.status, done.attempt), (JobStatus::Succeeded, 1));
    assert_eq!(done.output.unwrap()["tokens"], 60);
    assert_eq!(s.model.runs.load(Ordering::SeqCst), 2);
    assert!(s.queue_empty().await);
}

/// The real engine (a tiny random Llama) behind a worker, each token held back `per_token`
/// on the engine's thread as a bigger model's forward pass would take.
struct SlowEngine {
    engine: ferry_executor::models::generate::Generator,
    per_token: Duration,
}

struct SlowProgress(Arc<dyn Progress>, Duration);

impl Progress for SlowProgress {
    fn token(&self, token: TokenOut) {
        std::thread::sleep(self.1);
        self.0.token(token)
    }
    fn percentage(&self, percent: f32, message: Option<String>) {
        self.0.percentage(percent, message)
    }
    fn stop_requested(&self) -> Option<ferry_executor::models::StopReason> {
        self.0.stop_requested()
    }
}

impl Runner for SlowEngine {
    fn run(&self, input: &JobInput, progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError> {
        let JobInput::TextGeneration { input, params } = input else { panic!("text generation only") };
        self.engine.generate(
            input.as_prompt().expect("a prompt"),
            params,
            Arc::new(SlowProgress(progress, self.per_token)),
        )
    }
}

fn tiny_engine(dir: &std::path::Path) -> ferry_executor::models::generate::Generator {
    ferry_executor::testing::write_tiny_llama(dir, 3).unwrap();
    let cpu = ferry_executor::models::Placement { device: candle_core::Device::Cpu, dtype: candle_core::DType::F32 };
    ferry_executor::models::llama::load(dir, &cpu).unwrap()
}

/// Eight jobs decoding together in one engine: SIGTERM releases all of them (queued again,
/// same attempt), and another executor finishes each with the tokens it gets alone.
async fn sigterm_releases_every_job_of_a_batch(s: Setup) {
    let dir = ferry_executor::testing::ScratchDir::new("ferry-batch-sigterm").unwrap();
    // 8 jobs at 80 ms a token: 640 ms a pass, 24 tokens in about 15 s, so none ends while
    // moto is still reporting the eight running (a 4 s job once did, on a loaded runner); few
    // tokens, since moto's TransactWriteItems copies its whole state and many long event
    // batches stall it.
    let slow = SlowEngine { engine: tiny_engine(dir.path()), per_token: Duration::from_millis(80) };
    let mut jobs = Vec::new();
    for i in 0..8 {
        let mut job = ferry_tests::fixtures::job("acme", JobStatus::Queued);
        let words = ["the ferry", "a river of time", "people came to see", "water"][i % 4];
        job.input = serde_json::from_value::<JobInput>(json!({
            "task": "text-generation", "input": {"prompt": format!("{words} {i}")},
            "params": {"max_new_tokens": 24}
        }))
        .unwrap()
        .into();
        job.timeout_s = 600;
        s.b.jobs.create(&job, None).await.unwrap();
        s.send(&job).await;
        jobs.push(job);
    }
    let first = s.worker_with(LoadedModel::Custom(Arc::new(slow)), |c| {
        c.grace_period = Duration::from_millis(100);
        c.concurrency = 0; // the engine's capacity (32)
    });
    assert_eq!(first.concurrency(), 32);
    let shutdown = Shutdown::default();
    let run = tokio::spawn({
        let (w, stop) = (first.clone(), shutdown.clone());
        async move { w.run(stop).await }
    });
    // All eight run at once (one batch), and have made tokens.
    for job in &jobs {
        s.wait_status(job, JobStatus::Running, Duration::from_secs(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for job in &jobs {
        while s.job(job).await.last_seq < 3 {
            assert!(Instant::now() < deadline, "job {} made no tokens", job.id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let stopped = Instant::now();
    shutdown.trigger();
    // Well before the jobs could end (15 s): eight releases on a shared moto, whose every
    // TransactWriteItems copies its whole state, took 6.5 s in a full CI run on 2 cores.
    assert_eq!(tokio::time::timeout(Duration::from_secs(14), run).await.unwrap().unwrap(), Exit::Shutdown);
    assert!(stopped.elapsed() < Duration::from_secs(10), "shutdown took {:?}", stopped.elapsed());
    for job in &jobs {
        let released = s.job(job).await;
        assert_eq!((released.status, released.attempt), (JobStatus::Queued, 1), "job {} released", job.id);
        assert!(released.executor_id.is_none());
    }

    // Another executor (no slowdown) finishes every one, each with its tokens alone. On the
    // embedded stores only: on moto, eight jobs' token batches at full speed are eight large
    // TransactWriteItems, which moto serves by copying its whole state (all the suite's
    // tables), slow enough under the parallel suite to run out the outcome retries; one
    // released job finishing elsewhere on moto is `sigterm_releases_the_job_to_another_executor`.
    if s.b.name != "embedded" {
        return;
    }
    let engine = tiny_engine(dir.path());
    let alone: Vec<Value> = jobs
        .iter()
        .map(|j| {
            let Some(JobInput::TextGeneration { input, params }) = j.input.inline() else { unreachable!() };
            match engine
                .generate(input.as_prompt().expect("a prompt"), params, Arc::new(ferry_executor::models::NoProgress))
                .unwrap()
            {
                RunOutcome::Done(v) => v["token_ids"].clone(),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    let second = s.worker_with(LoadedModel::Text(engine), |c| {
        c.idle_timeout = Duration::from_millis(1500);
        c.concurrency = 0;
    });
    second.run(Shutdown::default()).await;
    for (job, want) in jobs.iter().zip(alone) {
        let done = s.job(job).await;
        assert_eq!((done.status, done.attempt), (JobStatus::Succeeded, 1), "{:?}", done.error);
        assert_eq!(done.output.unwrap()["token_ids"], want);
    }
    assert!(s.queue_empty().await);
}

async fn lease_and_visibility_are_renewed(s: Setup) {
    // A 3.5 s job with a 3 s lease and a 2 s message visibility: without renewals the lease
    // lapses and the message reappears to the second executor polling beside it.
    let job = s.submit(json!({"tokens": 35, "step_ms": 100}), 600).await;
    let tweak = |c: &mut WorkerConfig| {
        c.lease = Duration::from_secs(3);
        c.visibility = Duration::from_secs(2);
    };
    let (a, b) = (s.worker(tweak), s.worker(tweak));
    let first_lease = {
        let run_a = tokio::spawn({
            let a = a.clone();
            async move { a.run(Shutdown::default()).await }
        });
        let j = s.wait_status(&job, JobStatus::Running, Duration::from_secs(10)).await;
        let run_b = tokio::spawn(async move { b.run(Shutdown::default()).await });
        let mut max_lease = j.lease_until.unwrap();
        let first = max_lease;
        loop {
            let j = s.job(&job).await;
            if j.status != JobStatus::Running {
                break;
            }
            max_lease = max_lease.max(j.lease_until.unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        run_a.await.unwrap();
        run_b.await.unwrap();
        assert!(max_lease > first + 1000, "the lease was renewed: {first} -> {max_lease}");
        first
    };
    let done = s.job(&job).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
    assert_eq!(s.model.runs.load(Ordering::SeqCst), 1, "the message did not reappear (first lease {first_lease})");
}

async fn another_pools_job_is_left_for_that_pool(s: Setup) {
    // The demo catalog's models are all in the `cpu` pool: a `gpu` executor serves none.
    let job = s.submit(json!({"tokens": 2}), 60).await;
    let gpu = s.worker(|c| {
        c.pool = "gpu".into();
        c.idle_timeout = Duration::from_millis(800);
    });
    gpu.run(Shutdown::default()).await;
    assert_eq!(s.job(&job).await.status, JobStatus::Queued, "not claimed by the wrong pool");
    assert_eq!(s.model.runs.load(Ordering::SeqCst), 0);
    assert!(!s.queue_empty().await, "the message is still there");
    // It comes back within the release pause (2 s) for an executor of its pool.
    let cpu = s.worker(|c| c.idle_timeout = Duration::from_secs(4));
    cpu.run(Shutdown::default()).await;
    assert_eq!(s.job(&job).await.status, JobStatus::Succeeded);
    assert!(s.queue_empty().await);
}

/// The AWS adapters through a fault-injecting proxy in front of moto, with short SDK
/// timeouts (a hung call is cut after 2 s and tried again).
async fn behind_a_faulty_proxy() -> Option<(Setup, ferry_tests::recorder::Recorder)> {
    let timeouts = ferry_aws::Timeouts {
        connect: Duration::from_secs(2),
        attempt: Duration::from_secs(2),
        operation: Duration::from_secs(10),
    };
    let (b, proxy) = backends::aws_through_proxy(timeouts).await?;
    Some((setup(b), proxy))
}

/// One job, its events: exactly one result and one final status, whatever was injected.
async fn assert_one_end(s: &Setup, job: &Job, status: JobStatus) -> Job {
    let done = s.wait_status(job, status, Duration::from_secs(60)).await;
    let events = s.events(job).await;
    let results = events.iter().filter(|e| matches!(e, EventBody::Result { .. })).count();
    let finals = events.iter().filter(|e| e.is_final()).count();
    assert_eq!((results, finals), (1, 1), "one result, one final status: {events:?}");
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttles_and_500s_on_the_finishing_write_lose_nothing_behind_a_faulty_proxy() {
    use ferry_tests::recorder::{Fault, FaultKind};
    let Some((s, proxy)) = behind_a_faulty_proxy().await else { return };
    // More than the SDK's own three attempts: the executor's retry has to carry it.
    for kind in [FaultKind::Throttle, FaultKind::ServerError] {
        let fault = Fault { operation: "TransactWriteItems", containing: "succeeded".into(), kind, times: 4 };
        proxy.inject(fault);
    }
    let job = s.submit(json!({"tokens": 3}), 60).await;
    let w = s.worker(|c| c.idle_timeout = Duration::from_secs(3));
    assert_eq!(w.run(Shutdown::default()).await, Exit::Idle);
    assert_eq!(proxy.faults_left(), 0, "every fault was met");
    let done = assert_one_end(&s, &job, JobStatus::Succeeded).await;
    assert_eq!(done.output, Some(json!({"text": " t0 t1 t2", "tokens": 3})));
    assert_eq!((done.attempt, s.model.runs.load(Ordering::SeqCst)), (1, 1), "run once");
    assert!(s.queue_empty().await, "acknowledged once recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_send_after_a_requeue_and_a_hung_call_leave_nothing_stuck_behind_a_faulty_proxy() {
    use ferry_tests::recorder::{Fault, FaultKind};
    let Some((s, proxy)) = behind_a_faulty_proxy().await else { return };
    // The first run fails retryably; the message of its second attempt is lost; a read of
    // the job hangs once.
    let job = s.submit(json!({"tokens": 2, "fail": "runtime", "fail_runs": 1}), 60).await;
    proxy.inject(Fault {
        operation: "SendMessage",
        containing: r#"attempt\":2"#.into(),
        kind: FaultKind::Drop,
        times: 1,
    });
    proxy.inject(Fault {
        operation: "GetItem",
        containing: job.id.to_string(),
        kind: FaultKind::Hang(Duration::from_secs(5)),
        times: 1,
    });
    let w = s.worker(|c| c.idle_timeout = Duration::from_secs(60));
    let stop = Shutdown::default();
    let running = tokio::spawn({
        let (w, stop) = (w.clone(), stop.clone());
        async move { w.run(stop).await }
    });
    let requeued = s.wait_status(&job, JobStatus::Queued, Duration::from_secs(30)).await;
    assert_eq!(requeued.attempt, 2);
    // The watchdog finds the queued job with no message and sends it again.
    let mut watchdog = s.root.watchdog(30_000);
    watchdog.resend_after_ms = 1_000;
    let deadline = Instant::now() + Duration::from_secs(40);
    let done = loop {
        let j = s.job(&job).await;
        if j.status.is_terminal() || Instant::now() > deadline {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = watchdog.run().await;
    };
    assert_eq!(done.status, JobStatus::Succeeded, "{:?}", done.error);
    assert_eq!(proxy.faults_left(), 0, "every fault was met");
    assert_eq!((done.attempt, s.model.runs.load(Ordering::SeqCst)), (2, 2));
    assert_one_end(&s, &job, JobStatus::Succeeded).await;
    stop.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(30), running).await;
}

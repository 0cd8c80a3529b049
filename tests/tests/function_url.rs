//! The api Lambda behind its Function URL (`FERRY_API_INVOKE_MODE=RESPONSE_STREAM`), end to
//! end on moto-backed stores: the function as `main` runs it (`ferry_api_lambda::build` from
//! its environment, `ferry_api_lambda::run` in response-streaming mode) takes Function URL
//! events from a stand-in for Lambda's Runtime API on loopback and streams its responses to
//! it the way Lambda receives them (`Lambda-Runtime-Function-Response-Mode: streaming`, the
//! metadata prelude, eight NUL bytes, then the body as it is written). A `ferry dev` stack
//! on the same table and queue runs the jobs with its in-process executor.
//!
//! Checked: an OpenAI chat stream arrives in pieces, tokens first, while its job is still
//! running, and ends with `data: [DONE]`; its text is the job's output; a call without a key
//! is OpenAI's 401; and when Lambda stops taking a stream (the client went away), the job
//! is cancelled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use ferry_cli::stack::{self, BackendKind, StackOptions};
use ferry_core::{JobId, JobStatus};
use ferry_executor::testing::{self, ScratchDir, TINY_CONFIG, TinyConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, mpsc};

const KEY: &str = "k-function-url";

/// One event for the function, and where the stand-in puts what the function streams back.
struct Invocation {
    id: String,
    event: Value,
    /// The response body's pieces as they arrive; `None` once it is complete.
    pieces: mpsc::UnboundedSender<Option<Bytes>>,
    /// Notified to stop reading the response (Lambda closing the stream: the client left).
    cut: Arc<Notify>,
}

#[derive(Clone, Default)]
struct RuntimeApi {
    queue: Arc<Mutex<Option<mpsc::Receiver<Invocation>>>>,
    open: Arc<Mutex<HashMap<String, (mpsc::UnboundedSender<Option<Bytes>>, Arc<Notify>)>>>,
    /// What each response POST said of itself: (mode header, content type).
    modes: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

async fn next(State(rt): State<RuntimeApi>) -> Response {
    let inv = {
        let mut queue = rt.queue.lock().await;
        match queue.as_mut() {
            Some(rx) => rx.recv().await,
            None => None,
        }
    };
    let Some(inv) = inv else {
        // No more events: the function waits here, as it would between invocations.
        std::future::pending::<()>().await;
        unreachable!()
    };
    rt.open.lock().await.insert(inv.id.clone(), (inv.pieces, inv.cut));
    let deadline = (std::time::SystemTime::now() + Duration::from_secs(900))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    (
        [
            ("lambda-runtime-aws-request-id", inv.id),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:ferry-api_stream".into(),
            ),
            ("lambda-runtime-trace-id", "Root=1-6b0806d0-1f2e3d4c5b6a79880f1e2d3c;Sampled=0".into()),
            ("content-type", "application/json".into()),
        ],
        inv.event.to_string(),
    )
        .into_response()
}

async fn response(State(rt): State<RuntimeApi>, Path(id): Path<String>, headers: HeaderMap, body: Body) -> StatusCode {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    rt.modes.lock().unwrap().push((header("lambda-runtime-function-response-mode"), header("content-type")));
    let Some((pieces, cut)) = rt.open.lock().await.remove(&id) else { return StatusCode::NOT_FOUND };
    let mut stream = body.into_data_stream();
    loop {
        tokio::select! {
            piece = stream.next() => match piece {
                Some(Ok(b)) => { let _ = pieces.send(Some(b)); }
                Some(Err(_)) | None => break,
            },
            _ = cut.notified() => return StatusCode::ACCEPTED,
        }
    }
    let _ = pieces.send(None);
    StatusCode::ACCEPTED
}

async fn error(Path(id): Path<String>, body: String) -> StatusCode {
    panic!("the function reported an error for {id}: {body}");
}

/// What the function streamed for one invocation, read as it arrives.
struct Streamed {
    pieces: mpsc::UnboundedReceiver<Option<Bytes>>,
    buf: Vec<u8>,
    prelude: Option<Value>,
    /// Body pieces received after the prelude.
    body_pieces: usize,
}

impl Streamed {
    /// Reads until the prelude is complete.
    async fn prelude(&mut self) -> Value {
        while self.prelude.is_none() {
            if let Some(at) = self.buf.windows(8).position(|w| w == [0u8; 8]) {
                self.prelude = Some(serde_json::from_slice(&self.buf[..at]).expect("the prelude is JSON"));
                self.buf.drain(..at + 8);
                break;
            }
            let piece = self.piece().await.expect("the stream ended inside the prelude");
            self.buf.extend_from_slice(&piece);
        }
        self.prelude.clone().unwrap()
    }

    async fn piece(&mut self) -> Option<Bytes> {
        tokio::time::timeout(Duration::from_secs(60), self.pieces.recv()).await.expect("the function answers").flatten()
    }

    /// The next server-sent event's data (`None` at the end of the stream).
    async fn event(&mut self) -> Option<String> {
        loop {
            let text = std::str::from_utf8(&self.buf).expect("utf-8");
            if let Some(at) = text.find("\n\n") {
                let event = text[..at].to_string();
                self.buf.drain(..at + 2);
                let data = event.lines().filter_map(|l| l.strip_prefix("data: ")).collect::<Vec<_>>().join("\n");
                return Some(data);
            }
            let piece = self.piece().await?;
            self.body_pieces += 1;
            self.buf.extend_from_slice(&piece);
        }
    }

    /// The rest of the body.
    async fn rest(&mut self) -> String {
        while let Some(piece) = self.piece().await {
            self.buf.extend_from_slice(&piece);
        }
        String::from_utf8(std::mem::take(&mut self.buf)).unwrap()
    }
}

struct Lambda {
    invocations: mpsc::Sender<Invocation>,
    modes: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Lambda {
    /// Invokes the function with `event` (edited by `edit`); `cut` stops the stream.
    async fn invoke(&self, edit: impl FnOnce(&mut Value)) -> (Streamed, Arc<Notify>) {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/function-url/openai-chat-stream.json");
        let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        event["headers"]["authorization"] = json!(format!("Bearer {KEY}"));
        edit(&mut event);
        let (tx, rx) = mpsc::unbounded_channel();
        let cut = Arc::new(Notify::new());
        let id = ulid::Ulid::new().to_string();
        self.invocations.send(Invocation { id, event, pieces: tx, cut: cut.clone() }).await.unwrap();
        (Streamed { pieces: rx, buf: Vec::new(), prelude: None, body_pieces: 0 }, cut)
    }
}

fn set_body(event: &mut Value, body: Value) {
    let body = body.to_string();
    event["headers"]["content-length"] = json!(body.len().to_string());
    event["body"] = json!(body);
}

fn delta_text(data: &str) -> String {
    let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{data}: {e}"));
    v["choices"][0]["delta"]["content"].as_str().unwrap_or_default().to_string()
}

#[test]
fn openai_streams_through_the_function_url_runtime() {
    let Some(moto) = ferry_tests::moto::shared() else {
        eprintln!("skipping: moto_server not installed");
        return;
    };
    // Lambda's environment for the runtime client, set before any thread starts.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let runtime_api = listener.local_addr().unwrap().to_string();
    // SAFETY: no other thread exists yet (the tokio runtime is built below).
    unsafe {
        std::env::set_var("AWS_LAMBDA_RUNTIME_API", &runtime_api);
        std::env::set_var("AWS_LAMBDA_FUNCTION_NAME", "ferry-api_stream");
        std::env::set_var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024");
        std::env::set_var("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    rt.block_on(async move {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (tx, rx) = mpsc::channel(4);
        let state = RuntimeApi { queue: Arc::new(Mutex::new(Some(rx))), ..Default::default() };
        let lambda = Lambda { invocations: tx, modes: state.modes.clone() };
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        // The stack that runs the jobs, on moto.
        let mut opts = StackOptions::embedded();
        opts.backend = BackendKind::Aws;
        opts.aws_endpoint = Some(moto.endpoint.clone());
        opts.table = ferry_tests::backends::unique_name();
        opts.queue = opts.table.clone();
        opts.results_bucket = opts.table.clone();
        opts.api_keys = vec![format!("{KEY}=acme")];
        // The event's tiny-llama, and a model with a long context whose 3000 tokens take a
        // while, so a stream can be caught while its job runs.
        let models = ScratchDir::new("ferry-function-url-models").unwrap();
        let (tiny, long) = (models.path().join("tiny"), models.path().join("long"));
        testing::write_tiny_llama(&tiny, 5).unwrap();
        let shape = TinyConfig { max_position_embeddings: 4096, hidden_size: 128, num_hidden_layers: 4, ..TINY_CONFIG };
        testing::write_llama(&long, 7, shape).unwrap();
        opts.models = vec![format!("tiny-llama={}", tiny.display()), format!("long-llama={}", long.display())];
        opts.executors = true;
        opts.worker.poll_wait = Duration::from_millis(500);
        let stack = Arc::new(stack::build(&opts).await.expect("stack"));
        let stop = ferry_executor::worker::Shutdown::default();
        let running = {
            let (stack, stop) = (stack.clone(), stop.clone());
            tokio::spawn(async move { stack.run(stop).await })
        };

        // The function, configured as infra/ configures the Function URL's, built and run on
        // its own runtime as `main` does.
        let sdk = ferry_aws::sdk_config_for_endpoint(&moto.endpoint).await;
        let urls = ferry_aws::ensure_queues(
            &aws_sdk_sqs::Client::new(&sdk),
            &opts.queue,
            ferry_aws::bootstrap::MAX_RECEIVE_COUNT,
        )
        .await
        .unwrap();
        let env: HashMap<&str, String> = [
            ("FERRY_TABLE", opts.table.clone()),
            ("FERRY_QUEUE_URL", urls.queue_url),
            ("FERRY_DLQ_URL", urls.dlq_url),
            (
                "FERRY_MODELS",
                json!({"models": [{"id": "tiny-llama", "task": "text-generation", "pool": "cpu"},
                                   {"id": "long-llama", "task": "text-generation", "pool": "cpu"}]})
                .to_string(),
            ),
            ("FERRY_POOLS", json!({"pools": [{"name": "cpu"}]}).to_string()),
            ("FERRY_RESULTS_BUCKET", opts.results_bucket.clone()),
            ("FERRY_API_INVOKE_MODE", "RESPONSE_STREAM".into()),
        ]
        .into();
        let endpoint = moto.endpoint.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let lookup = |k: &str| env.get(k).cloned();
                let mode = ferry_api_lambda::InvokeMode::from_lookup(&lookup).unwrap();
                assert_eq!(mode, ferry_api_lambda::InvokeMode::ResponseStream);
                let sdk = ferry_aws::sdk_config_for_endpoint(&endpoint).await;
                let api = ferry_api_lambda::build(&sdk, &lookup).await.expect("the function builds");
                // Ends when the stand-in closes a response mid-stream (lambda_runtime returns
                // the failed POST); Lambda would start the function again.
                let _ = ferry_api_lambda::run(api, mode).await;
            })
        });

        // A whole stream: prelude, role, tokens, finish, [DONE]; the text is the job's output.
        let (mut s, _) = lambda.invoke(|_| {}).await;
        let prelude = s.prelude().await;
        assert_eq!(prelude["statusCode"], 200, "{prelude}");
        assert_eq!(prelude["headers"]["content-type"], "text/event-stream", "{prelude}");
        let job: JobId = prelude["headers"]["ferry-job-id"].as_str().expect("the job's id").parse().unwrap();
        let mut text = String::new();
        let mut finish = Value::Null;
        let mut events = 0;
        loop {
            let data = s.event().await.expect("the stream ends with [DONE]");
            if data == "[DONE]" {
                break;
            }
            events += 1;
            text += &delta_text(&data);
            let v: Value = serde_json::from_str(&data).unwrap();
            if !v["choices"][0]["finish_reason"].is_null() {
                finish = v["choices"][0]["finish_reason"].clone();
            }
        }
        assert!(s.rest().await.is_empty(), "nothing after [DONE]");
        assert_eq!(finish, "length");
        assert!(
            events >= 3 && s.body_pieces >= 2,
            "the body arrived in pieces ({events} events, {} pieces)",
            s.body_pieces
        );
        let done = stack.root.ports.jobs.get(&job).await.unwrap().expect("the job exists");
        assert_eq!(done.status, JobStatus::Succeeded);
        let output = done.output.clone().expect("an inline output");
        assert_eq!(text, output["text"].as_str().unwrap(), "{output}");
        assert_eq!(output["token_ids"].as_array().unwrap().len(), 12);

        // No key: OpenAI's 401, in the prelude's status and the body.
        let (mut s, _) =
            lambda.invoke(|e| e["headers"].as_object_mut().unwrap().remove("authorization").map(drop).unwrap()).await;
        assert_eq!(s.prelude().await["statusCode"], 401);
        let body: Value = serde_json::from_str(&s.rest().await).unwrap();
        assert_eq!(body["error"]["type"], "authentication_error", "{body}");

        // A long stream: tokens arrive while the job runs; Lambda stops taking the stream,
        // and the job is cancelled.
        let (mut s, cut) = lambda
            .invoke(|e| {
                set_body(
                    e,
                    json!({"model": "long-llama", "messages": [{"role": "user", "content": "the river and the boat"}],
                           "stream": true, "max_tokens": 3000, "temperature": 0}),
                )
            })
            .await;
        let prelude = s.prelude().await;
        let job: JobId = prelude["headers"]["ferry-job-id"].as_str().unwrap().parse().unwrap();
        loop {
            let data = s.event().await.expect("tokens arrive");
            assert_ne!(data, "[DONE]", "the stream ended before any token");
            if !delta_text(&data).is_empty() {
                break;
            }
        }
        let status = stack.root.ports.jobs.get(&job).await.unwrap().unwrap().status;
        assert_eq!(status, JobStatus::Running, "a token arrived before the job ended");
        cut.notify_one();
        let mut cancelled = None;
        for _ in 0..100 {
            let j = stack.root.ports.jobs.get(&job).await.unwrap().unwrap();
            if j.cancel_requested_at.is_some() {
                cancelled = Some(j.status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            matches!(cancelled, Some(JobStatus::Cancelling | JobStatus::Cancelled)),
            "the job of a stream Lambda stopped taking is cancelled: {cancelled:?}"
        );

        let modes = lambda.modes.lock().unwrap().clone();
        assert_eq!(modes.len(), 3);
        for (mode, content_type) in modes {
            assert_eq!(mode, "streaming");
            assert_eq!(content_type, "application/vnd.awslambda.http-integration-response");
        }
        // The executor may still be decoding the cancelled job (it checks for cancels between
        // steps); the process ends here, which ends it.
        stop.trigger();
        drop(running);
    });
}

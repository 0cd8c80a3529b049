//! Webhook delivery end to end, on the embedded adapters and on moto: a loopback receiver
//! that fails the first two tries (500, then 429 with `Retry-After: 1`) and accepts the
//! third; signatures checked with the Standard Webhooks reference library (Python,
//! `standardwebhooks`, installed by `.ci/run`), across a secret rotation; the deliveries'
//! record and redelivery through the HTTP API; a receiver that hangs delays nothing; refused
//! URLs are 422 at submit, and a name resolving to the metadata address is refused when
//! connecting too.
//!
//! On the embedded backend the store's change feed queues the deliveries (as `ferry dev`
//! does); on moto, which runs no streams, each write's stream record is built from the item
//! before and after it and handed to the dispatcher Lambda's handler, as the table's stream
//! would.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use ferry_core::auth::hash_api_key;
use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::deliver::{
    DeliverySettings, DeliveryState, NoTransport, TransportError, WebhookPost, WebhookTransport, Webhooks,
    follow_changes, run_queue,
};
use ferry_core::job::{Job, JobStatus, TenantId};
use ferry_core::objects::Output;
use ferry_core::pool::Pools;
use ferry_core::ports::{ApiKeyRecord, Resolver, SystemResolver};
use ferry_core::root::Root;
use ferry_core::service::JobService;
use ferry_core::state::Transition;
use ferry_core::submit::parse_submit;
use ferry_core::webhook::{UrlPolicy, WebhookSecret};
use ferry_core::webhook_secrets::{rotate, signing_secrets};
use ferry_http::webhook_client::HttpTransport;
use ferry_tests::backends::{self, Backend};
use ferry_tests::standard_webhooks::{Case, verifies};
use serde_json::{Value, json};

const KEY: &str = "fk_webhooks_test";

ferry_tests::on_both!(retried_until_accepted, a_hanging_receiver_delays_nothing);

/// What the receiver answers next.
#[derive(Clone, Copy)]
enum Reply {
    Status(u16, Option<&'static str>),
    Hang,
}

#[derive(Clone, Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: Bytes,
    at: Instant,
}

/// A loopback HTTP receiver answering from a script (then 200), recording every request.
#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<VecDeque<Reply>>>,
    got: Arc<Mutex<Vec<Received>>>,
    addr: Option<SocketAddr>,
}

impl Receiver {
    async fn start(script: &[Reply]) -> Receiver {
        let mut r = Receiver { script: Arc::new(Mutex::new(script.iter().copied().collect())), ..Default::default() };
        let state = r.clone();
        let app = axum::Router::new().fallback(move |headers: http::HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let headers =
                    headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
                state.got.lock().unwrap().push(Received { headers, body, at: Instant::now() });
                let reply = state.script.lock().unwrap().pop_front().unwrap_or(Reply::Status(200, None));
                match reply {
                    Reply::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        http::Response::builder().status(200).body(axum::body::Body::empty()).unwrap()
                    }
                    Reply::Status(code, retry_after) => {
                        let mut b = http::Response::builder().status(code);
                        if let Some(r) = retry_after {
                            b = b.header("retry-after", r);
                        }
                        b.body(axum::body::Body::from("x".repeat(200_000))).unwrap()
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        r.addr = Some(listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        r
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr.unwrap())
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.got();
            if got.len() >= n || Instant::now() > deadline {
                assert!(got.len() >= n, "{} of {n} requests within {limit:?}", got.len());
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn settings(timeout: Duration) -> DeliverySettings {
    DeliverySettings { delays: vec![Duration::from_millis(300); 7], timeout }
}

/// The deliverer and what feeds it, running until dropped; `write` applies a job write and,
/// on moto, hands its stream record to the dispatcher Lambda's handler.
struct Pipeline {
    root: Root,
    service: JobService,
    webhooks: Webhooks,
    stream: Option<(aws_sdk_dynamodb::Client, String, ferry_dispatcher_lambda::Handlers)>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Pipeline {
    async fn start(b: &Backend, timeout: Duration) -> Pipeline {
        let config = Config { webhook_policy: UrlPolicy::LOCAL, ..Config::default() };
        let root = Root::new(b.ports.clone(), Catalog::demo(), Pools::default(), config);
        let transport = HttpTransport::new(UrlPolicy::LOCAL, Arc::new(SystemResolver)).unwrap();
        let webhooks = root.webhooks(Arc::new(transport), settings(timeout));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = rx.await;
        };
        let stream = match b.ports.jobs.changes() {
            Some(changes) => {
                let (queue_stop, follow_stop) = split(stop);
                tokio::spawn(follow_changes(webhooks.clone(), changes, follow_stop));
                tokio::spawn(run_queue(webhooks.clone(), queue_stop));
                None
            }
            None => {
                tokio::spawn(run_queue(webhooks.clone(), stop));
                let moto = ferry_tests::moto::shared().expect("moto runs");
                let sdk = ferry_aws::sdk_config_for_endpoint(&moto.endpoint).await;
                let handlers = ferry_dispatcher_lambda::Handlers {
                    dispatcher: root.dispatcher(),
                    watchdog: root.watchdog(30_000),
                    webhooks: root.webhooks(Arc::new(NoTransport), DeliverySettings::default()),
                };
                Some((aws_sdk_dynamodb::Client::new(&sdk), b.table.clone(), handlers))
            }
        };
        root.ports
            .keys
            .put(&ApiKeyRecord { key_hash: hash_api_key(KEY), tenant: tenant(), created_at: 1 })
            .await
            .unwrap();
        Pipeline { service: root.service(), root, webhooks, stream, _stop: tx }
    }

    async fn item(&self, job: &Job) -> Option<HashMap<String, AttributeValue>> {
        let (client, table, _) = self.stream.as_ref()?;
        let out = client.get_item().table_name(table).key("pk", AttributeValue::S(format!("job#{}", job.id)));
        out.send().await.unwrap().item
    }

    async fn write(&self, job: &Job, t: Transition) -> Job {
        let before = self.item(job).await;
        let next = self.service.apply(job, t).await.unwrap();
        self.streamed(before, &next).await;
        next
    }

    /// On moto: the stream record of `job`'s write over `before`, through the dispatcher.
    async fn streamed(&self, before: Option<HashMap<String, AttributeValue>>, job: &Job) {
        let Some((_, _, handlers)) = &self.stream else { return };
        let after = self.item(job).await.expect("the job item");
        let mut dynamodb = json!({"NewImage": ferry_tests::fixtures::stream_image(&after)});
        if let Some(before) = &before {
            dynamodb["OldImage"] = ferry_tests::fixtures::stream_image(before);
        }
        let event = json!({"Records": [{"eventSource": "aws:dynamodb",
            "eventName": if before.is_some() { "MODIFY" } else { "INSERT" }, "dynamodb": dynamodb}]});
        ferry_dispatcher_lambda::handle(handlers, event).await.expect("the stream batch is handled");
    }

    async fn submit(&self, url: &str) -> Job {
        let body = json!({"model": "all-minilm-l6-v2", "input": {"texts": ["hi"]}, "webhook": {"url": url}});
        let valid = parse_submit(body.to_string().as_bytes(), &self.root.catalog, &self.root.config).unwrap();
        let job = self.service.submit(&tenant(), valid, None, "t").await.unwrap().job().clone();
        self.streamed(None, &job).await;
        job
    }

    async fn run_to_success(&self, job: &Job) -> Job {
        let claim = Transition::Claim { executor_id: "e1".into(), lease_until: u64::MAX / 2 };
        let running = self.write(job, claim).await;
        let output = Output::Inline(json!({"embeddings": [[0.25, -0.5]], "dimensions": 2}));
        self.write(&running, Transition::Succeed { output }).await
    }

    async fn api(&self, method: &str, path: &str) -> (u16, Value) {
        let api = ferry_http::Api::new(&self.root);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {KEY}"))
            .body(Bytes::new())
            .unwrap();
        let resp = api.handle(req).await;
        (resp.status().as_u16(), serde_json::from_slice(resp.body()).unwrap_or(Value::Null))
    }
}

/// One stop signal for two tasks.
fn split(
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (impl Future<Output = ()>, impl Future<Output = ()>) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = tx.send(true);
    });
    let mut a = rx.clone();
    let mut b = rx;
    (
        async move {
            let _ = a.wait_for(|s| *s).await;
        },
        async move {
            let _ = b.wait_for(|s| *s).await;
        },
    )
}

/// POSTs `body` as JSON to `path` of `root`'s HTTP API, with the test key.
async fn post_json(root: &Root, path: &str, body: &Value) -> (u16, Value) {
    let req = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Bytes::from(body.to_string()))
        .unwrap();
    let resp = ferry_http::Api::new(root).handle(req).await;
    (resp.status().as_u16(), serde_json::from_slice(resp.body()).unwrap_or(Value::Null))
}

fn tenant() -> TenantId {
    TenantId::new("acme").unwrap()
}

async fn retried_until_accepted(b: Backend) {
    let receiver = Receiver::start(&[Reply::Status(500, None), Reply::Status(429, Some("1"))]).await;
    let p = Pipeline::start(&b, Duration::from_secs(5)).await;
    let secrets = p.root.ports.webhook_secrets.clone();
    let old = signing_secrets(secrets.as_ref(), &tenant(), p.service.clock.now()).await.unwrap().remove(0);
    let job = p.submit(&receiver.url()).await;
    let done = p.run_to_success(&job).await;

    receiver.wait_for(1, Duration::from_secs(20)).await;
    // Rotated after the first try: the retries carry both signatures.
    let new = rotate(secrets.as_ref(), &tenant(), p.service.clock.now()).await.unwrap().remove(0);
    let got = receiver.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 3, "{}: three tries", b.name);
    let id = format!("msg_{}_completed", job.id);
    for r in &got {
        assert_eq!(r.headers["webhook-id"], id, "the same webhook-id on every try");
        assert_eq!(r.headers["content-type"], "application/json");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["type"], "job.completed");
        let view = serde_json::to_value(p.service.view(&p.service.get(&tenant(), &job.id).await.unwrap()).await);
        assert_eq!(body["data"], view.unwrap(), "the body is the final job view");
        assert_eq!(body["data"]["status"], "succeeded");
        assert_eq!(body["data"]["output"], json!({"embeddings": [[0.25, -0.5]], "dimensions": 2}));
        assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    assert_eq!(done.status, JobStatus::Succeeded);
    assert!(got[1].at - got[0].at >= Duration::from_millis(290), "the schedule's delay after the 500");
    assert!(got[2].at - got[1].at >= Duration::from_millis(990), "the 429's Retry-After: 1");
    assert_eq!(got[0].headers["webhook-signature"].split(' ').count(), 1);
    assert_eq!(got[2].headers["webhook-signature"].split(' ').count(), 2, "during the overlap, both");
    let (old, new) = (old.encode(), new.encode());
    let cases = [
        (old.clone(), &got[0]),
        (new.clone(), &got[0]),
        (old.clone(), &got[1]),
        (new.clone(), &got[1]),
        (old.clone(), &got[2]),
        (new.clone(), &got[2]),
        (WebhookSecret::generate().encode(), &got[2]),
    ];
    let cases: Vec<Case> = cases
        .into_iter()
        .map(|(secret, r)| Case { secret, body: r.body.to_vec(), headers: r.headers.clone() })
        .collect();
    if let Some(verified) = verifies(&cases) {
        assert_eq!(verified, [true, false, true, true, true, true, false], "{}", b.name);
    }

    // The record, through the API: one delivery, three tries, delivered.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, list) = loop {
        let (status, list) = p.api("GET", &format!("/v1/jobs/{}/webhooks", job.id)).await;
        if list["deliveries"][0]["state"] == "delivered" || Instant::now() > deadline {
            break (status, list);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{list}");
    let deliveries = list["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{list}");
    let d = &deliveries[0];
    assert_eq!(
        (d["id"].as_str(), d["type"].as_str(), d["url"].as_str()),
        (Some(id.as_str()), Some("job.completed"), Some(receiver.url().as_str()))
    );
    assert_eq!(d["state"], "delivered");
    assert_eq!(d["next_try_at"], Value::Null);
    let codes: Vec<&Value> = d["attempts"].as_array().unwrap().iter().map(|a| &a["status"]).collect();
    assert_eq!(codes, [&json!(500), &json!(429), &json!(200)]);

    // Redelivery: the same id once more, on request.
    let (status, queued) = p.api("POST", &format!("/v1/jobs/{}/webhooks/redeliver", job.id)).await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["deliveries"][0]["id"], id.as_str());
    let got = receiver.wait_for(4, Duration::from_secs(20)).await;
    assert_eq!(got[3].headers["webhook-id"], id);
    let (status, _) = p.api("GET", "/v1/jobs/01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B/webhooks").await;
    assert_eq!(status, 404, "another tenant's or no job");
}

/// A receiver that never answers holds one delivery for the timeout, and nothing else: the
/// job's end, a cancel and another job's delivery go on at once.
async fn a_hanging_receiver_delays_nothing(b: Backend) {
    let hang = Receiver::start(&[Reply::Hang, Reply::Hang, Reply::Hang]).await;
    let ok = Receiver::start(&[]).await;
    let timeout = Duration::from_secs(5);
    let p = Pipeline::start(&b, timeout).await;
    let slow = p.submit(&hang.url()).await;
    let slow_done = p.run_to_success(&slow).await;
    hang.wait_for(1, Duration::from_secs(10)).await;
    // While that try hangs: a cancel, and another job end to end.
    let queued = p.submit(&hang.url()).await;
    let cancel_started = Instant::now();
    let cancelled = p.service.cancel(&tenant(), &queued.id).await.unwrap();
    assert!(cancel_started.elapsed() < timeout, "the cancel did not wait on the hanging try");
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    let fast = p.submit(&ok.url()).await;
    p.run_to_success(&fast).await;
    ok.wait_for(1, Duration::from_secs(10)).await;
    let slow_tries = &p.webhooks.list(&tenant(), &slow.id).await.unwrap()[0].attempts;
    assert!(slow_tries.is_empty(), "delivered while the other try still hangs: {slow_tries:?}");
    assert_eq!(slow_done.status, JobStatus::Succeeded);

    // The hanging try ends at the timeout, recorded, with a retry due.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = p.webhooks.list(&tenant(), &slow.id).await.unwrap();
        let d = &list[0];
        if let Some(a) = d.attempts.first() {
            assert_eq!(a.status, None);
            assert!(a.error.as_deref().is_some_and(|e| e.contains("no answer") || e.contains("timed out")), "{a:?}");
            assert!(a.duration_ms >= timeout.as_millis() as u64 - 100, "{a:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the hanging try was never recorded: {d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Names resolve from a table: `metadata.test` to the cloud metadata address, `private.test`
/// (and so does `metadata.localhost`, a name `ferry dev` would call over http), `private.test`
/// to a private one, `public.test` to a public one, `loop.localhost` to loopback.
struct Names;

#[async_trait]
impl Resolver for Names {
    async fn lookup(&self, host: &str, _port: u16) -> std::io::Result<Vec<IpAddr>> {
        let ip = match host {
            "metadata.test" | "metadata.localhost" => "169.254.169.254",
            "private.test" => "10.0.0.7",
            "public.test" => "93.184.216.34",
            "loop.localhost" => "127.0.0.1",
            _ => return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no such name")),
        };
        Ok(vec![ip.parse().unwrap()])
    }
}

#[tokio::test]
async fn refused_urls_are_422_at_submit_naming_webhook_url() {
    let b = backends::embedded();
    for (policy, url, accepted) in [
        (UrlPolicy::AWS, "http://public.test/h", false),
        (UrlPolicy::AWS, "https://10.1.2.3/h", false),
        (UrlPolicy::AWS, "https://127.0.0.1/h", false),
        (UrlPolicy::AWS, "https://private.test/h", false),
        (UrlPolicy::AWS, "https://metadata.test/h", false),
        (UrlPolicy::AWS, "https://[fd00:ec2::254]/h", false),
        (UrlPolicy::AWS, "https://nowhere.test/h", false),
        (UrlPolicy::AWS, "https://public.test/h", true),
        (UrlPolicy::LOCAL, "http://169.254.169.254/latest", false),
        (UrlPolicy::LOCAL, "http://metadata.localhost/h", false),
        (UrlPolicy::LOCAL, "https://metadata.test/h", false),
        (UrlPolicy::LOCAL, "http://loop.localhost:9/h", true),
        (UrlPolicy::LOCAL, "http://127.0.0.1:9/h", true),
    ] {
        let ports = ferry_core::root::Ports { resolver: Arc::new(Names), ..b.ports.clone() };
        let config = Config { webhook_policy: policy, ..Config::default() };
        let root = Root::new(ports, Catalog::demo(), Pools::default(), config);
        root.ports
            .keys
            .put(&ApiKeyRecord { key_hash: hash_api_key(KEY), tenant: tenant(), created_at: 1 })
            .await
            .unwrap();
        let body = json!({"model": "all-minilm-l6-v2", "input": {"texts": ["hi"]}, "webhook": {"url": url}});
        let (status, answer) = post_json(&root, "/v1/jobs", &body).await;
        if accepted {
            assert_eq!(status, 202, "{url}: {answer}");
        } else {
            assert_eq!(status, 422, "{url}: {answer}");
            assert_eq!(answer["error"]["field"], "webhook.url", "{url}: {answer}");
        }
    }
}

#[tokio::test]
async fn the_transport_checks_the_address_it_connects_to() {
    let receiver = Receiver::start(&[]).await;
    let port = receiver.addr.unwrap().port();
    let transport = HttpTransport::new(UrlPolicy::LOCAL, Arc::new(Names)).unwrap();
    let post =
        |url: String| WebhookPost { url, headers: vec![], body: b"{}".to_vec(), timeout: Duration::from_secs(5) };
    let ok = transport.post(post(format!("http://loop.localhost:{port}/h"))).await.unwrap();
    assert_eq!(ok.status, 200, "a name resolving to loopback is allowed under ferry dev");
    let refused = transport.post(post(format!("http://metadata.localhost:{port}/h"))).await;
    assert!(matches!(refused, Err(TransportError::Refused(_))), "{refused:?}");
    let literal = transport.post(post("http://169.254.169.254/latest/meta-data".into())).await;
    assert!(matches!(literal, Err(TransportError::Refused(_))), "{literal:?}");
    let aws = HttpTransport::new(UrlPolicy::AWS, Arc::new(Names)).unwrap();
    let private = aws.post(post("https://private.test/h".into())).await;
    assert!(matches!(private, Err(TransportError::Refused(_))), "{private:?}");
    assert_eq!(receiver.got().len(), 1, "only the allowed one arrived");
}

#[tokio::test]
async fn the_delivery_record_follows_its_state() {
    // A 410 disables the endpoint for the tenant; redelivery enables it again.
    let receiver = Receiver::start(&[Reply::Status(410, None)]).await;
    let b = backends::embedded();
    let p = Pipeline::start(&b, Duration::from_secs(5)).await;
    let job = p.submit(&receiver.url()).await;
    p.run_to_success(&job).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.webhooks.list(&tenant(), &job.id).await.unwrap()[0].state != DeliveryState::Disabled {
        assert!(Instant::now() < deadline, "the 410 was not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another job to the same URL is not posted while it is disabled.
    let second = p.submit(&receiver.url()).await;
    p.run_to_success(&second).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.webhooks.list(&tenant(), &second.id).await.unwrap().first().map(|d| d.state)
        != Some(DeliveryState::Disabled)
    {
        assert!(Instant::now() < deadline, "the disabled endpoint was not honoured");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.got().len(), 1);
    let (status, _) = p.api("POST", &format!("/v1/jobs/{}/webhooks/redeliver", second.id)).await;
    assert_eq!(status, 202);
    receiver.wait_for(2, Duration::from_secs(10)).await;
}

/// `started` once, `output` at most once a second while progress is published, `completed`
/// once; each with its own webhook-id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_output_and_completed_are_delivered_output_coalesced() {
    let receiver = Receiver::start(&[]).await;
    let b = backends::embedded();
    let p = Pipeline::start(&b, Duration::from_secs(5)).await;
    let body = json!({"model": "all-minilm-l6-v2", "input": {"texts": ["hi"]},
        "webhook": {"url": receiver.url(), "events": ["output", "started", "completed"]}});
    let valid = parse_submit(body.to_string().as_bytes(), &p.root.catalog, &p.root.config).unwrap();
    let job = p.service.submit(&tenant(), valid, None, "t").await.unwrap().job().clone();
    let claim = Transition::Claim { executor_id: "e1".into(), lease_until: u64::MAX / 2 };
    let running = p.write(&job, claim).await;
    let started = Instant::now();
    for i in 0..30 {
        let token = ferry_core::progress::EventBody::Percentage { percent: i as f32, message: None };
        p.service.progress.publish_progress(&job.id, token).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs() + 2; // the windows the progress may touch
    let running = p.service.get(&tenant(), &running.id).await.unwrap();
    let output = Output::Inline(json!({"embeddings": [[1.0]], "dimensions": 1}));
    p.write(&running, Transition::Succeed { output }).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let (kinds, ids) = loop {
        let got = receiver.got();
        let kinds: Vec<String> = got
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["type"].as_str().unwrap().to_string())
            .collect();
        if kinds.iter().any(|k| k == "job.completed") || Instant::now() > deadline {
            let ids: Vec<String> = got.iter().map(|r| r.headers["webhook-id"].clone()).collect();
            break (kinds, ids);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let count = |k: &str| kinds.iter().filter(|x| *x == k).count() as u64;
    assert_eq!((count("job.started"), count("job.completed")), (1, 1), "{kinds:?}");
    let outputs = count("job.output");
    assert!((1..=seconds).contains(&outputs), "{outputs} output deliveries for 30 events in {seconds} windows");
    let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "one webhook-id per event: {ids:?}");
    assert!(ids.iter().any(|i| *i == format!("msg_{}_started", job.id)));
}

/// A receiver answering one status.
struct Answers(u16);

#[async_trait]
impl WebhookTransport for Answers {
    async fn post(&self, _: WebhookPost) -> Result<ferry_core::deliver::WebhookResponse, TransportError> {
        Ok(ferry_core::deliver::WebhookResponse { status: self.0, retry_after: None })
    }
}

/// The Lambda's handler on `events/webhooks/sqs-batch.json`, its first record pointed at a
/// real delivery whose receiver answers 503: both records stay in the queue (reported), the
/// first hidden until its retry is due (the schedule's 5 s).
#[tokio::test]
async fn the_lambdas_handler_reports_the_records_to_keep() {
    let b = backends::embedded();
    let root = Root::new(b.ports.clone(), Catalog::demo(), Pools::default(), Config::default());
    let mut job = ferry_tests::fixtures::job("acme", JobStatus::Succeeded);
    job.webhook = Some(ferry_core::webhook::WebhookRequest {
        url: "https://93.184.216.34/hook".into(),
        events: vec![ferry_core::webhook::WebhookEvent::Completed],
    });
    root.ports.jobs.create(&job, None).await.unwrap();
    let webhooks = root.webhooks(Arc::new(Answers(503)), DeliverySettings::default());
    let running = Job { status: JobStatus::Running, ..job.clone() };
    webhooks.enqueue(&[ferry_core::ports::JobChange::between(Some(&running), &job)]).await.unwrap();
    let queue = root.ports.webhook_queue.clone();
    let got = queue.receive(1, Duration::ZERO, Duration::from_secs(60)).await.unwrap().remove(0);

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/webhooks/sqs-batch.json");
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    event["Records"][0]["body"] = json!(serde_json::to_string(&got.message).unwrap());
    event["Records"][0]["receiptHandle"] = json!(got.receipt);
    let answer = ferry_webhooks_lambda::handle(&webhooks, event.clone()).await;
    let ids: Vec<&Value> = event["Records"].as_array().unwrap().iter().map(|r| &r["messageId"]).collect();
    let failures: Vec<&Value> =
        answer["batchItemFailures"].as_array().unwrap().iter().map(|f| &f["itemIdentifier"]).collect();
    assert_eq!(failures.len(), 2, "{answer}");
    assert!(ids.iter().all(|id| failures.contains(id)), "{answer}");
    let d = &webhooks.list(&tenant(), &job.id).await.unwrap()[0];
    assert_eq!((d.state, d.tries, d.attempts[0].status), (DeliveryState::Pending, 1, Some(503)));
    let due = d.next_try_at.unwrap() - d.attempts[0].at;
    assert_eq!(due, 5_000, "the schedule's first delay");
    assert!(queue.receive(1, Duration::ZERO, Duration::from_secs(60)).await.unwrap().is_empty(), "hidden until then");
}

/// The OpenAI-compatible routes take `webhook` as an extension field, checked as on submit: a
/// refused URL is an OpenAI-shaped error naming `webhook.url`, and nothing is queued.
#[tokio::test]
async fn openai_routes_check_the_webhook_extension() {
    let b = backends::embedded();
    let root = Root::new(b.ports.clone(), Catalog::demo(), Pools::default(), Config::default());
    root.ports.keys.put(&ApiKeyRecord { key_hash: hash_api_key(KEY), tenant: tenant(), created_at: 1 }).await.unwrap();
    let body = json!({"model": "all-minilm-l6-v2", "input": "hi", "webhook": {"url": "https://169.254.169.254/x"}});
    let (status, answer) = post_json(&root, "/openai/v1/embeddings", &body).await;
    assert!((400..500).contains(&status), "{answer}");
    assert_eq!(answer["error"]["param"], "webhook.url", "{answer}");
    assert_eq!(b.queue.depth().await.unwrap(), ferry_core::ports::QueueDepth::default(), "nothing queued");
}

/// On AWS a tenant's secrets are sealed by KMS under the tenant's encryption context: the item
/// holds ciphertext only, and a store without the key cannot read it (a clear error, not a
/// wrong secret).
#[tokio::test]
async fn secrets_are_sealed_by_kms_on_aws() {
    let Some(b) = backends::aws().await else { return eprintln!("skipping: moto not installed") };
    let store = b.ports.webhook_secrets.clone();
    let first = signing_secrets(store.as_ref(), &tenant(), 1).await.unwrap();
    assert_eq!(signing_secrets(store.as_ref(), &tenant(), 2).await.unwrap(), first, "read back through KMS");
    let moto = ferry_tests::moto::shared().unwrap();
    let sdk = ferry_aws::sdk_config_for_endpoint(&moto.endpoint).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let item = dynamo
        .get_item()
        .table_name(&b.table)
        .key("pk", AttributeValue::S("whsec#acme".into()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let AttributeValue::B(blob) = &item["secrets_kms"] else { panic!("{item:?}") };
    let secret = first[0].encode();
    let raw = String::from_utf8_lossy(blob.as_ref()).to_string() + &format!("{item:?}");
    assert!(!raw.contains(&secret) && !raw.contains("whsec_"), "no secret in the clear: {item:?}");
    assert!(!item.contains_key("secrets"));
    let unkeyed = ferry_aws::DynamoWebhookSecrets::new(dynamo, &b.table);
    let err = ferry_core::ports::WebhookSecretStore::get(&unkeyed, &tenant()).await.unwrap_err();
    assert!(err.to_string().contains("FERRY_WEBHOOK_KEY_ID"), "{err}");
}

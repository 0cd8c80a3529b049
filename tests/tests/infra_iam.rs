//! Every AWS call each component makes is allowed by its role in `infra/iam.tf`, and the
//! role allows nothing more. Each component is built exactly as its binary builds it (the
//! Lambdas' `build` functions, the executor's `cli::build`), pointed at its own recording
//! proxy in front of moto, and driven through all of its work: every path that calls AWS.
//! What the proxy saw (as IAM actions) must equal the actions of the role's policy
//! document, less the statements AWS services use on the role's behalf (KMS through
//! DynamoDB and S3, CloudWatch Logs, X-Ray, the Lambda service reading the table's stream).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args as _, FromArgMatches as _};
use ferry_core::catalog::Catalog;
use ferry_core::job::{Job, JobStatus};
use ferry_core::ports::{ApiKeyRecord, Connection, MessageQueue, WorkMessage};
use ferry_executor::models::{LoadedModel, ModelError, Progress, RunOutcome, Runner};
use ferry_tests::backends::unique_name;
use ferry_tests::recorder::Recorder;
use ferry_tests::{ecs, infra};
use serde_json::{Value, json};

const KEY: &str = "fry_iam_test_key";
/// A stored output, as the results bucket holds it.
const STORED_OUTPUT: &str = r#"{"text":"stored"}"#;

fn infra_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra")
}

/// The role's actions our code must be the one to call (service-side statements removed:
/// KMS but the code's own sealing of webhook secrets, and for the webhooks role the SQS event
/// source mapping's receive, delete and depth).
fn granted(role: &str) -> BTreeSet<String> {
    let own_kms = infra::policy_actions(&infra_dir(), &infra::role_policy_document(&infra_dir(), role))
        .remove("WebhookSecretsKey")
        .unwrap_or_default();
    let service_side = |a: &str| {
        (a.starts_with("kms:") && !own_kms.contains(a))
            || a.starts_with("logs:")
            || a.starts_with("xray:")
            || ["dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:DescribeStream", "dynamodb:ListStreams"]
                .contains(&a)
            || (role == "webhooks"
                && ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"].contains(&a))
    };
    let document = infra::role_policy_document(&infra_dir(), role);
    infra::policy_actions(&infra_dir(), &document).into_values().flatten().filter(|a| !service_side(a)).collect()
}

/// The item kinds the role's code reached equal those its `dynamodb:LeadingKeys`
/// conditions allow: no role reaches items of a kind it has no use for.
fn assert_role_keys(role: &str, recorded: &BTreeSet<String>) {
    let granted = infra::policy_leading_keys(&infra_dir(), &infra::role_policy_document(&infra_dir(), role));
    assert_eq!(&granted, recorded, "the {role} role's dynamodb:LeadingKeys (left) against the keys its code reached");
}

fn assert_role(role: &str, recorded: &BTreeSet<String>) {
    let granted = granted(role);
    let denied: Vec<&String> = recorded.difference(&granted).collect();
    let unused: Vec<&String> = granted.difference(recorded).collect();
    assert!(
        denied.is_empty(),
        "the {role} role does not allow {denied:?}, which its code calls (recorded: {recorded:?})"
    );
    assert!(
        unused.is_empty(),
        "the {role} role allows {unused:?}, which its code never calls (recorded: {recorded:?})"
    );
}

/// A deployment on moto: the table, a queue and DLQ per pool, an ECS cluster (Fargate for
/// `cpu`, an EC2 GPU capacity provider for `gpu`), a models bucket with a tiny Llama.
struct Deployment {
    moto: ecs::EcsMoto,
    env: BTreeMap<String, String>,
    table: String,
    cluster: String,
    catalog: Catalog,
    queues: BTreeMap<&'static str, (String, String)>,
    /// The deployment's composition root, as the Lambdas build it (without recording).
    root: ferry_core::root::Root,
    cache: PathBuf,
    /// The results bucket.
    results: String,
    webhook_queue: String,
}

async fn deploy() -> Option<Deployment> {
    let moto = ecs::moto().await?;
    let ecs::TwoPoolCluster { cluster, provider, gpu_family, cpu_family, subnet, security_group: sg } =
        moto.two_pool_cluster().await;

    let dynamo = aws_sdk_dynamodb::Client::new(&moto.sdk);
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk);
    let table = unique_name();
    ferry_aws::ensure_table(&dynamo, &table).await.unwrap();
    let mut queues = BTreeMap::new();
    for pool in ["cpu", "gpu"] {
        let urls = ferry_aws::ensure_queues(&sqs, &format!("{table}-{pool}"), 5).await.unwrap();
        queues.insert(pool, (urls.queue_url, urls.dlq_url));
    }
    let s3 = ferry_aws::s3_client(&moto.sdk);
    let bucket = unique_name();
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let local = std::env::temp_dir().join(format!("ferry-iam-{}", ulid::Ulid::new()));
    ferry_executor::testing::write_tiny_llama(&local, 5).unwrap();
    for entry in std::fs::read_dir(&local).unwrap() {
        let path = entry.unwrap().path();
        let key = format!("models/tiny/{}", path.file_name().unwrap().to_str().unwrap());
        let body = aws_sdk_s3::primitives::ByteStream::from(std::fs::read(&path).unwrap());
        s3.put_object().bucket(&bucket).key(key).body(body).send().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&local);
    let results = unique_name();
    s3.create_bucket().bucket(&results).send().await.unwrap();
    let webhooks = sqs.create_queue().queue_name(format!("{table}-webhooks")).send().await.unwrap();
    let webhook_queue = webhooks.queue_url().unwrap().to_string();

    let catalog = json!({"models": [
        {"id": "s3-llama", "task": "text-generation", "pool": "cpu", "s3_uri": format!("s3://{bucket}/models/tiny/")},
        {"id": "flaky", "task": "text-generation", "pool": "cpu"},
        {"id": "gpu-llama", "task": "text-generation", "pool": "gpu"}
    ]})
    .to_string();
    let pools = json!({"pools": [
        {"name": "gpu", "max_tasks": 2, "queue_url": queues["gpu"].0, "dlq_url": queues["gpu"].1,
         "ecs": {"cluster": cluster, "task_definition": gpu_family, "container": ecs::CONTAINER,
                 "capacity_providers": [{"name": provider}]}},
        {"name": "cpu", "max_tasks": 2, "queue_url": queues["cpu"].0, "dlq_url": queues["cpu"].1,
         "ecs": {"cluster": cluster, "task_definition": cpu_family, "container": ecs::CONTAINER,
                 "capacity_providers": [{"name": "FARGATE"}], "subnets": [subnet], "security_groups": [sg]}}
    ]})
    .to_string();
    let env: BTreeMap<String, String> = [
        ("FERRY_TABLE", table.clone()),
        ("FERRY_QUEUE_URL", queues["cpu"].0.clone()),
        ("FERRY_DLQ_URL", queues["cpu"].1.clone()),
        ("FERRY_MODELS", catalog.clone()),
        ("FERRY_POOLS", pools),
        ("FERRY_CANCEL_GRACE_S", "30".into()),
        ("FERRY_RESULTS_BUCKET", results.clone()),
        ("FERRY_WEBHOOK_QUEUE_URL", webhook_queue.clone()),
        ("FERRY_WEBHOOK_KEY_ID", ferry_tests::backends::moto_kms_key(&moto.sdk).await),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let catalog = Catalog::from_json(&catalog).unwrap();
    let lookup = |k: &str| env.get(k).cloned();
    let root = ferry_aws::root_from_lookup(&moto.sdk, &lookup).await.unwrap();
    let record = ApiKeyRecord {
        key_hash: ferry_core::auth::hash_api_key(KEY),
        tenant: ferry_core::TenantId::new("acme").unwrap(),
        created_at: 1,
    };
    root.ports.keys.put(&record).await.unwrap();
    let cache = std::env::temp_dir().join(format!("ferry-iam-cache-{}", ulid::Ulid::new()));
    let root = ferry_core::root::Root {
        ports: ferry_core::root::Ports {
            objects: ferry_aws::AwsPorts::new(&moto.sdk, &table).with_results_bucket(Some(&results)).objects(),
            ..root.ports
        },
        ..root
    };
    Some(Deployment { moto, env, table, cluster, catalog, queues, root, cache, results, webhook_queue })
}

impl Deployment {
    /// A recorder, the environment with the Management endpoint on it, and an SDK config
    /// for the component.
    async fn component(&self) -> (Recorder, BTreeMap<String, String>, ferry_aws::SdkConfig) {
        let rec = Recorder::start(&self.moto.endpoint).await;
        let mut env = self.env.clone();
        env.insert("FERRY_WS_MANAGEMENT_ENDPOINT".into(), format!("{}/live", rec.endpoint));
        let sdk = ferry_aws::sdk_config_for_endpoint(&rec.endpoint).await;
        (rec, env, sdk)
    }

    /// A job written directly (not through any component), with its queue message.
    async fn job(&self, model: &str, status: JobStatus, edit: impl FnOnce(&mut Job)) -> Job {
        let mut j = ferry_tests::fixtures::job("acme", status);
        j.model = model.into();
        j.input = ferry_tests::fixtures::generate("the river", 4);
        edit(&mut j);
        self.root.ports.jobs.create(&j, None).await.unwrap();
        if status == JobStatus::Queued {
            let pool = self.catalog.get(model).unwrap().pool.clone();
            self.root.ports.queues.for_pool(&pool).send(&WorkMessage::for_job(&j, "iam")).await.unwrap();
        }
        j
    }

    /// A succeeded job whose output ([`STORED_OUTPUT`]) is in the results bucket.
    async fn job_with_stored_output(&self) -> Job {
        let key = format!("outputs/{}/1.json", ulid::Ulid::new());
        self.root.ports.objects.put(&key, STORED_OUTPUT.as_bytes().to_vec()).await.unwrap();
        self.job("s3-llama", JobStatus::Succeeded, |j| {
            j.output_object =
                Some(ferry_core::objects::ObjectRef { key: key.clone(), bytes: STORED_OUTPUT.len() as u64 });
        })
        .await
    }

    /// A queued job of `model` whose input is in the results bucket.
    async fn job_with_stored_input(&self, model: &str) -> Job {
        let (input, body) =
            ferry_core::input::Input::for_record(ferry_core::input::JobInput::prompt("long ".repeat(20_000)), || {
                format!("inputs/{}.json", ulid::Ulid::new())
            });
        let object = input.object().expect("stored").clone();
        self.root.ports.objects.put(&object.key, body.unwrap()).await.unwrap();
        self.job(model, JobStatus::Queued, |j| j.input = input).await
    }

    /// A job with a webhook that just ended (written directly), its deliveries queued as the
    /// dispatcher would (not recorded); the job.
    async fn webhook_job(&self, edit: impl FnOnce(&mut Job)) -> Job {
        let hook = ferry_core::webhook::WebhookRequest {
            url: "https://93.184.216.34/hook".into(),
            events: vec![ferry_core::webhook::WebhookEvent::Completed],
        };
        let job = self
            .job("s3-llama", JobStatus::Succeeded, |j| {
                j.webhook = Some(hook);
                edit(j);
            })
            .await;
        let running = Job { status: JobStatus::Running, ..job.clone() };
        let change = ferry_core::ports::JobChange::between(Some(&running), &job);
        let webhooks = self.root.webhooks(Arc::new(ferry_core::deliver::NoTransport), Default::default());
        assert_eq!(webhooks.enqueue(&[change]).await.unwrap(), 1);
        job
    }

    /// Two subscribers on `job`: one live, one whose socket is gone (410: its record is deleted).
    async fn subscribe(&self, job: &Job) {
        for id in [format!("live-{}", ulid::Ulid::new()), format!("gone-{}", ulid::Ulid::new())] {
            let c =
                Connection { id: id.clone(), tenant: job.tenant.clone(), connected_at: 1, expires_at: u64::MAX / 2 };
            self.root.ports.connections.put(&c).await.unwrap();
            self.root.ports.connections.subscribe(&id, &job.id).await.unwrap();
        }
    }

    /// A running executor task of `pool` (started without recording).
    async fn task(&self, pool: &str) -> String {
        let cfg = self.root.pools.get(pool).unwrap();
        self.root.ports.launcher.launch(cfg, 1).await.unwrap().task_ids.remove(0)
    }
}

/// Every path of the api Lambda that calls AWS: models, pools, a submit and its cancel, a
/// large input, a stored output's URL and redirect, reads; an OpenAI stream whose client
/// goes away. `tag` keeps each run's idempotency keys its own. The cancelled job's id.
async fn drive_api(d: &Deployment, api: &ferry_http::Api, tag: &str) -> String {
    assert_eq!(request(api, "GET", "/v1/models", None).await.0, 200);
    let (status, pools) = request(api, "GET", "/v1/pools", None).await;
    assert_eq!(status, 200, "{pools}");
    // The tenant's webhook secrets: made on first use, rotated.
    for (method, path) in [("GET", "/v1/webhooks/secret"), ("POST", "/v1/webhooks/secret/rotate")] {
        let (status, secrets) = request(api, method, path, None).await;
        assert_eq!(status, 200, "{path}: {secrets}");
    }
    // An input object stored (POST /v1/inputs) and read back.
    let (status, stored) = request(api, "POST", "/v1/inputs", Some(json!({"any": "bytes"}))).await;
    assert_eq!(status, 201, "{stored}");
    let read = raw_request(api, "GET", &format!("/v1/inputs/{}", stored["id"].as_str().unwrap())).await;
    assert_eq!(read.status(), 200);
    let (status, job) = request_with_key(
        api,
        "POST",
        "/v1/jobs",
        Some(json!({"model": "s3-llama", "input": {"prompt": "hi"}})),
        &format!("{tag}-1"),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let job_record = d.root.ports.jobs.get(&id.parse().unwrap()).await.unwrap().unwrap();
    d.subscribe(&job_record).await;
    assert_eq!(request(api, "POST", &format!("/v1/jobs/{id}/cancel"), None).await.0, 200);
    // An input over the inline threshold is stored in the results bucket.
    let large = json!({"model": "s3-llama", "input": {"prompt": "long ".repeat(20_000)}});
    let (status, job) = request_with_key(api, "POST", "/v1/jobs", Some(large), &format!("{tag}-large")).await;
    assert_eq!(status, 202, "{job}");
    assert!(job["input"].is_null() && job["input_bytes"].as_u64() > Some(65_536), "{job}");
    // A finished job whose output is stored: its view carries a presigned URL (the
    // fetch through it is authorized as the api role's GetObject), its output route
    // redirects there.
    let stored = d.job_with_stored_output().await;
    let (status, view) = request(api, "GET", &format!("/v1/jobs/{}", stored.id), None).await;
    assert_eq!(status, 200, "{view}");
    let url = view["output_url"].as_str().expect("a presigned output URL").to_string();
    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), 200, "{url}");
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), STORED_OUTPUT.as_bytes());
    let redirect = raw_request(api, "GET", &format!("/v1/jobs/{}/output", stored.id)).await;
    assert_eq!(redirect.status(), 307);
    assert!(redirect.headers()["location"].to_str().unwrap().contains("X-Amz-Signature"));
    // A job's webhook deliveries: listed, and sent again.
    let hooked = d.webhook_job(|_| {}).await;
    let (status, list) = request(api, "GET", &format!("/v1/jobs/{}/webhooks", hooked.id), None).await;
    assert_eq!((status, list["deliveries"].as_array().map(Vec::len)), (200, Some(1)), "{list}");
    let (status, queued) = request(api, "POST", &format!("/v1/jobs/{}/webhooks/redeliver", hooked.id), None).await;
    assert_eq!(status, 202, "{queued}");
    // After the cancel the job has a stored event to read back.
    for path in [format!("/v1/jobs/{id}"), "/v1/jobs".to_string(), format!("/v1/jobs/{id}/events")] {
        let (status, body) = request(api, "GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // An OpenAI chat stream: submitted, its first event read, then the client goes away
    // (the job is cancelled).
    let body = json!({"model": "s3-llama", "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let req = http::Request::builder()
        .method("POST")
        .uri("/openai/v1/chat/completions")
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("idempotency-key", format!("{tag}-openai"));
    let resp = api.stream(req.body(bytes::Bytes::from(body.to_string())).unwrap()).await;
    assert_eq!(resp.status(), 200);
    let job: ferry_core::JobId = resp.headers()["ferry-job-id"].to_str().unwrap().parse().unwrap();
    let mut frames = resp.into_body().into_data_stream();
    let first = futures_util::StreamExt::next(&mut frames).await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    drop(frames);
    for _ in 0..100 {
        if d.root.ports.jobs.get(&job).await.unwrap().unwrap().cancel_requested_at.is_some() {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the stream's job was not cancelled");
}

async fn request(api: &ferry_http::Api, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    request_with_key(api, method, path, body, "iam-1").await
}

async fn raw_request(api: &ferry_http::Api, method: &str, path: &str) -> http::Response<bytes::Bytes> {
    let req = http::Request::builder().method(method).uri(path).header("authorization", format!("Bearer {KEY}"));
    api.handle(req.body(bytes::Bytes::new()).unwrap()).await
}

async fn request_with_key(
    api: &ferry_http::Api,
    method: &str,
    path: &str,
    body: Option<Value>,
    idempotency_key: &str,
) -> (u16, Value) {
    let mut req = http::Request::builder().method(method).uri(path).header("authorization", format!("Bearer {KEY}"));
    if body.is_some() {
        req = req.header("content-type", "application/json").header("idempotency-key", idempotency_key);
    }
    let body = body.map(|b| bytes::Bytes::from(b.to_string())).unwrap_or_default();
    let resp = api.handle(req.body(body).unwrap()).await;
    let status = resp.status().as_u16();
    (status, serde_json::from_slice(resp.body()).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_role_allows_exactly_what_its_component_calls() {
    // The components' logs, shown when the test fails.
    let _ = tracing_subscriber::fmt().with_env_filter("info,aws=warn,hyper=warn").with_test_writer().try_init();
    let Some(d) = deploy().await else {
        eprintln!("skipping: moto_server not installed");
        return;
    };
    ecs::within(async {
        let running_cpu_task = d.task("cpu").await;
        // The api Lambda, behind the HTTP API and behind the Function URL: the same binary
        // and routes, each function with its own role.
        let mut id = String::new();
        for (role, mode) in [("api", "BUFFERED"), ("api_stream", "RESPONSE_STREAM")] {
            let (rec, mut env, sdk) = d.component().await;
            env.insert("FERRY_API_INVOKE_MODE".into(), mode.into());
            let lookup = |k: &str| env.get(k).cloned();
            ferry_api_lambda::InvokeMode::from_lookup(&lookup).unwrap();
            let api = ferry_api_lambda::build(&sdk, &lookup).await.unwrap();
            id = drive_api(&d, &api, role).await;
            assert_role(role, &rec.actions());
            assert_role_keys(role, &rec.leading_keys());
        }

        // The ws Lambda: connect, subscribe (replaying the cancelled job's events), ping,
        // unsubscribe, disconnect.
        let (rec, env, sdk) = d.component().await;
        let ws = ferry_ws_lambda::build(&sdk, &|k| env.get(k).cloned()).unwrap();
        let conn = format!("ws-{}", ulid::Ulid::new());
        let events = [
            ("ws-connect-token.json", None),
            ("ws-subscribe.json", Some(json!({"action": "subscribe", "job_id": id, "after_seq": 0}))),
            ("ws-ping.json", None),
            ("ws-subscribe.json", Some(json!({"action": "unsubscribe", "job_id": id}))),
            ("ws-disconnect.json", None),
        ];
        for (file, body) in events {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/ws").join(file);
            let mut e: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            e["requestContext"]["connectionId"] = json!(conn);
            if let Some(q) = e.get_mut("queryStringParameters").filter(|q| q.is_object()) {
                q["token"] = json!(KEY);
            }
            if let Some(body) = body {
                e["body"] = json!(body.to_string());
            }
            let resp = ferry_ws_lambda::handle(&ws, serde_json::from_value(e).unwrap()).await;
            assert_eq!(resp.status_code, 200, "{file}: {:?}", resp.body);
        }
        assert_role("ws", &rec.actions());
        assert_role_keys("ws", &rec.leading_keys());

        // The dispatcher Lambda on its schedule: a GPU backlog to launch for, a lost
        // executor, an unacknowledged cancel, an expired job, a dead letter; subscribers on
        // the jobs it settles.
        let (rec, env, sdk) = d.component().await;
        let handlers = ferry_dispatcher_lambda::build(&sdk, &|k| env.get(k).cloned()).await.unwrap();
        let now = ferry_core::ports::Clock::now(&ferry_core::ports::SystemClock);
        d.job("gpu-llama", JobStatus::Queued, |_| {}).await;
        let lost = d
            .job("s3-llama", JobStatus::Running, |j| {
                j.executor_id = Some(running_cpu_task.clone());
                j.lease_until = Some(now - 1_000);
            })
            .await;
        d.subscribe(&lost).await;
        let other_task = d.task("cpu").await;
        d.job("s3-llama", JobStatus::Cancelling, |j| {
            j.executor_id = Some(other_task.clone());
            j.cancel_requested_at = Some(now - 60_000);
        })
        .await;
        d.job("s3-llama", JobStatus::Queued, |j| j.expires_at = now - 1_000).await;
        let dead = d.job("s3-llama", JobStatus::Queued, |_| {}).await;
        let m = WorkMessage::for_job(&dead, "iam");
        ferry_aws::SqsWorkQueue::new(aws_sdk_sqs::Client::new(&d.moto.sdk), d.queues["cpu"].1.clone())
            .send(&m)
            .await
            .unwrap();
        let event: Value = serde_json::from_str(
            &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/dispatcher/schedule.json"))
                .unwrap(),
        )
        .unwrap();
        let outcome = ferry_dispatcher_lambda::handle(&handlers, event).await.expect("a schedule never fails");
        let report = outcome.watchdog.clone().expect("the schedule runs the watchdog");
        assert_eq!(
            (report.requeued, report.cancels_forced, report.expired, report.dead_lettered),
            (1, 1, 1, 1),
            "{outcome:?}"
        );
        assert!(outcome.pools.iter().any(|p| p.name == "gpu" && p.launched >= 1), "{outcome:?}");
        // A stream record of a job with a webhook ending: its delivery is recorded and queued.
        let mut ended = ferry_tests::fixtures::job("acme", JobStatus::Succeeded);
        ended.webhook = Some(ferry_core::webhook::WebhookRequest {
            url: "https://93.184.216.34/hook".into(),
            events: vec![ferry_core::webhook::WebhookEvent::Completed],
        });
        d.root.ports.jobs.create(&ended, None).await.unwrap();
        let item = aws_sdk_dynamodb::Client::new(&d.moto.sdk)
            .get_item()
            .table_name(&d.table)
            .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(format!("job#{}", ended.id)))
            .send()
            .await
            .unwrap()
            .item
            .unwrap();
        let new = ferry_tests::fixtures::stream_image(&item);
        let mut old = new.clone();
        old["status"] = json!({"S": "running"});
        let record = json!({"eventSource": "aws:dynamodb", "eventName": "MODIFY",
            "dynamodb": {"NewImage": new, "OldImage": old}});
        let outcome = ferry_dispatcher_lambda::handle(&handlers, json!({"Records": [record]})).await.unwrap();
        assert_eq!(outcome.webhooks, 1, "{outcome:?}");
        assert_role("dispatcher", &rec.actions());
        assert_role_keys("dispatcher", &rec.leading_keys());

        // The webhooks Lambda: a delivery of a job whose output is stored (its view's presigned
        // URL, fetched by the receiver, is authorized as this role's GetObject), answered 500
        // (the retry's delay is the message's visibility).
        let (rec, env, sdk) = d.component().await;
        let key = format!("outputs/{}/1.json", ulid::Ulid::new());
        d.root.ports.objects.put(&key, STORED_OUTPUT.as_bytes().to_vec()).await.unwrap();
        let object = ferry_core::objects::ObjectRef { key, bytes: STORED_OUTPUT.len() as u64 };
        // Of a tenant with no secret yet: the deliverer makes (and seals) its first.
        d.webhook_job(|j| {
            j.output_object = Some(object);
            j.tenant = ferry_core::TenantId::new("first-hook").unwrap();
        })
        .await;
        let mut webhooks = ferry_webhooks_lambda::build(&sdk, &|k| env.get(k).cloned()).await.unwrap();
        let receiver = Arc::new(Answers500::default());
        webhooks.transport = receiver.clone();
        let got = aws_sdk_sqs::Client::new(&d.moto.sdk)
            .receive_message()
            .queue_url(&d.webhook_queue)
            .max_number_of_messages(10)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap();
        let records: Vec<Value> = got
            .messages()
            .iter()
            .map(|m| {
                json!({"messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body(),
                    "attributes": {"ApproximateReceiveCount": "1"}, "eventSource": "aws:sqs"})
            })
            .collect();
        assert!(!records.is_empty(), "the deliveries queued above");
        let answer = ferry_webhooks_lambda::handle(&webhooks, json!({"Records": records})).await;
        assert_eq!(answer["batchItemFailures"].as_array().map(Vec::len), Some(records.len()), "{answer}");
        let url = receiver.output_url().expect("a posted view with a presigned output URL");
        assert_eq!(reqwest::get(&url).await.unwrap().bytes().await.unwrap().as_ref(), STORED_OUTPUT.as_bytes());
        assert_role("webhooks", &rec.actions());
        assert_role_keys("webhooks", &rec.leading_keys());

        // The executor: drains the cpu queue (the jobs the dispatcher left there, a model
        // fetched from S3, a job that fails once and is queued again, another pool's message
        // handed back), then exits idle, deleting its heartbeat.
        let (rec, env, sdk) = d.component().await;
        let catalog_file = d.cache.with_extension("catalog.json");
        std::fs::write(&catalog_file, &env["FERRY_MODELS"]).unwrap();
        let argv = [
            "ferry-executor",
            "--queue-url",
            &d.queues["cpu"].0,
            "--table",
            &d.table,
            "--pool",
            "cpu",
            "--idle-timeout",
            "3",
            "--lease",
            "30",
            "--visibility-timeout",
            "30",
            "--ws-management-endpoint",
            &env["FERRY_WS_MANAGEMENT_ENDPOINT"],
            "--executor-id",
            "iam-executor",
            "--model-cache",
            d.cache.to_str().unwrap(),
            "--models-file",
            catalog_file.to_str().unwrap(),
            "--results-bucket",
            &d.results,
        ];
        let cmd = ferry_executor::cli::Args::augment_args(clap::Command::new("ferry-executor"));
        let args = ferry_executor::cli::Args::from_arg_matches(&cmd.try_get_matches_from(argv).unwrap()).unwrap();
        let worker = ferry_executor::cli::build(&args, Some(&sdk)).await.unwrap();
        worker.models.preload("flaky", LoadedModel::Custom(Arc::new(FailsOnce::default())));
        let fetched = d.job("s3-llama", JobStatus::Queued, |_| {}).await;
        d.subscribe(&fetched).await;
        let flaky = d.job("flaky", JobStatus::Queued, |_| {}).await;
        // A large input read from the results bucket, a large output written there.
        let large = d.job_with_stored_input("flaky").await;
        // A gpu model's message in the cpu queue (a misrouted message) is handed back.
        let stray = d.job("gpu-llama", JobStatus::Queued, |_| {}).await;
        let m = WorkMessage::for_job(&stray, "iam");
        ferry_aws::SqsWorkQueue::new(aws_sdk_sqs::Client::new(&d.moto.sdk), d.queues["cpu"].0.clone())
            .send(&m)
            .await
            .unwrap();
        let exit =
            tokio::time::timeout(Duration::from_secs(90), worker.run(ferry_executor::worker::Shutdown::default()))
                .await
                .expect("the executor drains its queue and exits idle");
        assert_eq!(exit, ferry_executor::worker::Exit::Idle);
        for j in [&fetched, &flaky, &large] {
            let end = d.root.ports.jobs.get(&j.id).await.unwrap().unwrap();
            assert_eq!(end.status, JobStatus::Succeeded, "{}: {end:?}", j.model);
        }
        assert_eq!(d.root.ports.jobs.get(&flaky.id).await.unwrap().unwrap().attempt, 2);
        let stored = d.root.ports.jobs.get(&large.id).await.unwrap().unwrap();
        assert!(stored.output.is_none() && stored.output_object.is_some(), "a large output is stored: {stored:?}");
        assert_role("executor", &rec.actions());
        assert_role_keys("executor", &rec.leading_keys());
        assert!(!rec.leading_keys().contains("apikey#"), "the executor never reaches API keys");
        let _ = std::fs::remove_dir_all(&d.cache);
        let _ = std::fs::remove_file(&catalog_file);
        let _ = &d.cluster;
    })
    .await;
}

/// Fails its first run of a short input with a retryable error, then answers (the job with
/// a large, stored input, which may run at the same time, never fails: the test knows which
/// job took two attempts whatever order the executor runs them in).
#[derive(Default)]
struct FailsOnce(std::sync::atomic::AtomicBool);

impl Runner for FailsOnce {
    fn run(&self, input: &ferry_core::input::JobInput, _progress: Arc<dyn Progress>) -> Result<RunOutcome, ModelError> {
        let short = serde_json::to_string(input).unwrap().len() < 10_000;
        if short && !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(ModelError::Runtime("device lost".into()));
        }
        Ok(RunOutcome::Done(json!({"text": "ok ".repeat(30_000)})))
    }
}

/// A receiver answering 500, keeping the last presigned output URL it was posted.
#[derive(Default)]
struct Answers500(std::sync::Mutex<Option<String>>);

impl Answers500 {
    fn output_url(&self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl ferry_core::deliver::WebhookTransport for Answers500 {
    async fn post(
        &self,
        post: ferry_core::deliver::WebhookPost,
    ) -> Result<ferry_core::deliver::WebhookResponse, ferry_core::deliver::TransportError> {
        let body: Value = serde_json::from_slice(&post.body).unwrap();
        if let Some(url) = body["data"]["output_url"].as_str() {
            *self.0.lock().unwrap() = Some(url.to_string());
        }
        Ok(ferry_core::deliver::WebhookResponse { status: 500, retry_after: None })
    }
}

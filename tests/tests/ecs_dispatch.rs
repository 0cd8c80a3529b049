//! The dispatcher, the watchdog and the dispatcher Lambda's handler over the real AWS
//! adapters on moto: one ECS cluster with a GPU pool on an EC2 capacity provider and a
//! Fargate CPU pool, a DynamoDB table and an SQS queue pair per pool, assembled the way
//! the dispatcher Lambda assembles them ([`AwsFleet::from_lookup`] over `FERRY_POOLS`).
//!
//! What is checked from the dispatcher's side: a backlog becomes RunTask calls with the
//! pool's capacity provider strategy and environment overrides, ListTasks (by the pool's
//! `startedBy`) keeps a second reconcile from launching again, `views()` (`GET /v1/pools`)
//! counts the tasks, the watchdog stops the task of a lost executor (StopTask) and
//! requeues its job, and the handler tells a stream record from the schedule.
//!
//! Each test builds its own cluster, table and queues, so they can share a moto.

use std::sync::Arc;
use std::time::Duration;

use ferry_aws::QueueUrls;
use ferry_core::catalog::Catalog;
use ferry_core::dispatch::{Dispatcher, PoolList, PoolView};
use ferry_core::fleet::ExecutorTask;
use ferry_core::input::JobInput;
use ferry_core::job::{Job, JobStatus, Task};
use ferry_core::pool::PoolConfig;
use ferry_core::ports::{Clock, ManualClock, SystemClock, WorkMessage};
use ferry_core::root::Root;
use ferry_core::service::JobService;
use ferry_core::state::Transition;
use ferry_core::watchdog::{DEFAULT_CANCEL_GRACE_MS, Watchdog, WatchdogReport};
use ferry_tests::backends::unique_name;
use ferry_tests::ecs::{self, EcsMoto, env_var, within};
use ferry_tests::fixtures::job;
use serde_json::Value;

/// Receives after which a message is dead-lettered.
const MAX_RECEIVE_COUNT: u32 = 3;
/// The GPU pool's idle timeout, passed to its executors.
const GPU_IDLE_TIMEOUT_S: u64 = 120;

/// A fleet of two pools on one cluster, with the clock the dispatcher and watchdog read.
struct Setup {
    moto: EcsMoto,
    cluster: String,
    /// The EC2 capacity provider of the GPU pool.
    provider: String,
    gpu_family: String,
    cpu_family: String,
    gpu: QueueUrls,
    cpu: QueueUrls,
    catalog: Catalog,
    /// The root as the dispatcher Lambda builds it (`ferry_aws::root_from_lookup`), on the
    /// manual clock.
    root: Root,
    clock: Arc<ManualClock>,
}

/// The catalog: `tiny-llama` on the GPU pool, the embedder on the CPU pool.
const CATALOG: &str = r#"{"models": [
    {"id": "tiny-llama", "task": "text-generation", "pool": "gpu", "architecture": "LlamaForCausalLM"},
    {"id": "all-minilm-l6-v2", "task": "embeddings", "pool": "cpu", "architecture": "BertModel"}
]}"#;

/// Builds the cluster (an EC2 capacity provider with one registered GPU instance, and
/// Fargate), the task definitions, the table and the queues, and the fleet from a
/// `FERRY_POOLS` naming them. None when moto is not installed.
async fn setup() -> Option<Setup> {
    let moto = ecs::moto().await?;

    let ecs::TwoPoolCluster { cluster, provider, gpu_family, cpu_family, subnet, security_group: sg } =
        moto.two_pool_cluster().await;

    let dynamo = aws_sdk_dynamodb::Client::new(&moto.sdk);
    let sqs = aws_sdk_sqs::Client::new(&moto.sdk);
    let table = unique_name();
    ferry_aws::ensure_table(&dynamo, &table).await.expect("creating the table");
    let queues = |suffix: &str| {
        let (sqs, name) = (sqs.clone(), format!("{table}{suffix}"));
        async move { ferry_aws::ensure_queues(&sqs, &name, MAX_RECEIVE_COUNT).await.expect("creating queues") }
    };
    // The backend's own (default) queue is a third one, which no pool uses: a pool that
    // fell back to it would see no backlog.
    let default = queues("").await;
    let gpu = queues("-gpu").await;
    let cpu = queues("-cpu").await;

    let pools = serde_json::json!({"pools": [
        {
            "name": "gpu",
            "max_tasks": 3,
            "jobs_per_task": 1,
            "idle_timeout_s": GPU_IDLE_TIMEOUT_S,
            "queue_url": gpu.queue_url,
            "dlq_url": gpu.dlq_url,
            "ecs": {
                "cluster": cluster,
                "task_definition": gpu_family,
                "container": ecs::CONTAINER,
                "capacity_providers": [{"name": provider, "weight": 1, "base": 0}]
            }
        },
        {
            "name": "cpu",
            "max_tasks": 2,
            "queue_url": cpu.queue_url,
            "dlq_url": cpu.dlq_url,
            "ecs": {
                "cluster": cluster,
                "task_definition": cpu_family,
                "capacity_providers": [{"name": "FARGATE"}],
                "subnets": [subnet],
                "security_groups": [sg],
                "assign_public_ip": false
            }
        }
    ]})
    .to_string();
    let catalog = Catalog::from_json(CATALOG).expect("catalog");
    let lookup = move |name: &str| match name {
        "FERRY_POOLS" => Some(pools.clone()),
        "FERRY_MODELS" => Some(CATALOG.to_string()),
        "FERRY_TABLE" => Some(table.clone()),
        "FERRY_QUEUE_URL" => Some(default.queue_url.clone()),
        _ => None,
    };
    let mut root = ferry_aws::root_from_lookup(&moto.sdk, &lookup).await.expect("the root");
    assert_eq!(root.pools.names(), ["cpu", "gpu"]);
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    root.ports.clock = clock.clone();
    Some(Setup { moto, cluster, provider, gpu_family, cpu_family, gpu, cpu, catalog, root, clock })
}

impl Setup {
    fn dispatcher(&self) -> Dispatcher {
        self.root.dispatcher()
    }

    /// The job service as the dispatcher Lambda builds it: the pools' own queues.
    fn service(&self) -> JobService {
        self.root.service()
    }

    /// The watchdog with the ECS launcher, as the dispatcher Lambda builds it.
    fn watchdog(&self) -> Watchdog {
        self.root.watchdog(DEFAULT_CANCEL_GRACE_MS)
    }

    fn pool(&self, name: &str) -> &PoolConfig {
        self.root.pools.get(name).unwrap_or_else(|| panic!("pool {name}"))
    }

    /// A queued job of `model` in the table, and its message on the model's pool queue.
    async fn enqueue(&self, model: &str) -> Job {
        let mut j = job("acme", JobStatus::Queued);
        j.model = model.into();
        if self.catalog.get(model).expect("a catalog model").task == Task::Embeddings {
            j.input = JobInput::texts(["made by a test"]).into();
        }
        j.created_at = self.clock.now();
        j.updated_at = j.created_at;
        j.expires_at = j.created_at + 3_600_000;
        self.root.ports.jobs.create(&j, None).await.expect("creating the job");
        let message = WorkMessage::for_job(&j, format!("test-{}", j.id));
        self.service().queue_for_model(model).send(&message).await.expect("sending the message");
        j
    }

    /// What an executor on `task` does with the next message of `pool`: receive it, claim
    /// its job with a lease of `lease_ms`, and delete it.
    async fn claim(&self, pool: &str, task: &str, lease_ms: u64) -> Job {
        let queue = self.root.ports.queues.for_pool(pool);
        let got = queue.receive(1, Duration::from_secs(1), Duration::from_secs(60)).await.expect("receive");
        let delivery = got.into_iter().next().expect("a message for the executor");
        let job = self.root.ports.jobs.get(&delivery.message.job_id).await.unwrap().expect("the message's job");
        let claim = Transition::Claim { executor_id: task.into(), lease_until: self.clock.now() + lease_ms };
        let running = self.service().apply(&job, claim).await.expect("claim");
        queue.delete(&delivery.receipt).await.expect("delete");
        running
    }

    /// The pool's tasks as the launcher lists them (ListTasks by `startedBy`, desired
    /// status RUNNING, then DescribeTasks).
    async fn listed(&self, pool: &str) -> Vec<ExecutorTask> {
        self.root.ports.launcher.list(self.pool(pool)).await.expect("ListTasks")
    }

    async fn listed_ids(&self, pool: &str) -> Vec<String> {
        let mut ids: Vec<String> = self.listed(pool).await.into_iter().map(|t| t.id).collect();
        ids.sort();
        ids
    }

    /// ListTasks straight from ECS: the tasks `startedBy` the pool's marker, in any state.
    async fn ecs_list(&self, pool: &str, desired: aws_sdk_ecs::types::DesiredStatus) -> Vec<String> {
        let out = self
            .moto
            .ecs
            .list_tasks()
            .cluster(&self.cluster)
            .started_by(ferry_aws::ecs::started_by(pool))
            .desired_status(desired)
            .send()
            .await
            .expect("ListTasks");
        let mut arns = out.task_arns().to_vec();
        arns.sort();
        arns
    }

    /// An event file of `events/dispatcher/`.
    fn event(&self, name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events/dispatcher").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

fn view<'a>(list: &'a PoolList, name: &str) -> &'a PoolView {
    list.pools.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("pool {name} in {list:?}"))
}

/// A backlog of two on the GPU pool: one reconcile starts two tasks on the EC2 capacity
/// provider, with the pool's environment; the next starts none; `views()` counts them.
#[tokio::test]
async fn gpu_backlog_launches_on_the_capacity_provider_and_shows_in_views() {
    let Some(s) = setup().await else { return eprintln!("skipping: moto_server not installed") };
    within(async {
        let d = s.dispatcher();
        let before = d.views().await.expect("views");
        assert_eq!(before.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["cpu", "gpu"]);
        assert!(before.pools.iter().all(|p| (p.desired, p.running, p.pending) == (0, 0, 0)), "{before:?}");

        s.enqueue("tiny-llama").await;
        s.enqueue("tiny-llama").await;
        let v = d.reconcile("gpu").await.expect("reconcile gpu");
        assert_eq!((v.desired, v.launched), (2, 2), "{v:?}");
        assert_eq!(v.running + v.pending, 2, "{v:?}");
        assert_eq!((v.backlog.visible, v.backlog.in_flight), (2, 0), "the gpu queue's depth: {v:?}");
        assert_eq!((v.max_tasks, v.jobs_per_task, v.idle_timeout_s), (3, 1, GPU_IDLE_TIMEOUT_S));
        assert_eq!((v.consecutive_failures, v.last_error.as_deref(), v.backoff_until.as_deref()), (0, None, None));

        let arns = s.listed_ids("gpu").await;
        assert_eq!(arns.len(), 2, "{arns:?}");
        assert_eq!(s.ecs_list("gpu", aws_sdk_ecs::types::DesiredStatus::Running).await, arns);
        for task in s.moto.describe(&s.cluster, &arns).await {
            assert_eq!(task.capacity_provider_name(), Some(s.provider.as_str()), "the pool's strategy");
            assert!(task.container_instance_arn().is_some(), "placed on the registered GPU instance");
            assert!(task.task_definition_arn().is_some_and(|a| a.contains(&s.gpu_family)), "{task:?}");
            assert_eq!((task.started_by(), task.group()), (Some("ferry-gpu"), Some("ferry:gpu")));
            assert!(task.tags().iter().any(|t| t.key() == Some("ferry:pool") && t.value() == Some("gpu")));
            assert_eq!(env_var(&task, "FERRY_POOL").as_deref(), Some("gpu"));
            assert_eq!(env_var(&task, "FERRY_QUEUE_URL").as_deref(), Some(s.gpu.queue_url.as_str()));
            assert_eq!(env_var(&task, "FERRY_IDLE_TIMEOUT_S"), Some(GPU_IDLE_TIMEOUT_S.to_string()));
        }

        // Level-triggered: the same backlog with its tasks listed asks for nothing more.
        let v = d.reconcile("gpu").await.expect("second reconcile");
        assert_eq!((v.desired, v.launched, v.running + v.pending), (2, 0, 2), "{v:?}");
        assert_eq!(s.listed_ids("gpu").await, arns, "no task started or stopped");
        assert!(s.listed("cpu").await.is_empty(), "the cpu pool was not touched");

        // GET /v1/pools.
        let list = d.views().await.expect("views");
        let gpu = view(&list, "gpu");
        assert_eq!((gpu.desired, gpu.running + gpu.pending, gpu.launched), (2, 2, 0), "{gpu:?}");
        assert_eq!(gpu.backlog.visible, 2);
        let cpu = view(&list, "cpu");
        assert_eq!((cpu.desired, cpu.running, cpu.pending, cpu.backlog.visible), (0, 0, 0, 0), "{cpu:?}");
        let json = serde_json::to_value(&list).expect("PoolList as JSON");
        assert_eq!(json["pools"].as_array().map(Vec::len), Some(2), "{json}");
    })
    .await;
}

/// An executor claims a job and stops renewing its lease: the watchdog stops its ECS task
/// (StopTask), requeues the job for attempt 2, and the next reconcile replaces the task.
#[tokio::test]
async fn watchdog_stops_the_task_of_a_lost_executor_and_requeues_its_job() {
    let Some(s) = setup().await else { return eprintln!("skipping: moto_server not installed") };
    within(async {
        let d = s.dispatcher();
        let w = s.watchdog();
        let queued = s.enqueue("tiny-llama").await;
        assert_eq!(d.reconcile("gpu").await.expect("reconcile").launched, 1);
        let lost = s.listed_ids("gpu").await;
        assert_eq!(lost.len(), 1, "{lost:?}");
        let lost = lost[0].clone();

        let running = s.claim("gpu", &lost, 60_000).await;
        assert_eq!((running.id, running.executor_id.as_deref()), (queued.id, Some(lost.as_str())));
        // The schedule's reconcile sees the task listed and the queue empty.
        let v = d.reconcile("gpu").await.expect("reconcile");
        assert_eq!((v.desired, v.launched, v.running + v.pending), (0, 0, 1), "{v:?}");
        assert_eq!(w.run().await.expect("watchdog"), WatchdogReport::default(), "the lease still holds");

        s.clock.advance(61_000);
        let report = w.run().await.expect("watchdog");
        assert_eq!((report.requeued, report.tasks_stopped, report.failed_lost), (1, 1, 0), "{report:?}");

        let job = s.root.ports.jobs.get(&queued.id).await.unwrap().expect("the job");
        assert_eq!((job.status, job.attempt, job.executor_id.clone()), (JobStatus::Queued, 2, None));
        assert!(s.listed("gpu").await.is_empty(), "the stopped task is not listed");
        assert!(s.ecs_list("gpu", aws_sdk_ecs::types::DesiredStatus::Running).await.is_empty());
        assert_eq!(s.ecs_list("gpu", aws_sdk_ecs::types::DesiredStatus::Stopped).await, std::slice::from_ref(&lost));
        let described = s.moto.describe(&s.cluster, std::slice::from_ref(&lost)).await;
        assert_eq!(described.len(), 1, "{described:?}");
        let task = &described[0];
        assert_eq!(task.desired_status(), Some("STOPPED"));
        let reason = task.stopped_reason().unwrap_or_default();
        assert!(reason.contains("lease lapsed") && reason.contains(&queued.id.to_string()), "{reason}");
        assert_eq!(w.run().await.expect("watchdog"), WatchdogReport::default(), "a second pass changes nothing");

        // The retry's message is on the gpu queue: a replacement executor is launched.
        let v = d.reconcile("gpu").await.expect("reconcile");
        assert_eq!((v.desired, v.launched, v.backlog.visible), (1, 1, 1), "{v:?}");
        let replacement = s.listed_ids("gpu").await;
        assert_eq!(replacement.len(), 1);
        assert_ne!(replacement[0], lost);
        let got =
            s.root.ports.queues.for_pool("gpu").receive(10, Duration::from_secs(1), Duration::from_secs(60)).await;
        let got: Vec<_> = got.expect("receive").into_iter().map(|d| (d.message.job_id, d.message.attempt)).collect();
        assert_eq!(got, [(queued.id, 2)]);
    })
    .await;
}

/// The Lambda's handler: a stream record of a queued `tiny-llama` job (the sample event,
/// pointed at a real job) reconciles only the GPU pool; the schedule reconciles both and
/// runs the watchdog, which stops the task whose lease lapsed.
#[tokio::test]
async fn the_handler_reconciles_the_streamed_pool_and_everything_on_schedule() {
    let Some(s) = setup().await else { return eprintln!("skipping: moto_server not installed") };
    within(async {
        let h = ferry_dispatcher_lambda::Handlers {
            dispatcher: s.dispatcher(),
            watchdog: s.watchdog(),
            webhooks: s.root.webhooks(std::sync::Arc::new(ferry_core::deliver::NoTransport), Default::default()),
        };
        let gpu_job = s.enqueue("tiny-llama").await;
        s.enqueue("all-minilm-l6-v2").await;

        let mut stream = s.event("stream-new-job.json");
        let record = &mut stream["Records"][0]["dynamodb"];
        assert_eq!(record["NewImage"]["model"]["S"], "tiny-llama", "the sample names the gpu pool's model");
        assert_eq!(record["NewImage"]["status"]["S"], "queued");
        let pk = serde_json::json!({"S": format!("job#{}", gpu_job.id)});
        record["Keys"]["pk"] = pk.clone();
        record["NewImage"]["pk"] = pk;
        record["NewImage"]["id"] = serde_json::json!({"S": gpu_job.id.to_string()});

        let out = ferry_dispatcher_lambda::handle(&h, stream).await.expect("no webhooks to queue");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert!(out.watchdog.is_none(), "the stream does not run the watchdog");
        let names: Vec<&str> = out.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["gpu"], "only the streamed job's pool");
        assert_eq!((out.pools[0].desired, out.pools[0].launched), (1, 1));
        let gpu_tasks = s.listed_ids("gpu").await;
        assert_eq!(gpu_tasks.len(), 1);
        assert!(s.listed("cpu").await.is_empty(), "the cpu backlog waits for the schedule");
        let answer = serde_json::to_value(&out).expect("the outcome as JSON");
        assert_eq!(answer["batchItemFailures"], serde_json::json!([]));

        // The gpu executor takes its job and is lost; a minute and more later, the schedule.
        s.claim("gpu", &gpu_tasks[0], 30_000).await;
        s.clock.advance(61_000);
        let out = ferry_dispatcher_lambda::handle(&h, s.event("schedule.json")).await.expect("a schedule never fails");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let names: Vec<&str> = out.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["cpu", "gpu"], "every pool");
        let cpu = &out.pools[0];
        assert_eq!((cpu.desired, cpu.launched), (1, 1), "{cpu:?}");
        let gpu = &out.pools[1];
        assert_eq!((gpu.desired, gpu.launched, gpu.running + gpu.pending), (0, 0, 1), "{gpu:?}");
        let report = out.watchdog.expect("the schedule runs the watchdog");
        assert_eq!((report.requeued, report.tasks_stopped), (1, 1), "{report:?}");

        let cpu_tasks = s.listed_ids("cpu").await;
        assert_eq!(cpu_tasks.len(), 1);
        let fargate = s.moto.describe(&s.cluster, &cpu_tasks).await;
        assert_eq!(fargate[0].capacity_provider_name(), Some("FARGATE"));
        assert!(fargate[0].task_definition_arn().is_some_and(|a| a.contains(&s.cpu_family)));
        assert_eq!(env_var(&fargate[0], "FERRY_QUEUE_URL").as_deref(), Some(s.cpu.queue_url.as_str()));
        assert!(s.listed("gpu").await.is_empty(), "the lost executor's task was stopped");
        let job = s.root.ports.jobs.get(&gpu_job.id).await.unwrap().expect("the job");
        assert_eq!((job.status, job.attempt), (JobStatus::Queued, 2));

        // The next minute: the retry gets a new gpu executor.
        s.clock.advance(60_000);
        let out = ferry_dispatcher_lambda::handle(&h, s.event("schedule.json")).await.expect("a schedule never fails");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let launched: Vec<(&str, u32)> = out.pools.iter().map(|p| (p.name.as_str(), p.launched)).collect();
        assert_eq!(launched, [("cpu", 0), ("gpu", 1)]);
        assert_eq!(out.watchdog, Some(WatchdogReport::default()));
    })
    .await;
}

//! Checks that keep `infra/` true to the code, with no AWS account:
//!
//! - every `.tf` (and `.tftest.hcl`) file parses with a real HCL2 parser;
//! - every environment variable each binary reads is set for it in `infra/locals.tf`, and
//!   nothing is set that it does not read (the Lambdas are built with a recording lookup;
//!   the executor's variables are its flags' `env` names);
//! - every AWS call each component makes is allowed by its role in `infra/iam.tf`, and the
//!   role allows nothing more (tests/tests/infra_iam.rs drives the components through a
//!   recording proxy in front of moto).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clap::Args as _;
use ferry_tests::infra::{self, local_map_keys};

fn infra_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra")
}

#[test]
fn every_terraform_file_parses() {
    let mut n = 0;
    for path in infra::hcl_files(&infra_dir()) {
        let text = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = hcl::parse(&text) {
            panic!("{}: {e}", path.display());
        }
        n += 1;
    }
    assert!(n >= 10, "found only {n} HCL files under infra/");
}

/// What a Lambda's build function reads: everything is answered (with placeholders for a
/// deployment), and every name asked for is noted.
async fn lambda_reads(which: &str) -> BTreeSet<String> {
    let read = Mutex::new(BTreeSet::new());
    let values: BTreeMap<&str, &str> = [
        ("FERRY_TABLE", "ferry-jobs"),
        ("FERRY_QUEUE_URL", "http://127.0.0.1:1/123456789012/ferry-work-cpu"),
        ("FERRY_DLQ_URL", "http://127.0.0.1:1/123456789012/ferry-work-cpu-dlq"),
        ("FERRY_MODELS", r#"{"models":[{"id":"tiny-llama","task":"text-generation","pool":"cpu"}]}"#),
        ("FERRY_POOLS", r#"{"pools":[{"name":"cpu"}]}"#),
        ("FERRY_WS_MANAGEMENT_ENDPOINT", "http://127.0.0.1:1/live"),
        ("FERRY_CANCEL_GRACE_S", "30"),
        ("FERRY_WEBHOOK_QUEUE_URL", "http://127.0.0.1:1/123456789012/ferry-webhooks"),
        ("FERRY_RESULTS_BUCKET", "ferry-results"),
        ("FERRY_WEBHOOK_KEY_ID", "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"),
    ]
    .into();
    let mut values = values;
    if which == "api_stream" {
        values.insert("FERRY_API_INVOKE_MODE", "RESPONSE_STREAM");
    }
    let env = |k: &str| {
        read.lock().unwrap().insert(k.to_string());
        values.get(k).map(|v| v.to_string())
    };
    // No call is made while building: the endpoint is never reached.
    let sdk = ferry_aws::sdk_config_for_endpoint("http://127.0.0.1:1").await;
    match which {
        "api" | "api_stream" => {
            ferry_api_lambda::InvokeMode::from_lookup(&env).expect("the invoke mode");
            drop(ferry_api_lambda::build(&sdk, &env).await.expect("api builds"))
        }
        "ws" => drop(ferry_ws_lambda::build(&sdk, &env).expect("ws builds")),
        "dispatcher" => drop(ferry_dispatcher_lambda::build(&sdk, &env).await.expect("dispatcher builds")),
        "webhooks" => drop(ferry_webhooks_lambda::build(&sdk, &env).await.expect("webhooks builds")),
        other => panic!("{other}"),
    }
    read.into_inner().unwrap()
}

/// Variables every process reads outside our code: the log filter, the SDK's region.
const AMBIENT: &[&str] = &["RUST_LOG", "AWS_REGION"];

fn check(component: &str, reads: &BTreeSet<String>, set: &BTreeSet<String>, optional: &BTreeSet<String>) {
    // Read but not set: fine only for knobs with defaults and for the alternatives of a
    // variable that is set (FERRY_MODELS_FILE when FERRY_MODELS is given).
    let missing: Vec<&String> = reads.iter().filter(|v| !set.contains(*v) && !optional.contains(*v)).collect();
    assert!(missing.is_empty(), "{component} reads {missing:?}, which infra/locals.tf does not set");
    let unread: Vec<&String> = set.iter().filter(|v| !reads.contains(*v) && !AMBIENT.contains(&v.as_str())).collect();
    assert!(unread.is_empty(), "infra/locals.tf sets {unread:?} for {component}, which it never reads");
}

#[tokio::test]
async fn lambda_environments_match_what_each_lambda_reads() {
    let locals = infra::locals(&infra_dir());
    let mut optional: BTreeSet<String> = ferry_core::config::VARS.iter().map(|s| s.to_string()).collect();
    // Unset behind the HTTP API (BUFFERED); the Function URL's function must set it.
    optional.insert("FERRY_API_INVOKE_MODE".into());
    let stream = local_map_keys(&locals, "api_stream_env");
    assert!(stream.contains("FERRY_API_INVOKE_MODE"), "the Function URL's function streams its responses");
    for (component, local) in [
        ("api", "api_env"),
        ("api_stream", "api_stream_env"),
        ("ws", "ws_env"),
        ("dispatcher", "dispatcher_env"),
        ("webhooks", "webhooks_env"),
    ] {
        let reads = lambda_reads(component).await;
        let set = local_map_keys(&locals, local);
        assert!(set.contains("FERRY_TABLE"), "{local} exists and names the table");
        check(component, &reads, &set, &optional);
    }
}

#[test]
fn executor_environments_match_its_flags() {
    let locals = infra::locals(&infra_dir());
    let cmd = ferry_executor::cli::Args::augment_args(clap::Command::new("ferry-executor"));
    let mut flags: BTreeSet<String> =
        cmd.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
    // Besides its flags, `ferry_executor::cli::run` reads the catalog (`Catalog::from_env`:
    // FERRY_MODELS when no --models-file) and the job service's knobs (`Config::from_env`).
    flags.insert("FERRY_MODELS".into());
    flags.extend(ferry_core::config::VARS.iter().map(|s| s.to_string()));
    // On ECS these come from the pool and the deployment: without them the executor would
    // serve the wrong pool, queue or table, or no model at all.
    let needed =
        ["FERRY_TABLE", "FERRY_QUEUE_URL", "FERRY_POOL", "FERRY_DEVICE", "FERRY_MODELS", "FERRY_IDLE_TIMEOUT_S"];
    let base = infra::local_object(&locals, "executor_env_base");
    let ws = local_map_keys(&locals, "executor_ws_env");
    assert_eq!(ws, ["FERRY_WS_MANAGEMENT_ENDPOINT".to_string()].into());
    let pools: Vec<&String> = base.keys().collect();
    assert_eq!(pools, ["cpu", "gpu"], "one executor environment per pool");
    for (pool, keys) in base {
        let keys: BTreeSet<String> = keys.into_iter().chain(ws.iter().cloned()).collect();
        for n in needed {
            assert!(keys.contains(n), "the {pool} executor needs {n}");
        }
        let unknown: Vec<&String> =
            keys.iter().filter(|k| !flags.contains(*k) && !AMBIENT.contains(&k.as_str())).collect();
        assert!(unknown.is_empty(), "the {pool} executor is given {unknown:?}, which no flag reads");
        for dev_only in ["FERRY_STACK_URL", "FERRY_STACK_TOKEN"] {
            assert!(!keys.contains(dev_only), "{dev_only} is for ferry dev only");
        }
    }
}

/// The webhooks queue dead-letters after the receives the deliverer plans for (the embedded
/// queue of `ferry dev` uses the same constant).
#[test]
fn the_webhooks_queue_redrives_after_the_deliverers_receives() {
    let sqs = std::fs::read_to_string(infra_dir().join("sqs.tf")).unwrap();
    let block = &sqs[sqs.find("resource \"aws_sqs_queue\" \"webhooks\"").expect("the webhooks queue")..];
    let block = &block[..block.find("\n}\n").expect("its end")];
    let count = block.split("maxReceiveCount").nth(1).and_then(|rest| {
        rest.trim_start_matches([' ', '=']).split(|c: char| !c.is_ascii_digit()).next().map(str::to_string)
    });
    assert_eq!(count, Some(ferry_core::deliver::MAX_RECEIVES.to_string()));
}

/// Handler pools (`var.handler_pools`, issue 16) get what a model pool gets because every
/// per-pool resource iterates the one list of pools, which holds them: a resource that
/// iterated a list of its own would leave a handler pool without its queue, log group,
/// repository or IAM. Each handler pool has its task definition.
#[test]
fn handler_pools_get_every_per_pool_resource() {
    let locals = infra::locals(&infra_dir());
    let pool_names = locals["pool_names"].to_string();
    assert!(pool_names.contains("var.handler_pools"), "pool_names = {pool_names}");
    let mut per_pool = BTreeSet::new();
    let mut handler_task_definition = false;
    for (path, body) in infra::bodies(&infra_dir()) {
        for block in body.blocks().filter(|b| b.identifier() == "resource") {
            let labels: Vec<String> = block.labels().iter().map(|l| l.as_str().to_string()).collect();
            let Some(for_each) = block.body.attributes().find(|a| a.key() == "for_each") else { continue };
            let expr = for_each.expr().to_string();
            if expr.contains("pool") {
                assert!(
                    (expr.contains("local.pool_names") || expr == "var.handler_pools") && !expr.contains("\"cpu\""),
                    "{}: {labels:?} iterates {expr}, not the pools",
                    path.display()
                );
                per_pool.insert(labels.join("."));
            }
            handler_task_definition |= labels == ["aws_ecs_task_definition", "handler"] && expr == "var.handler_pools";
        }
    }
    assert!(handler_task_definition, "a task definition per handler pool");
    for r in
        ["aws_sqs_queue.work", "aws_sqs_queue.dlq", "aws_ecr_repository.executor", "aws_cloudwatch_log_group.executor"]
    {
        assert!(per_pool.contains(r), "{r} is per pool: {per_pool:?}");
    }
}

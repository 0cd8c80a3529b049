//! Live progress from executors that cannot reach the Management API (private subnets
//! without a NAT gateway): their events are stored marked `fanout = "stream"`, and the
//! dispatcher Lambda pushes them from the table's stream. Here on moto: the executor's
//! store writes the marked items, the stream records are built from those very items (moto
//! does not run streams), and the dispatcher's handler delivers them in one frame.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use ferry_core::fleet::NoLauncher;
use ferry_core::job::JobStatus;
use ferry_core::ports::{Connection, NoNotifier, Queues};
use ferry_core::progress::EventBody;
use ferry_tests::backends::unique_name;
use ferry_tests::fixtures::stream_image as image;
use ferry_tests::recorder::Recorder;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_events_without_a_management_endpoint_are_pushed_from_the_stream() {
    let Some(moto) = ferry_tests::moto::shared() else {
        eprintln!("skipping: moto_server not installed");
        return;
    };
    let sdk = ferry_aws::sdk_config_for_endpoint(&moto.endpoint).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let table = unique_name();
    ferry_aws::ensure_table(&dynamo, &table).await.unwrap();
    let urls = ferry_aws::ensure_queues(&aws_sdk_sqs::Client::new(&sdk), &table, 5).await.unwrap();
    let aws = ferry_aws::AwsPorts::new(&sdk, &table);
    let ports = |aws: &ferry_aws::AwsPorts| aws.ports(Queues::none(), Arc::new(NoLauncher), Arc::new(NoNotifier));
    let stores = ports(&aws);
    let job = ferry_tests::fixtures::job("acme", JobStatus::Running);
    stores.jobs.create(&job, None).await.unwrap();
    let conn =
        Connection { id: "live-1".into(), tenant: job.tenant.clone(), connected_at: 1, expires_at: u64::MAX / 2 };
    stores.connections.put(&conn).await.unwrap();
    stores.connections.subscribe("live-1", &job.id).await.unwrap();

    // The executor: no notifier, events marked for the stream (as its `aws_ports` builds them).
    let hub = ports(&aws.clone().with_stream_fanout()).hub();
    let tokens: Vec<EventBody> =
        (0..3).map(|i| EventBody::Token { index: i, id: 10 + i, text: format!(" t{i}"), logprob: None }).collect();
    let (events, fan_out) = hub.publish_batch(&job.id, tokens).await.unwrap();
    assert_eq!(fan_out.delivered, 0, "the executor itself pushes nothing");
    // An event written by a component that pushes itself is not marked.
    let unmarked = stores.hub();
    unmarked.store(&job.id, EventBody::Log { level: "info".into(), message: "pushed directly".into() }).await.unwrap();

    // The stream: the new images of the event items, as the Lambda service delivers them.
    let mut records = Vec::new();
    for seq in 1..=4u64 {
        let pk = format!("evt#{}#{seq:020}", job.id);
        let item = dynamo.get_item().table_name(&table).key("pk", AttributeValue::S(pk)).send().await.unwrap();
        let item = item.item.expect("event stored");
        assert_eq!(item.contains_key("fanout"), seq <= 3, "only the executor's events are marked (seq {seq})");
        records.push(json!({"eventSource": "aws:dynamodb", "eventName": "INSERT",
            "dynamodb": {"NewImage": image(&item), "StreamViewType": "NEW_AND_OLD_IMAGES"}}));
    }
    records.reverse(); // any order within a batch

    let rec = Recorder::start(&moto.endpoint).await;
    let env: BTreeMap<&str, String> = [
        ("FERRY_TABLE", table.clone()),
        ("FERRY_QUEUE_URL", urls.queue_url.clone()),
        ("FERRY_WS_MANAGEMENT_ENDPOINT", format!("{}/live", rec.endpoint)),
        ("FERRY_POOLS", r#"{"pools":[{"name":"cpu"}]}"#.to_string()),
    ]
    .into();
    let rec_sdk = ferry_aws::sdk_config_for_endpoint(&rec.endpoint).await;
    let handlers = ferry_dispatcher_lambda::build(&rec_sdk, &|k| env.get(k).cloned()).await.expect("dispatcher builds");
    let outcome = ferry_dispatcher_lambda::handle(&handlers, json!({"Records": records})).await.expect("no webhooks");
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert_eq!(outcome.pushed, 1, "one frame to the one subscriber");
    let posts = rec.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].0, "live-1");
    let frame: Value = serde_json::from_slice(&posts[0].1).unwrap();
    let seqs: Vec<u64> = frame["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!((frame["action"].as_str(), seqs), (Some("events"), events.iter().map(|e| e.seq).collect()));
}

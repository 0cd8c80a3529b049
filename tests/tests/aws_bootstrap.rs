//! AWS-only behaviour that the cross-backend conformance suite cannot express: what
//! `ferry aws bootstrap` (and `ferry dev --backend aws`) creates, that it is idempotent, and
//! how the Lambda's settings resolve a queue name. Runs against the moto server.

use aws_sdk_dynamodb::types::{ProjectionType, TimeToLiveStatus};
use aws_sdk_sqs::types::QueueAttributeName;

fn unique() -> String {
    format!("boot-{}", ulid::Ulid::new().to_string().to_ascii_lowercase())
}

#[tokio::test]
async fn bootstrap_creates_the_table_and_queues_once() {
    let Some(moto) = ferry_tests::moto::shared() else { return };
    let sdk = ferry_aws::sdk_config_for_endpoint(&moto.endpoint).await;
    let name = unique();
    let urls = ferry_aws::bootstrap(&sdk, &name, &name).await.expect("first bootstrap");
    let again = ferry_aws::bootstrap(&sdk, &name, &name).await.expect("second bootstrap is a no-op");
    assert_eq!(again, urls);
    assert!(urls.dlq_url.ends_with(&format!("{name}-dlq")));

    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let table = dynamo.describe_table().table_name(&name).send().await.unwrap().table.unwrap();
    let keys: Vec<_> = table.key_schema().iter().map(|k| k.attribute_name().to_string()).collect();
    assert_eq!(keys, ["pk"]);
    let gsi = &table.global_secondary_indexes()[0];
    assert_eq!(gsi.index_name(), Some("gsi1"));
    assert_eq!(gsi.projection().and_then(|p| p.projection_type()), Some(&ProjectionType::All));
    assert!(table.stream_specification().is_some_and(|s| s.stream_enabled()), "the dispatcher needs the stream");
    let ttl = dynamo.describe_time_to_live().table_name(&name).send().await.unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.attribute_name(), Some("ttl"));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&urls.queue_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let redrive = attrs.attributes().unwrap().get(&QueueAttributeName::RedrivePolicy).expect("a redrive policy");
    let redrive: serde_json::Value = serde_json::from_str(redrive).unwrap();
    assert!(redrive["deadLetterTargetArn"].as_str().unwrap().ends_with(&format!("{name}-dlq")));
    assert_eq!(redrive["maxReceiveCount"].to_string().trim_matches('"'), "5");
}

#[tokio::test]
async fn settings_resolve_a_queue_name_and_prefer_an_explicit_url() {
    let Some(moto) = ferry_tests::moto::shared() else { return };
    let sdk = ferry_aws::sdk_config_for_endpoint(&moto.endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let name = unique();
    let urls = ferry_aws::bootstrap(&sdk, &name, &name).await.unwrap();
    let by_name = ferry_aws::AwsSettings::from_lookup(&sqs, |k| match k {
        "FERRY_TABLE" => Some(name.clone()),
        "FERRY_QUEUE_NAME" => Some(name.clone()),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!((by_name.table.as_str(), by_name.queue_url.as_str()), (name.as_str(), urls.queue_url.as_str()));
    let by_url =
        ferry_aws::AwsSettings::from_lookup(&sqs, |k| (k == "FERRY_QUEUE_URL").then(|| "http://q/explicit".into()))
            .await
            .unwrap();
    assert_eq!((by_url.table.as_str(), by_url.queue_url.as_str()), ("ferry-jobs", "http://q/explicit"));
    let missing = ferry_aws::AwsSettings::from_lookup(&sqs, |k| (k == "FERRY_QUEUE_NAME").then(unique)).await;
    assert!(missing.is_err(), "an unknown queue name is an error, not a default");
}

#[tokio::test]
async fn an_incompatible_table_is_refused() {
    let Some(moto) = ferry_tests::moto::shared() else { return };
    let sdk = ferry_aws::sdk_config_for_endpoint(&moto.endpoint).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let name = unique();
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    dynamo
        .create_table()
        .table_name(&name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name("pk").attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().unwrap())
        .send()
        .await
        .unwrap();
    let err = ferry_aws::ensure_table(&dynamo, &name).await.unwrap_err();
    assert!(err.to_string().contains("gsi1"), "{err}");
}

/// Timeouts short enough to see in a test; the connect timeout is not what is tested.
fn short_timeouts() -> ferry_aws::Timeouts {
    ferry_aws::Timeouts {
        connect: std::time::Duration::from_secs(2),
        attempt: std::time::Duration::from_millis(300),
        operation: std::time::Duration::from_millis(900),
    }
}

/// An endpoint that accepts connections and never answers (a half-open peer, a stuck
/// proxy): a call to it fails once its timeouts pass instead of blocking its caller.
#[tokio::test]
async fn a_call_to_an_endpoint_that_never_answers_fails_within_its_timeouts() {
    use ferry_core::ports::{JobStore, StoreError};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket); // read nothing, answer nothing, close nothing
        }
    });
    let sdk = ferry_aws::sdk_config_for_endpoint_with(&endpoint, &short_timeouts()).await;
    let jobs = ferry_aws::DynamoJobStore::new(aws_sdk_dynamodb::Client::new(&sdk), "hung");
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), jobs.get(&ferry_core::JobId::generate(0)))
        .await
        .expect("the call was not cut by its timeouts");
    assert!(matches!(got, Err(StoreError::Unavailable(_) | StoreError::Throttled(_))), "{got:?}");
    held.abort();
}

/// A long poll may take its whole wait: the attempt timeout (300 ms here) is extended by
/// the wait for ReceiveMessage only, so an empty queue's 2 s poll ends empty, not in error.
#[tokio::test]
async fn a_long_poll_is_not_cut_by_the_attempt_timeout() {
    use ferry_core::ports::MessageQueue;
    let Some(moto) = ferry_tests::moto::shared() else { return };
    // The table and queue are made with the default timeouts (a loaded moto may take more
    // than 900 ms to answer DescribeTable); only the poll runs under the short ones.
    let setup = ferry_aws::sdk_config_for_endpoint(&moto.endpoint).await;
    let name = unique();
    let urls = ferry_aws::bootstrap(&setup, &name, &name).await.expect("bootstrap");
    let sdk = ferry_aws::sdk_config_for_endpoint_with(&moto.endpoint, &short_timeouts()).await;
    let queue = ferry_aws::SqsWorkQueue::new(aws_sdk_sqs::Client::new(&sdk), urls.queue_url);
    let started = std::time::Instant::now();
    let got = queue.receive(1, std::time::Duration::from_secs(2), std::time::Duration::from_secs(30)).await;
    assert_eq!(got.expect("the long poll was cut").len(), 0);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1500),
        "moto answered before the wait: {:?}",
        started.elapsed()
    );
}

/// DynamoDB refuses an item over 400 KB with a ValidationException (moto too): that is a
/// `Refused` write, not an outage to retry.
#[tokio::test]
async fn an_item_over_dynamodbs_limit_is_refused_not_retried() {
    use ferry_core::catalog::Catalog;
    use ferry_core::job::JobStatus;
    use ferry_core::ports::StoreError;
    use ferry_core::service::ServiceError;
    use ferry_core::state::Transition;
    let Some(b) = ferry_tests::backends::aws().await else { return };
    let service = b.root(Catalog::demo()).service();
    let job = ferry_tests::fixtures::job("acme", JobStatus::Queued);
    b.jobs.create(&job, None).await.unwrap();
    let claim = Transition::Claim { executor_id: "e".into(), lease_until: u64::MAX / 2 };
    let running = service.apply(&job, claim).await.unwrap();
    let output = serde_json::json!({"text": "x".repeat(450 * 1024)});
    let got = service.apply(&running, Transition::Succeed { output: output.into() }).await;
    assert!(matches!(got, Err(ServiceError::Store(StoreError::Refused(_)))), "{got:?}");
    // Real DynamoDB refuses the whole UpdateItem; moto 5.2.5 applies its small attributes
    // (the status) before refusing the large one, so the record is not checked here: the
    // executor's handling of a refusal is tested on both backends with a store that
    // refuses whole (executor_worker: an_outcome_the_store_refuses_...).
}

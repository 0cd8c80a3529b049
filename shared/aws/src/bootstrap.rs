//! Creating the table and queues Ferry needs, when they are missing.
//!
//! Deployments create these with infrastructure code; bootstrap exists for emulators,
//! `ferry dev --backend aws` and tests. Every function is idempotent: run it on every start
//! and it only touches what is missing or differs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, IndexStatus, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::AwsError;
use crate::dynamo_codec::{GSI1, GSI1PK, GSI1SK, GSI2, GSI2PK, GSI2SK, PK, TTL};

/// How long to wait for a new table to become ACTIVE (seconds on AWS, instant on moto).
const TABLE_READY_TIMEOUT: Duration = Duration::from_secs(180);
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Receives before SQS moves a message to the dead-letter queue (the watchdog then fails its job).
pub const MAX_RECEIVE_COUNT: u32 = 5;

/// Settings of the work queue: a minute of invisibility per receive (executors extend it
/// while they work) and long polling by default, so idle executors cost few requests.
const QUEUE_VISIBILITY_S: &str = "60";
const QUEUE_WAIT_S: &str = "20";
/// Dead letters are kept as long as SQS allows (14 days), for post-mortems.
const DLQ_RETENTION_S: &str = "1209600";

/// The URLs of the work queue and of its dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrls {
    pub queue_url: String,
    pub dlq_url: String,
}

/// Creates the table and the queues (`<queue_name>` and `<queue_name>-dlq`, with messages
/// dead-lettered after 5 receives) if missing.
pub async fn bootstrap(sdk: &SdkConfig, table: &str, queue_name: &str) -> Result<QueueUrls, AwsError> {
    ensure_table(&aws_sdk_dynamodb::Client::new(sdk), table).await?;
    let urls = ensure_queues(&aws_sdk_sqs::Client::new(sdk), queue_name, MAX_RECEIVE_COUNT).await?;
    tracing::info!(table, queue_url = %urls.queue_url, dlq_url = %urls.dlq_url, "AWS resources ready");
    Ok(urls)
}

/// Ensures the results bucket exists (HeadBucket, then CreateBucket when it is missing).
/// Deployments create it with its encryption and lifecycle expiry in `infra/s3.tf`; this is
/// for emulators and tests.
pub async fn ensure_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<(), AwsError> {
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(()),
        Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {}
        Err(err) => return Err(AwsError::service("S3", "HeadBucket", err)),
    }
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => {
            tracing::info!(bucket, "results bucket created");
            Ok(())
        }
        Err(err) if err.as_service_error().is_some_and(|e| e.is_bucket_already_owned_by_you()) => Ok(()),
        Err(err) => Err(AwsError::service("S3", "CreateBucket", err)),
    }
}

/// Ensures the jobs table exists with key `pk` (S), the tenant index `gsi1`
/// (`gsi1pk`/`gsi1sk`) and the by-state index `gsi2` (`gsi2pk`/`gsi2sk`), all attributes
/// projected, on-demand billing, a stream of new and old images, and TTL on `ttl`; waits
/// until it is ACTIVE.
pub async fn ensure_table(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), AwsError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => {
            let desc = out.table.ok_or_else(|| AwsError::Incompatible(format!("table {table}: no description")))?;
            for index in [GSI1, GSI2] {
                if !desc.global_secondary_indexes().iter().any(|g| g.index_name() == Some(index)) {
                    return Err(AwsError::Incompatible(format!(
                        "table {table} exists without index {index} (created by an older Ferry? recreate it or add the index)"
                    )));
                }
            }
            tracing::debug!(table, "table exists");
        }
        Err(err) if err.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => {
            create_table(client, table).await?;
        }
        Err(err) => return Err(AwsError::service("DynamoDB", "DescribeTable", err)),
    }
    wait_active(client, table).await?;
    ensure_ttl(client, table).await
}

async fn create_table(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), AwsError> {
    let key = |name: &str, kind: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(kind).build();
    let string_attr =
        |name: &str| AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build();
    let index = |name: &str, pk: &str, sk: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(pk, KeyType::Hash)?)
            .key_schema(key(sk, KeyType::Range)?)
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
    };
    let stream = StreamSpecification::builder()
        .stream_enabled(true)
        .stream_view_type(StreamViewType::NewAndOldImages)
        .build()?;
    let result = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(string_attr(PK)?)
        .attribute_definitions(string_attr(GSI1PK)?)
        .attribute_definitions(string_attr(GSI1SK)?)
        .attribute_definitions(string_attr(GSI2PK)?)
        .attribute_definitions(string_attr(GSI2SK)?)
        .key_schema(key(PK, KeyType::Hash)?)
        .global_secondary_indexes(index(GSI1, GSI1PK, GSI1SK)?)
        .global_secondary_indexes(index(GSI2, GSI2PK, GSI2SK)?)
        .stream_specification(stream)
        .send()
        .await;
    match result {
        Ok(_) => {
            tracing::info!(table, "table created");
            Ok(())
        }
        // Someone else (a parallel start) created it first: fine, wait for it like ours.
        Err(err) if err.as_service_error().is_some_and(|e| e.is_resource_in_use_exception()) => Ok(()),
        Err(err) => Err(AwsError::service("DynamoDB", "CreateTable", err)),
    }
}

/// Polls until the table and its indexes are ACTIVE.
async fn wait_active(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), AwsError> {
    let start = Instant::now();
    loop {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| AwsError::service("DynamoDB", "DescribeTable", e))?;
        let ready = out.table.is_some_and(|t| {
            t.table_status() == Some(&TableStatus::Active)
                && t.global_secondary_indexes()
                    .iter()
                    .all(|g| g.index_status().is_none_or(|s| *s == IndexStatus::Active))
        });
        if ready {
            return Ok(());
        }
        if start.elapsed() > TABLE_READY_TIMEOUT {
            return Err(AwsError::Timeout(format!("table {table} not ACTIVE after {TABLE_READY_TIMEOUT:?}")));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Enables TTL on `ttl` unless it already is (UpdateTimeToLive fails when TTL is
/// already enabled, so look first).
async fn ensure_ttl(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), AwsError> {
    let out = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| AwsError::service("DynamoDB", "DescribeTimeToLive", e))?;
    let desc = out.time_to_live_description();
    let status = desc.and_then(|d| d.time_to_live_status());
    let attribute = desc.and_then(|d| d.attribute_name());
    match status {
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling) if attribute == Some(TTL) => {
            return Ok(());
        }
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling) => {
            return Err(AwsError::Incompatible(format!(
                "table {table} has TTL on {attribute:?}, Ferry needs it on {TTL:?}"
            )));
        }
        _ => {}
    }
    let spec = TimeToLiveSpecification::builder().enabled(true).attribute_name(TTL).build()?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| AwsError::service("DynamoDB", "UpdateTimeToLive", e))?;
    tracing::info!(table, "TTL enabled on {TTL}");
    Ok(())
}

/// Ensures `<name>-dlq` and `<name>` exist, the latter with VisibilityTimeout 60,
/// ReceiveMessageWaitTimeSeconds 20, SSE, and a redrive policy to the former after
/// `max_receive_count` receives.
pub async fn ensure_queues(
    client: &aws_sdk_sqs::Client,
    name: &str,
    max_receive_count: u32,
) -> Result<QueueUrls, AwsError> {
    if max_receive_count == 0 {
        return Err(AwsError::Config("max_receive_count must be at least 1".into()));
    }
    let dlq_url = ensure_queue(
        client,
        &format!("{name}-dlq"),
        HashMap::from([
            (QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_S.to_string()),
            (QueueAttributeName::SqsManagedSseEnabled, "true".to_string()),
        ]),
    )
    .await?;

    let out = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| AwsError::service("SQS", "GetQueueAttributes", e))?;
    let dlq_arn = out
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .ok_or_else(|| AwsError::Incompatible(format!("queue {dlq_url} has no QueueArn")))?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count.to_string(),
    });

    let queue_url = ensure_queue(
        client,
        name,
        HashMap::from([
            (QueueAttributeName::VisibilityTimeout, QUEUE_VISIBILITY_S.to_string()),
            (QueueAttributeName::ReceiveMessageWaitTimeSeconds, QUEUE_WAIT_S.to_string()),
            (QueueAttributeName::SqsManagedSseEnabled, "true".to_string()),
            (QueueAttributeName::RedrivePolicy, redrive.to_string()),
        ]),
    )
    .await?;
    Ok(QueueUrls { queue_url, dlq_url })
}

/// Creates a queue with `attributes`; if it exists with other attributes (CreateQueue then
/// fails with QueueAlreadyExists), sets them on the existing queue instead.
async fn ensure_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    attributes: HashMap<QueueAttributeName, String>,
) -> Result<String, AwsError> {
    let created = client.create_queue().queue_name(name).set_attributes(Some(attributes.clone())).send().await;
    match created {
        Ok(out) => {
            let url = out
                .queue_url
                .ok_or_else(|| AwsError::Incompatible(format!("CreateQueue returned no URL for {name}")))?;
            tracing::debug!(queue = name, url, "queue ready");
            Ok(url)
        }
        Err(err) if matches!(err.code(), Some("QueueAlreadyExists" | "QueueNameExists")) => {
            let url = crate::config::resolve_queue_url(client, name).await?;
            client
                .set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(attributes))
                .send()
                .await
                .map_err(|e| AwsError::service("SQS", "SetQueueAttributes", e))?;
            tracing::info!(queue = name, "queue existed with other attributes; updated them");
            Ok(url)
        }
        Err(err) => Err(AwsError::service("SQS", "CreateQueue", err)),
    }
}

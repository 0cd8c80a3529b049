//! DynamoDB adapters: [`DynamoJobStore`] (the `JobStore` and `EventStore` ports),
//! [`DynamoApiKeyStore`] (the `ApiKeyStore` port) and [`DynamoWebhookSecrets`] (the
//! `WebhookSecretStore` port), over one table whose layout is described in `dynamo_codec`.
//!
//! Every state change is a conditional write, so two writers (an API call and an executor,
//! or two executors after a redelivery) can never both win; a failed condition hands the
//! stored record back (ReturnValuesOnConditionCheckFailure) so callers decide without a
//! second read. All user-derived data travels in ExpressionAttributeValues; expression
//! strings are built only from constants in this crate.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use ferry_core::deliver::{WebhookDelivery, WebhookDeliveryStore};
use ferry_core::ports::{
    ApiKeyRecord, ApiKeyStore, Created, EventStore, Expected, IdempotencyRecord, JobPage, JobStore, ListQuery,
    StoreError, WebhookSecretStore, WebhookSecrets, is_append_batch,
};
use ferry_core::progress::ProgressEvent;
use ferry_core::{JobId, Millis, TenantId};

use crate::dynamo_codec::{
    FANOUT, FANOUT_STREAM, GSI1, GSI1SK, Item, PK, StoredSecrets, apikey_pk, apikey_to_item, delivery_gsi1pk,
    delivery_pk, delivery_to_item, endpoint_pk, event_pk, event_to_item, idem_pk, idem_to_item, item_to_apikey,
    item_to_delivery, item_to_event, item_to_idem, item_to_job, item_to_stored_secrets, job_pk, job_to_item,
    lifecycle_attrs, n, s, tenant_gsi1pk, webhook_secrets_from_json, webhook_secrets_json, webhook_secrets_pk,
    webhook_secrets_to_item,
};
use crate::dynamo_error::{REFUSAL_CODES, THROTTLE_CODES, store_err};
use crate::dynamo_index::Table;

/// How often `create` retries a transaction that lost a race it cannot judge yet
/// (a concurrent transaction on the same key, or a binding that vanished after failing
/// the condition). The retry then sees the winner's binding and returns `Duplicate`.
const CREATE_TRIES: u32 = 4;

/// How often `append` retries a transaction cancelled by a conflicting concurrent write
/// to the job (an update, or another append still in flight): the retry then either
/// succeeds or fails the `last_seq` condition and reports the winner.
const APPEND_TRIES: u32 = 4;

/// BatchGetItem takes at most 100 keys per call.
const BATCH_GET_MAX: u64 = 100;

/// How often `read` asks again for keys BatchGetItem left unprocessed before giving up.
const BATCH_GET_TRIES: u32 = 8;

/// A cancelled transaction whose own conditions the caller has already judged: throttling
/// becomes `Throttled`, anything but a conflict with a concurrent transaction is a failure
/// (`Some`); a conflict (`None`) is worth retrying after [`retry_pause`].
fn transaction_failure<R>(
    err: &SdkError<TransactWriteItemsError, R>,
    reasons: &[aws_sdk_dynamodb::types::CancellationReason],
) -> Option<StoreError>
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = || format!("DynamoDB TransactWriteItems: {}", DisplayErrorContext(err));
    if reasons.iter().any(|r| r.code().is_some_and(|c| THROTTLE_CODES.contains(&c))) {
        tracing::warn!("DynamoDB throttled a transaction");
        Some(StoreError::Throttled(detail()))
    } else if reasons.iter().any(|r| r.code().is_some_and(|c| REFUSAL_CODES.contains(&c))) {
        let message = detail();
        tracing::error!(error = %message, "DynamoDB refused a transaction");
        Some(StoreError::Refused(message))
    } else if !reasons.iter().any(|r| r.code() == Some("TransactionConflict")) {
        let message = detail();
        tracing::error!(error = %message, "DynamoDB transaction failed");
        Some(StoreError::Unavailable(message))
    } else {
        None
    }
}

/// How long to wait before try `tries + 1` of a transaction (exponential from `base_ms`),
/// or `Unavailable` once `max_tries` are spent.
fn retry_pause<R>(
    err: &SdkError<TransactWriteItemsError, R>,
    tries: u32,
    max_tries: u32,
    base_ms: u64,
) -> Result<Duration, StoreError>
where
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if tries >= max_tries {
        return Err(StoreError::Unavailable(format!(
            "DynamoDB TransactWriteItems: gave up after {tries} conflicting tries: {}",
            DisplayErrorContext(err)
        )));
    }
    Ok(Duration::from_millis(base_ms << tries))
}

/// A request that could not be built is a bug here; report it rather than panic.
pub(crate) fn build_err(err: aws_smithy_types::error::operation::BuildError) -> StoreError {
    StoreError::Unavailable(format!("DynamoDB request could not be built: {err}"))
}

/// Jobs and idempotency bindings in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoJobStore {
    pub(crate) client: Client,
    pub(crate) table: String,
    /// Mark appended events `fanout = "stream"`: their writer cannot push them, so the
    /// dispatcher Lambda does, from the table's stream.
    stream_fanout: bool,
}

impl DynamoJobStore {
    /// Events appended through this store are marked for the stream fan-out (`fanout =
    /// "stream"` on the item): for an executor with no route to the Management API (private
    /// subnets without NAT), whose events the dispatcher Lambda then pushes.
    pub fn with_stream_fanout(mut self) -> Self {
        self.stream_fanout = true;
        self
    }

    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoJobStore { client, table: table.into(), stream_fanout: false }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub(crate) async fn get_item(&self, pk: String) -> Result<Option<Item>, StoreError> {
        get_consistent(&self.client, &self.table, pk).await
    }

    /// The job and its binding in one transaction: either both are written, or the key is
    /// already bound (and unexpired) and nothing is.
    /// With `stale`, the binding may also be taken over from that job (`rebind`).
    async fn create_with_idem(
        &self,
        job: Item,
        idem: &IdempotencyRecord,
        stale: Option<&JobId>,
    ) -> Result<Created, StoreError> {
        let condition = match stale {
            None => "attribute_not_exists(pk) OR expires_at < :now",
            Some(_) => "attribute_not_exists(pk) OR expires_at < :now OR job_id = :stale",
        };
        let mut idem_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(idem_to_item(idem)))
            .condition_expression(condition)
            .expression_attribute_values(":now", n(idem.created_at));
        if let Some(id) = stale {
            idem_put = idem_put.expression_attribute_values(":stale", s(id.to_string()));
        }
        let idem_put = idem_put
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_err)?;
        let job_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(job))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build_err)?;
        let items =
            vec![TransactWriteItem::builder().put(idem_put).build(), TransactWriteItem::builder().put(job_put).build()];

        let mut tries = 0;
        loop {
            tries += 1;
            let err = match self.client.transact_write_items().set_transact_items(Some(items.clone())).send().await {
                Ok(_) => return Ok(Created::New),
                Err(err) => err,
            };
            let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) = err.as_service_error() else {
                return Err(store_err("TransactWriteItems", err));
            };
            let reasons = cancel.cancellation_reasons();
            let code = |i: usize| reasons.get(i).and_then(|r| r.code()).unwrap_or("None");
            tracing::debug!(idem = code(0), job = code(1), "create transaction cancelled");

            if code(0) == "ConditionalCheckFailed" {
                // The old item normally comes back with the cancellation; read it if not.
                let existing = match reasons[0].item() {
                    Some(item) => Some(item.clone()),
                    None => self.get_item(idem_pk(&idem.tenant, &idem.key)).await?,
                };
                if let Some(item) = existing {
                    return Ok(Created::Duplicate(item_to_idem(&item)?));
                }
                // Deleted (TTL) between the check and the read: the key is free again.
            } else if code(1) == "ConditionalCheckFailed" {
                return Err(StoreError::AlreadyExists);
            } else if let Some(e) = transaction_failure(&err, reasons) {
                return Err(e);
            }
            tokio::time::sleep(retry_pause(&err, tries, CREATE_TRIES, 20)?).await;
        }
    }
}

#[async_trait]
impl JobStore for DynamoJobStore {
    async fn create(&self, job: &ferry_core::Job, idem: Option<&IdempotencyRecord>) -> Result<Created, StoreError> {
        let item = job_to_item(job);
        if let Some(idem) = idem {
            return self.create_with_idem(item, idem, None).await;
        }
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(Created::New),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                Err(StoreError::AlreadyExists)
            }
            Err(err) => Err(store_err("PutItem", err)),
        }
    }

    async fn rebind(
        &self,
        job: &ferry_core::Job,
        idem: &IdempotencyRecord,
        stale: &JobId,
    ) -> Result<Created, StoreError> {
        self.create_with_idem(job_to_item(job), idem, Some(stale)).await
    }

    async fn get(&self, id: &JobId) -> Result<Option<ferry_core::Job>, StoreError> {
        self.get_item(job_pk(id)).await?.as_ref().map(item_to_job).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<JobPage, StoreError> {
        let limit = query.limit.clamp(1, 100) as usize;
        let key_condition = if query.after.is_some() { "gsi1pk = :pk AND gsi1sk < :after" } else { "gsi1pk = :pk" };
        let mut jobs = Vec::with_capacity(limit);
        let mut start_key: Option<Item> = None;
        loop {
            // Limit counts items read before the filter, so ask only for what is missing
            // and loop: the page then ends exactly on the last job returned.
            let remaining = limit - jobs.len();
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI1)
                .key_condition_expression(key_condition)
                .expression_attribute_values(":pk", s(tenant_gsi1pk(&query.tenant)))
                .scan_index_forward(false)
                .limit(remaining as i32)
                .set_exclusive_start_key(start_key.take());
            if let Some(after) = &query.after {
                request = request.expression_attribute_values(":after", s(after.to_string()));
            }
            if let Some(status) = query.status {
                request = request
                    .filter_expression("#status = :status")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(status.as_str()));
            }
            let out = request.send().await.map_err(|e| store_err("Query", e))?;
            for item in out.items() {
                jobs.push(item_to_job(item)?);
            }
            let Some(last) = out.last_evaluated_key else {
                return Ok(JobPage { jobs, next: None });
            };
            if jobs.len() >= limit {
                jobs.truncate(limit);
                let next = match last.get(GSI1SK) {
                    Some(aws_sdk_dynamodb::types::AttributeValue::S(sk)) => sk
                        .parse::<JobId>()
                        .map_err(|e| StoreError::Corrupt(format!("LastEvaluatedKey {GSI1SK} {sk:?}: {e}")))?,
                    _ => {
                        return Err(StoreError::Corrupt(format!("LastEvaluatedKey without {GSI1SK}")));
                    }
                };
                return Ok(JobPage { jobs, next: Some(next) });
            }
            start_key = Some(last);
        }
    }

    async fn active(
        &self,
        status: ferry_core::JobStatus,
        limit: u32,
        after: Option<JobId>,
    ) -> Result<JobPage, StoreError> {
        crate::dynamo_index::active(&Table { client: &self.client, table: &self.table }, status, limit, after).await
    }

    async fn update(&self, job: &ferry_core::Job, expected: Expected) -> Result<(), StoreError> {
        let (expression, names, values) = lifecycle_update(job, expected, None);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(job_pk(&job.id)))
            .update_expression(expression)
            .condition_expression(UPDATE_CONDITION)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(e)) => {
                    let current = e.item().map(item_to_job).transpose()?.map(Box::new);
                    tracing::debug!(job_id = %job.id, found = current.is_some(), "update condition failed");
                    Err(StoreError::ConditionFailed { current })
                }
                _ => Err(store_err("UpdateItem", err)),
            },
        }
    }

    async fn update_with_events(
        &self,
        job: &ferry_core::Job,
        expected: Expected,
        expected_last_seq: u64,
        events: &[ProgressEvent],
        retain_until: Millis,
    ) -> Result<(), StoreError> {
        if !is_append_batch(events, expected_last_seq) || events[0].job_id != job.id {
            let current = self.get(&job.id).await?.map(Box::new);
            return Err(StoreError::ConditionFailed { current });
        }
        // `last_seq` moves with the events.
        let last_seq = ("last_seq", n(events[events.len() - 1].seq));
        let (expression, names, mut values) = lifecycle_update(job, expected, Some(last_seq));
        values.insert(":expected_seq".into(), n(expected_last_seq));
        let job_update = Update::builder()
            .table_name(&self.table)
            .key(PK, s(job_pk(&job.id)))
            .update_expression(expression)
            .condition_expression(format!("{UPDATE_CONDITION} AND last_seq = :expected_seq"))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_err)?;
        let mut items = vec![TransactWriteItem::builder().update(job_update).build()];
        items.extend(self.event_puts(events, retain_until)?);
        let err = match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) = err.as_service_error() else {
            return Err(store_err("TransactWriteItems", err));
        };
        let reasons = cancel.cancellation_reasons();
        let failed = |r: &aws_sdk_dynamodb::types::CancellationReason| r.code() == Some("ConditionalCheckFailed");
        if !reasons.iter().any(failed) {
            // Throttled, refused (an item over its limit), a conflicting transaction.
            return Err(store_err("TransactWriteItems", err));
        }
        let current = match reasons.first().filter(|r| failed(r)).and_then(|r| r.item()) {
            Some(item) => Some(item_to_job(item)?),
            None => self.get(&job.id).await?,
        };
        tracing::debug!(job_id = %job.id, "update with events: condition failed");
        Err(StoreError::ConditionFailed { current: current.map(Box::new) })
    }
}

/// The condition of every lifecycle update: the job exists with the expected status and attempt.
const UPDATE_CONDITION: &str = "attribute_exists(pk) AND #status = :expected_status AND #attempt = :expected_attempt";

/// The update expression writing `job`'s lifecycle fields (and `extra`, one more attribute
/// to set), with its names and values (the expected status and attempt included, for
/// [`UPDATE_CONDITION`]).
fn lifecycle_update(
    job: &ferry_core::Job,
    expected: Expected,
    extra: Option<(&'static str, AttributeValue)>,
) -> (String, HashMap<String, String>, HashMap<String, AttributeValue>) {
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    let mut sets = Vec::new();
    let mut removes = Vec::new();
    // Every name gets a placeholder: several (status, ttl, output) are reserved words.
    let attrs = lifecycle_attrs(job).into_iter().chain(extra.map(|(a, v)| (a, Some(v))));
    for (attr, value) in attrs {
        let name = format!("#{attr}");
        names.insert(name.clone(), attr.to_string());
        match value {
            Some(value) => {
                let placeholder = format!(":{attr}");
                sets.push(format!("{name} = {placeholder}"));
                values.insert(placeholder, value);
            }
            None => removes.push(name),
        }
    }
    let mut expression = format!("SET {}", sets.join(", "));
    if !removes.is_empty() {
        expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
    }
    values.insert(":expected_status".to_string(), s(expected.status.as_str()));
    values.insert(":expected_attempt".to_string(), n(expected.attempt));
    (expression, names, values)
}

impl DynamoJobStore {
    /// The transaction items storing `events` (each put only where no such event exists),
    /// marked for the stream's fan-out when this store does that.
    fn event_puts(&self, events: &[ProgressEvent], retain_until: Millis) -> Result<Vec<TransactWriteItem>, StoreError> {
        events
            .iter()
            .map(|event| {
                let mut item = event_to_item(event, retain_until)?;
                if self.stream_fanout {
                    item.insert(FANOUT.into(), s(FANOUT_STREAM));
                }
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build_err)?;
                Ok(TransactWriteItem::builder().put(put).build())
            })
            .collect()
    }
}

#[async_trait]
impl EventStore for DynamoJobStore {
    async fn append(
        &self,
        events: &[ProgressEvent],
        expected_last_seq: u64,
        retain_until: Millis,
    ) -> Result<(), StoreError> {
        let Some(first) = events.first() else {
            return Err(StoreError::ConditionFailed { current: None });
        };
        let job_id = first.job_id;
        if !is_append_batch(events, expected_last_seq) {
            // A caller bug, reported like any mismatch (with the stored job) and writing nothing.
            let current = self.get(&job_id).await?.map(Box::new);
            return Err(StoreError::ConditionFailed { current });
        }
        let last = events[events.len() - 1].seq;
        let job_update = Update::builder()
            .table_name(&self.table)
            .key(PK, s(job_pk(&job_id)))
            .update_expression("SET last_seq = :seq")
            .condition_expression("attribute_exists(pk) AND last_seq = :expected")
            .expression_attribute_values(":seq", n(last))
            .expression_attribute_values(":expected", n(expected_last_seq))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_err)?;
        let mut items = vec![TransactWriteItem::builder().update(job_update).build()];
        items.extend(self.event_puts(events, retain_until)?);

        let mut tries = 0;
        loop {
            tries += 1;
            let err = match self.client.transact_write_items().set_transact_items(Some(items.clone())).send().await {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) = err.as_service_error() else {
                return Err(store_err("TransactWriteItems", err));
            };
            let reasons = cancel.cancellation_reasons();
            let code = |i: usize| reasons.get(i).and_then(|r| r.code()).unwrap_or("None");
            let event_failed = (1..=events.len()).any(|i| code(i) == "ConditionalCheckFailed");
            tracing::debug!(%job_id, first = first.seq, last, job = code(0), event_failed, "append cancelled");

            if code(0) == "ConditionalCheckFailed" {
                // The old job comes back with the cancellation when it exists; a missing
                // item means a missing job, but read to be sure if the service left it out.
                let current = match reasons[0].item() {
                    Some(item) => Some(item_to_job(item)?),
                    None => self.get(&job_id).await?,
                };
                return Err(StoreError::ConditionFailed { current: current.map(Box::new) });
            } else if event_failed {
                // The event is already stored although the job passed its check. DynamoDB
                // isolates transactions, so another append must have committed in between
                // (emulators that do not isolate get here in a race): if the job moved
                // on, that is an ordinary lost race. If it still says `expected_last_seq`,
                // the table is inconsistent (hand-edited or restored), and retrying with
                // the next number would loop: report that.
                let current = self.get(&job_id).await?;
                if current.as_ref().is_some_and(|job| job.last_seq == expected_last_seq) {
                    return Err(StoreError::Corrupt(format!(
                        "job {job_id} has last_seq {expected_last_seq} but one of events {}..={last} already exists",
                        first.seq
                    )));
                }
                return Err(StoreError::ConditionFailed { current: current.map(Box::new) });
            } else if let Some(e) = transaction_failure(&err, reasons) {
                return Err(e);
            }
            tokio::time::sleep(retry_pause(&err, tries, APPEND_TRIES, 10)?).await;
        }
    }

    async fn read(
        &self,
        job_id: &JobId,
        after: u64,
        last_seq: u64,
        limit: u32,
    ) -> Result<Vec<ProgressEvent>, StoreError> {
        // Events are fetched by exact key: seq after+1 ..= min(last_seq, after+limit).
        // An event deleted by TTL is simply absent from the answer.
        let window = ferry_core::progress::read_window(after, last_seq, limit);
        let end = *window.end();
        let mut events = Vec::new();
        let mut first = *window.start();
        while first <= end {
            let last = end.min(first + (BATCH_GET_MAX - 1));
            let keys: Vec<Item> =
                (first..=last).map(|seq| HashMap::from([(PK.to_string(), s(event_pk(job_id, seq)))])).collect();
            for item in self.batch_get(keys).await? {
                events.push(item_to_event(&item)?);
            }
            first = last + 1;
        }
        events.sort_by_key(|e| e.seq);
        Ok(events)
    }
}

impl DynamoJobStore {
    /// BatchGetItem of up to 100 keys, consistently, asking again (with a short backoff)
    /// for the keys the service leaves unprocessed.
    async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        let mut pending = keys;
        let mut tries = 0;
        while !pending.is_empty() {
            tries += 1;
            let request = KeysAndAttributes::builder()
                .set_keys(Some(pending))
                .consistent_read(true)
                .build()
                .map_err(build_err)?;
            let mut out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| store_err("BatchGetItem", e))?;
            if let Some(items) = out.responses.as_mut().and_then(|r| r.remove(&self.table)) {
                found.extend(items);
            }
            pending =
                out.unprocessed_keys.as_mut().and_then(|u| u.remove(&self.table)).map(|k| k.keys).unwrap_or_default();
            if pending.is_empty() {
                break;
            }
            if tries >= BATCH_GET_TRIES {
                return Err(StoreError::Throttled(format!(
                    "DynamoDB BatchGetItem: {} keys still unprocessed after {tries} tries",
                    pending.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10 << tries.min(6))).await;
        }
        Ok(found)
    }
}

/// API keys (stored by hash) in the jobs table.
#[derive(Debug, Clone)]
pub struct DynamoApiKeyStore {
    client: Client,
    table: String,
}

impl DynamoApiKeyStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoApiKeyStore { client, table: table.into() }
    }
}

#[async_trait]
impl ApiKeyStore for DynamoApiKeyStore {
    async fn lookup(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        // Consistent, so a key works the moment `put` returns (key creation is rare,
        // lookups are cheap either way at this size).
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(apikey_pk(key_hash)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_err("GetItem", e))?;
        out.item.as_ref().map(|item| item_to_apikey(key_hash, item)).transpose()
    }

    async fn put(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(apikey_to_item(record)))
            .send()
            .await
            .map_err(|e| store_err("PutItem", e))?;
        Ok(())
    }
}

/// Tenants' webhook secrets in the jobs table (`whsec#<tenant>`; `version`, the
/// compare-and-set counter). With a KMS key ([`DynamoWebhookSecrets::sealed_with`], what a
/// deployment configures) the JSON list is sealed by KMS under the tenant's encryption context
/// (`secrets_kms`), so reading a secret takes `kms:Decrypt` for that tenant as well as the item;
/// without one (`ferry dev --backend aws`) it is stored as is (`secrets`), under the table's
/// encryption at rest.
#[derive(Debug, Clone)]
pub struct DynamoWebhookSecrets {
    client: Client,
    table: String,
    key: Option<crate::kms::KmsKey>,
}

impl DynamoWebhookSecrets {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoWebhookSecrets { client, table: table.into(), key: None }
    }

    /// Secrets are sealed with `key` (and sealed ones can be read).
    pub fn sealed_with(mut self, key: Option<crate::kms::KmsKey>) -> Self {
        self.key = key;
        self
    }

    fn context(tenant: &TenantId) -> std::collections::BTreeMap<&'static str, &str> {
        [("ferry:item", "whsec"), ("ferry:tenant", tenant.as_str())].into()
    }

    fn kms_err(e: crate::kms::KmsError) -> StoreError {
        match e {
            crate::kms::KmsError::Unavailable { .. } => StoreError::Unavailable(e.to_string()),
            other => StoreError::Refused(other.to_string()),
        }
    }
}

#[async_trait]
impl WebhookSecretStore for DynamoWebhookSecrets {
    async fn get(&self, tenant: &TenantId) -> Result<Option<WebhookSecrets>, StoreError> {
        let Some(item) = get_consistent(&self.client, &self.table, webhook_secrets_pk(tenant)).await? else {
            return Ok(None);
        };
        let (stored, version) = item_to_stored_secrets(&item)?;
        let json = match (stored, &self.key) {
            (StoredSecrets::Plain(json), _) => json,
            (StoredSecrets::Sealed(blob), Some(key)) => {
                let plain = key.decrypt(&blob, &Self::context(tenant)).await.map_err(Self::kms_err)?;
                String::from_utf8(plain).map_err(|e| StoreError::Corrupt(format!("whsec#{tenant}: {e}")))?
            }
            (StoredSecrets::Sealed(_), None) => {
                return Err(StoreError::Unavailable(
                    "the webhook secrets are sealed with KMS, and this process has no key (FERRY_WEBHOOK_KEY_ID)"
                        .into(),
                ));
            }
        };
        webhook_secrets_from_json(tenant, &json, version).map(Some)
    }

    async fn put(&self, record: &WebhookSecrets) -> Result<bool, StoreError> {
        if record.version == 0 {
            return Ok(false);
        }
        let json = webhook_secrets_json(record)?;
        let stored = match &self.key {
            Some(key) => StoredSecrets::Sealed(
                key.encrypt(json.as_bytes(), &Self::context(&record.tenant)).await.map_err(Self::kms_err)?,
            ),
            None => StoredSecrets::Plain(json),
        };
        let item = webhook_secrets_to_item(record, stored);
        put_versioned(&self.client, &self.table, item, record.version).await
    }
}

/// Webhook deliveries in the jobs table (`whd#<job>#<id>`, on `gsi1` under `whd#<job>`) and
/// the endpoints a 410 disabled (`whoff#<tenant>#<url hash>`).
#[derive(Debug, Clone)]
pub struct DynamoDeliveries {
    client: Client,
    table: String,
}

impl DynamoDeliveries {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoDeliveries { client, table: table.into() }
    }
}

#[async_trait]
impl WebhookDeliveryStore for DynamoDeliveries {
    async fn create(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError> {
        put_versioned(&self.client, &self.table, delivery_to_item(delivery)?, 1).await
    }

    async fn get(&self, job_id: &JobId, id: &str) -> Result<Option<WebhookDelivery>, StoreError> {
        let item = get_consistent(&self.client, &self.table, delivery_pk(job_id, id)).await?;
        item.as_ref().map(item_to_delivery).transpose()
    }

    async fn list(&self, job_id: &JobId) -> Result<Vec<WebhookDelivery>, StoreError> {
        let mut out = vec![];
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI1)
                .key_condition_expression("gsi1pk = :pk")
                .expression_attribute_values(":pk", s(delivery_gsi1pk(job_id)))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_err("Query", e))?;
            for item in page.items() {
                out.push(item_to_delivery(item)?);
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(out),
            }
        }
    }

    async fn update(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError> {
        // An update writes version 2 or later: version 1 is `create`'s.
        if delivery.version < 2 {
            return Ok(false);
        }
        put_versioned(&self.client, &self.table, delivery_to_item(delivery)?, delivery.version).await
    }

    async fn disabled_since(&self, tenant: &TenantId, url: &str) -> Result<Option<Millis>, StoreError> {
        let item = get_consistent(&self.client, &self.table, endpoint_pk(tenant, url)).await?;
        match item.as_ref().and_then(|item| item.get("at")) {
            Some(AttributeValue::N(at)) => {
                at.parse().map(Some).map_err(|_| StoreError::Corrupt(format!("whoff item: at {at:?}")))
            }
            _ => Ok(None),
        }
    }

    async fn set_disabled(&self, tenant: &TenantId, url: &str, at: Option<Millis>) -> Result<(), StoreError> {
        let key = s(endpoint_pk(tenant, url));
        match at {
            Some(at) => {
                let item = HashMap::from([(PK.to_string(), key), ("at".to_string(), n(at))]);
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .send()
                    .await
                    .map_err(|e| store_err("PutItem", e))?;
            }
            None => {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .key(PK, key)
                    .send()
                    .await
                    .map_err(|e| store_err("DeleteItem", e))?;
            }
        }
        Ok(())
    }
}

/// The item `pk` of `table`, read consistently.
pub(crate) async fn get_consistent(client: &Client, table: &str, pk: String) -> Result<Option<Item>, StoreError> {
    let out = client
        .get_item()
        .table_name(table)
        .key(PK, s(pk))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| store_err("GetItem", e))?;
    Ok(out.item)
}

/// Puts `item`, the `version`th of its record, if and only if the stored one is the one before
/// it: none at all for version 1, else `version - 1` in its `version` attribute. `Ok(false)`
/// when another writer got there first (or `version` is 0).
pub(crate) async fn put_versioned(client: &Client, table: &str, item: Item, version: u64) -> Result<bool, StoreError> {
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    let put = client.put_item().table_name(table).set_item(Some(item));
    let put = match version {
        0 => return Ok(false),
        1 => put.condition_expression("attribute_not_exists(pk)"),
        v => put
            .condition_expression("#version = :expected")
            .expression_attribute_names("#version", "version")
            .expression_attribute_values(":expected", n(v - 1)),
    };
    match put.send().await {
        Ok(_) => Ok(true),
        Err(err) if matches!(err.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(_))) => {
            Ok(false)
        }
        Err(err) => Err(store_err("PutItem", err)),
    }
}

//! [`DynamoConnectionStore`]: WebSocket connections and their job subscriptions in the
//! jobs table (item layout in `dynamo_codec`).
//!
//! A subscription is written twice: into the connection's `subs` (so `delete` knows what
//! to clean up) and into the job's `subs#<job>` item's `conns` (so `subscribers` is one
//! strongly consistent GetItem). Both are set `ADD` / `DELETE` updates, which commute, so
//! concurrent subscribes to one job never conflict or lose each other. The two writes are
//! not one transaction (transactions on one hot `subs#` item would conflict under load):
//! `subscribe` writes the connection first and `unsubscribe` the job first, so a failure
//! between the two leaves at worst a connection listing a job that does not list it,
//! which `delete` cleans up without harm. All client-supplied ids travel as values.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use ferry_core::JobId;
use ferry_core::ports::{Connection, ConnectionStore, StoreError};

use crate::dynamo_codec::{PK, TTL, conn_pk, connection_attrs, item_to_connection, n, s, string_set, subs_pk};
use crate::dynamo_error::store_err;

/// How long a job's subscriber item outlives its latest subscribe. Connections live at
/// most 2 h, so a day is ample.
const SUBS_RETENTION: Duration = Duration::from_secs(86_400);

/// Connections and subscriptions in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoConnectionStore {
    client: Client,
    table: String,
}

impl DynamoConnectionStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoConnectionStore { client, table: table.into() }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Removes `member` from the string set `attr` of item `pk`, if the item exists
    /// (an update without the condition would create a bare item).
    async fn remove_member(&self, pk: String, attr: &'static str, member: String) -> Result<(), StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .update_expression("DELETE #set :member")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#set", attr)
            .expression_attribute_values(":member", AttributeValue::Ss(vec![member]))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(()),
            Err(err) => Err(store_err("UpdateItem", err)),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[async_trait]
impl ConnectionStore for DynamoConnectionStore {
    async fn put(&self, connection: &Connection) -> Result<(), StoreError> {
        // An update rather than a put: re-recording a connection keeps its `subs`, so a
        // later `delete` still finds and cleans up its subscriptions.
        let mut request = self.client.update_item().table_name(&self.table).key(PK, s(conn_pk(&connection.id)));
        let mut sets = Vec::new();
        for (attr, value) in connection_attrs(connection) {
            sets.push(format!("#{attr} = :{attr}"));
            request = request
                .expression_attribute_names(format!("#{attr}"), attr)
                .expression_attribute_values(format!(":{attr}"), value);
        }
        request
            .update_expression(format!("SET {}", sets.join(", ")))
            .send()
            .await
            .map_err(|e| store_err("UpdateItem", e))?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Connection>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(conn_pk(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_err("GetItem", e))?;
        out.item.as_ref().map(|item| item_to_connection(id, item)).transpose()
    }

    async fn delete(&self, id: &str) -> Result<Vec<JobId>, StoreError> {
        // Read and delete in one call: a subscribe racing with this either reached the
        // connection item first (and is returned and cleaned up here) or fails its
        // `attribute_exists` condition. One narrow window remains: a subscribe whose job
        // write lands after the cleanup below leaves this id in the job's `conns`; posting
        // to it then reports Gone, and the caller drops it with `unsubscribe` (or the
        // `subs#` item's TTL does).
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(conn_pk(id)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| store_err("DeleteItem", e))?;
        let Some(old) = out.attributes else {
            return Ok(Vec::new());
        };
        let mut jobs = Vec::new();
        for text in string_set(&old, "subs")? {
            match text.parse::<JobId>() {
                Ok(job) => jobs.push(job),
                Err(e) => tracing::warn!(connection = id, job = %text, error = %e, "skipping a malformed subscription"),
            }
        }
        jobs.sort();
        for job in &jobs {
            self.remove_member(subs_pk(job), "conns", id.to_string()).await?;
        }
        Ok(jobs)
    }

    async fn subscribe(&self, id: &str, job_id: &JobId) -> Result<(), StoreError> {
        // The connection first, and only if it is recorded: a subscribe after (or racing
        // with) `delete` must not leave a bare connection item behind without a TTL.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(conn_pk(id)))
            .update_expression("ADD #subs :job")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#subs", "subs")
            .expression_attribute_values(":job", AttributeValue::Ss(vec![job_id.to_string()]))
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                return Err(StoreError::ConditionFailed { current: None });
            }
            Err(err) => return Err(store_err("UpdateItem", err)),
        }
        let ttl = now_secs() + SUBS_RETENTION.as_secs();
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(subs_pk(job_id)))
            .update_expression("ADD #conns :conn SET #ttl = :ttl")
            .expression_attribute_names("#conns", "conns")
            .expression_attribute_names("#ttl", TTL)
            .expression_attribute_values(":conn", AttributeValue::Ss(vec![id.to_string()]))
            .expression_attribute_values(":ttl", n(ttl))
            .send()
            .await
            .map_err(|e| store_err("UpdateItem", e))?;
        Ok(())
    }

    async fn unsubscribe(&self, id: &str, job_id: &JobId) -> Result<(), StoreError> {
        self.remove_member(subs_pk(job_id), "conns", id.to_string()).await?;
        self.remove_member(conn_pk(id), "subs", job_id.to_string()).await
    }

    async fn subscribers(&self, job_id: &JobId) -> Result<Vec<String>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(subs_pk(job_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_err("GetItem", e))?;
        let mut ids = match &out.item {
            Some(item) => string_set(item, "conns")?,
            None => Vec::new(),
        };
        ids.sort();
        Ok(ids)
    }
}

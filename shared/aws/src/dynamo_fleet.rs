//! The fleet's records in the jobs table: `DynamoJobStore` as the `PoolStore` port (the
//! dispatcher's pool record, written with a compare-and-set on `version`, and executor
//! heartbeats on the by-state index).

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use ferry_core::fleet::{ExecutorRecord, PoolState, PoolStore};
use ferry_core::ports::StoreError;

use crate::dynamo::DynamoJobStore;
use crate::dynamo_codec::{GSI2PK, GSI2SK, Item, PK, TTL, executor_pk, executors_gsi2pk, n, pool_pk, s};
use crate::dynamo_error::store_err;
use crate::dynamo_index::{Table, gsi2sk, query_gsi2};

/// Heartbeats of executors that vanished without deleting theirs expire after a day.
const EXECUTOR_TTL_S: u64 = 86_400;

fn json_attr<T: serde::de::DeserializeOwned>(item: &Item, attr: &str) -> Result<T, StoreError> {
    match item.get(attr) {
        Some(AttributeValue::S(text)) => {
            serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{attr}: {e}")))
        }
        _ => Err(StoreError::Corrupt(format!("item without {attr}"))),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<AttributeValue, StoreError> {
    serde_json::to_string(value).map(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl PoolStore for DynamoJobStore {
    async fn pool_state(&self, pool: &str) -> Result<Option<PoolState>, StoreError> {
        self.get_item(pool_pk(pool)).await?.map(|item| json_attr(&item, "state")).transpose()
    }

    async fn put_pool_state(&self, state: &PoolState, expected: Option<u64>) -> Result<(), StoreError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(pool_pk(&state.pool)))
            .item("state", to_json(state)?)
            .item("version", n(state.version));
        put = match expected {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(v) => put
                .condition_expression("#version = :expected")
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":expected", n(v)),
        };
        match put.send().await {
            Ok(_) => Ok(()),
            Err(err) if matches!(err.as_service_error(), Some(PutItemError::ConditionalCheckFailedException(_))) => {
                Err(StoreError::ConditionFailed { current: None })
            }
            Err(err) => Err(store_err("PutItem", err)),
        }
    }

    async fn put_executor(&self, record: &ExecutorRecord) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(executor_pk(&record.id)))
            .item(GSI2PK, s(executors_gsi2pk(&record.pool)))
            .item(GSI2SK, s(record.id.clone()))
            .item("record", to_json(record)?)
            .item(TTL, n(record.seen_at / 1000 + EXECUTOR_TTL_S))
            .send()
            .await
            .map_err(|e| store_err("PutItem", e))?;
        Ok(())
    }

    async fn executors(&self, pool: &str) -> Result<Vec<ExecutorRecord>, StoreError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let items = query_gsi2(
                &Table { client: &self.client, table: &self.table },
                executors_gsi2pk(pool),
                after.take(),
                100,
            )
            .await?;
            for item in &items {
                out.push(json_attr::<ExecutorRecord>(item, "record")?);
            }
            if items.len() < 100 {
                return Ok(out);
            }
            after = items.last().and_then(|i| gsi2sk(i)).map(str::to_string);
        }
    }

    async fn delete_executor(&self, id: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(executor_pk(id)))
            .send()
            .await
            .map_err(|e| store_err("DeleteItem", e))?;
        Ok(())
    }
}

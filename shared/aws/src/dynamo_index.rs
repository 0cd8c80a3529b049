//! The sparse "by state" index (`gsi2`): non-terminal jobs under `active#<status>` (the
//! watchdog's scan) and executor heartbeats under `executors#<pool>`.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use ferry_core::ports::{JobPage, StoreError};
use ferry_core::{JobId, JobStatus};

use crate::dynamo_codec::{GSI2, GSI2PK, GSI2SK, Item, active_gsi2pk, item_to_job, s};
use crate::dynamo_error::store_err;

/// A client and the table it reads.
pub(crate) struct Table<'a> {
    pub client: &'a Client,
    pub table: &'a str,
}

/// Non-terminal jobs of one status, oldest first, from the by-state index.
pub(crate) async fn active(
    store: &Table<'_>,
    status: JobStatus,
    limit: u32,
    after: Option<JobId>,
) -> Result<JobPage, StoreError> {
    if status.is_terminal() {
        return Ok(JobPage { jobs: Vec::new(), next: None });
    }
    let limit = limit.clamp(1, 100) as usize;
    let items = query_gsi2(store, active_gsi2pk(status), after.map(|a| a.to_string()), limit).await?;
    let mut jobs = Vec::with_capacity(items.len());
    for item in &items {
        let job = item_to_job(item)?;
        // The index is eventually consistent: skip an entry whose job already moved on.
        if job.status == status {
            jobs.push(job);
        }
    }
    let next =
        if items.len() >= limit { items.last().and_then(|i| gsi2sk(i)).and_then(|sk| sk.parse().ok()) } else { None };
    Ok(JobPage { jobs, next })
}

pub(crate) fn gsi2sk(item: &Item) -> Option<&str> {
    match item.get(GSI2SK) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

/// Up to `limit` items of one partition of the by-state index with sort key after `after`.
pub(crate) async fn query_gsi2(
    store: &Table<'_>,
    pk: String,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let mut q = store
            .client
            .query()
            .table_name(store.table)
            .index_name(GSI2)
            .key_condition_expression(if after.is_some() { "#pk = :pk AND #sk > :after" } else { "#pk = :pk" })
            .expression_attribute_names("#pk", GSI2PK)
            .expression_attribute_values(":pk", s(pk.clone()))
            .limit((limit - items.len()) as i32)
            .set_exclusive_start_key(start.take());
        if let Some(after) = &after {
            q = q.expression_attribute_names("#sk", GSI2SK).expression_attribute_values(":after", s(after.clone()));
        }
        let out = q.send().await.map_err(|e| store_err("Query", e))?;
        items.extend(out.items.unwrap_or_default());
        match out.last_evaluated_key {
            Some(last) if items.len() < limit => start = Some(last),
            _ => return Ok(items),
        }
    }
}

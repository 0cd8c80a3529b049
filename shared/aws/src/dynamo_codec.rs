//! Conversion between Ferry's records and DynamoDB items, and the table's key layout.
//!
//! One table holds three kinds of item, told apart by the prefix of `pk`:
//! - `job#<id>`: a job; `gsi1pk = tenant#<tenant>`, `gsi1sk = <id>` put it on the tenant
//!   index, newest last (ULIDs sort by creation time).
//! - `idem#<tenant>#<sha256 hex of the key>`: an idempotency binding. The key is hashed so
//!   client-chosen bytes never shape the partition key (length, odd characters).
//! - `apikey#<key hash>`: an API key's tenant.
//! - `whsec#<tenant>`: the tenant's webhook signing secrets (`secrets`, JSON; `version`,
//!   the compare-and-set counter).
//! - `whd#<job id>#<webhook id>`: a webhook delivery (`delivery`, JSON; `version`, the
//!   compare-and-set counter), on `gsi1` under `whd#<job id>` so a job's deliveries are one
//!   query; its `ttl` is the job's retention.
//! - `whoff#<tenant>#<sha256 hex of the URL>`: a webhook endpoint a 410 disabled (`at`).
//! - `evt#<job id>#<seq, 20 digits>`: one progress event (`body` is the event's JSON);
//!   its `ttl` is the job's retention. Written together with the job's `last_seq`.
//! - `pool#<pool>`: the dispatcher's record of a pool (`state`, JSON; `version`, the
//!   compare-and-set counter).
//! - `exec#<executor id>`: an executor's heartbeat (`record`, JSON), on the by-state index
//!   `gsi2` under `executors#<pool>`; non-terminal jobs are on it under `active#<status>`.
//! - `conn#<connection id>`: a WebSocket connection, with `subs`, the string set of the
//!   jobs it follows.
//! - `subs#<job id>`: `conns`, the string set of the connections following a job, so
//!   `subscribers` is one strongly consistent GetItem (an index would be eventually
//!   consistent and could miss a subscription just written).
//!
//! Timestamps are numbers of milliseconds, except `ttl`, which DynamoDB's TTL requires in
//! epoch seconds. An optional field that is `None` is an absent attribute, never NULL, so
//! the item stays small and `attribute_exists` means what it says.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use ferry_core::deliver::WebhookDelivery;
use ferry_core::input::Input;
use ferry_core::ports::{ApiKeyRecord, Connection, IdempotencyRecord, StoreError, WebhookSecrets};
use ferry_core::progress::ProgressEvent;
use ferry_core::{Job, JobError, JobId, Millis, TenantId};
use sha2::{Digest, Sha256};

/// A DynamoDB item.
pub(crate) type Item = HashMap<String, AttributeValue>;

pub(crate) const PK: &str = "pk";
pub(crate) const GSI1: &str = "gsi1";
pub(crate) const GSI1PK: &str = "gsi1pk";
pub(crate) const GSI1SK: &str = "gsi1sk";
/// The sparse "by state" index: non-terminal jobs under `active#<status>` (the watchdog's
/// scan) and executor heartbeats under `executors#<pool>`. Terminal jobs leave it.
pub(crate) const GSI2: &str = "gsi2";
pub(crate) const GSI2PK: &str = "gsi2pk";
pub(crate) const GSI2SK: &str = "gsi2sk";
/// The attribute DynamoDB's TTL is enabled on.
pub(crate) const TTL: &str = "ttl";

/// The `pk` prefixes of jobs and of progress events.
pub(crate) const JOB_PREFIX: &str = "job#";
pub(crate) const EVENT_PREFIX: &str = "evt#";
/// On an event item written by a process that cannot push it: the dispatcher Lambda pushes
/// it from the table's stream (`fanout = "stream"`).
pub(crate) const FANOUT: &str = "fanout";
pub(crate) const FANOUT_STREAM: &str = "stream";

pub(crate) fn job_pk(id: &JobId) -> String {
    format!("{JOB_PREFIX}{id}")
}

pub(crate) fn tenant_gsi1pk(tenant: &TenantId) -> String {
    format!("tenant#{tenant}")
}

pub(crate) fn active_gsi2pk(status: ferry_core::JobStatus) -> String {
    format!("active#{status}")
}

pub(crate) fn pool_pk(pool: &str) -> String {
    format!("pool#{pool}")
}

pub(crate) fn executor_pk(id: &str) -> String {
    format!("exec#{id}")
}

pub(crate) fn executors_gsi2pk(pool: &str) -> String {
    format!("executors#{pool}")
}

pub(crate) fn idem_pk(tenant: &TenantId, key: &str) -> String {
    format!("idem#{tenant}#{}", hex::encode(Sha256::digest(key.as_bytes())))
}

pub(crate) fn apikey_pk(key_hash: &str) -> String {
    format!("apikey#{key_hash}")
}

pub(crate) fn webhook_secrets_pk(tenant: &ferry_core::TenantId) -> String {
    format!("whsec#{}", tenant.as_str())
}

/// A tenant's secrets as the item holds them: the JSON list itself (`secrets`), or sealed by KMS
/// (`secrets_kms`, the ciphertext of that JSON).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StoredSecrets {
    Plain(String),
    Sealed(Vec<u8>),
}

/// The JSON of a tenant's secrets list, as [`StoredSecrets`] holds it.
pub(crate) fn webhook_secrets_json(rec: &WebhookSecrets) -> Result<String, StoreError> {
    serde_json::to_string(&rec.secrets)
        .map_err(|e| StoreError::Corrupt(format!("webhook secrets cannot be encoded: {e}")))
}

pub(crate) fn webhook_secrets_to_item(rec: &WebhookSecrets, stored: StoredSecrets) -> Item {
    let secrets = match stored {
        StoredSecrets::Plain(json) => ("secrets".to_string(), s(json)),
        StoredSecrets::Sealed(blob) => ("secrets_kms".to_string(), AttributeValue::B(blob.into())),
    };
    HashMap::from([(PK.into(), s(webhook_secrets_pk(&rec.tenant))), secrets, ("version".into(), n(rec.version))])
}

/// The stored secrets and the version of a `whsec#` item.
pub(crate) fn item_to_stored_secrets(item: &Item) -> Result<(StoredSecrets, u64), StoreError> {
    let r = Reader(item);
    let stored = match item.get("secrets_kms") {
        Some(AttributeValue::B(blob)) => StoredSecrets::Sealed(blob.clone().into_inner()),
        Some(_) => return Err(r.corrupt("secrets_kms", "expected binary")),
        None => StoredSecrets::Plain(r.s("secrets")?),
    };
    Ok((stored, r.n("version")?))
}

/// A tenant's record from the JSON of its secrets list.
pub(crate) fn webhook_secrets_from_json(
    tenant: &ferry_core::TenantId,
    json: &str,
    version: u64,
) -> Result<WebhookSecrets, StoreError> {
    let secrets = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("item \"whsec#{tenant}\", attribute \"secrets\": {e}")))?;
    Ok(WebhookSecrets { tenant: tenant.clone(), secrets, version })
}

pub(crate) fn delivery_pk(job_id: &JobId, id: &str) -> String {
    format!("whd#{job_id}#{id}")
}

pub(crate) fn delivery_gsi1pk(job_id: &JobId) -> String {
    format!("whd#{job_id}")
}

pub(crate) fn delivery_to_item(d: &WebhookDelivery) -> Result<Item, StoreError> {
    let record =
        serde_json::to_string(d).map_err(|e| StoreError::Corrupt(format!("a delivery cannot be encoded: {e}")))?;
    Ok(HashMap::from([
        (PK.into(), s(delivery_pk(&d.job_id, &d.id))),
        (GSI1PK.into(), s(delivery_gsi1pk(&d.job_id))),
        (GSI1SK.into(), s(format!("{:020}#{}", d.created_at, d.id))),
        ("delivery".into(), s(record)),
        ("version".into(), n(d.version)),
        (TTL.into(), ttl_secs(d.retain_until)),
    ]))
}

pub(crate) fn item_to_delivery(item: &Item) -> Result<WebhookDelivery, StoreError> {
    let r = Reader(item);
    let d: WebhookDelivery = serde_json::from_str(&r.s("delivery")?).map_err(|e| r.corrupt("delivery", e))?;
    Ok(WebhookDelivery { version: r.n("version")?, ..d })
}

/// The URL is hashed: client-chosen bytes never shape the partition key.
pub(crate) fn endpoint_pk(tenant: &TenantId, url: &str) -> String {
    format!("whoff#{}#{}", tenant.as_str(), hex::encode(Sha256::digest(url.as_bytes())))
}

pub(crate) fn event_pk(job_id: &JobId, seq: u64) -> String {
    // Zero-padded so the keys of one job sort by seq, should anything ever list them.
    format!("{EVENT_PREFIX}{job_id}#{seq:020}")
}

pub(crate) fn conn_pk(id: &str) -> String {
    format!("conn#{id}")
}

pub(crate) fn subs_pk(job_id: &JobId) -> String {
    format!("subs#{job_id}")
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: impl Into<u64>) -> AttributeValue {
    AttributeValue::N(v.into().to_string())
}

/// The TTL attribute for a retention time in milliseconds.
pub(crate) fn ttl_secs(retain_until: Millis) -> AttributeValue {
    n(retain_until / 1000)
}

/// The fields an update may change, in one list so `create` and `update` cannot drift
/// apart: `(attribute, value)`, where `None` means "absent" (REMOVE on update).
pub(crate) fn lifecycle_attrs(job: &Job) -> Vec<(&'static str, Option<AttributeValue>)> {
    let json = |v: &serde_json::Value| s(v.to_string());
    vec![
        ("status", Some(s(job.status.as_str()))),
        ("attempt", Some(n(job.attempt))),
        ("started_at", job.started_at.map(n)),
        ("finished_at", job.finished_at.map(n)),
        ("updated_at", Some(n(job.updated_at))),
        ("cancel_requested_at", job.cancel_requested_at.map(n)),
        ("executor_id", job.executor_id.clone().map(s)),
        ("lease_until", job.lease_until.map(n)),
        ("output", job.output.as_ref().map(json)),
        ("output_object", job.output_object.as_ref().map(|o| s(serde_json::json!(o).to_string()))),
        ("error_type", job.error.as_ref().map(|e| s(e.kind.clone()))),
        ("error_message", job.error.as_ref().map(|e| s(e.message.clone()))),
        ("retain_until", Some(n(job.retain_until))),
        (TTL, Some(ttl_secs(job.retain_until))),
        // On the by-state index only while the job can still change.
        (GSI2PK, (!job.status.is_terminal()).then(|| s(active_gsi2pk(job.status)))),
        (GSI2SK, (!job.status.is_terminal()).then(|| s(job.id.to_string()))),
    ]
}

/// The whole item for a new job, keys included.
pub(crate) fn job_to_item(job: &Job) -> Item {
    let mut item = Item::new();
    item.insert(PK.into(), s(job_pk(&job.id)));
    item.insert(GSI1PK.into(), s(tenant_gsi1pk(&job.tenant)));
    item.insert(GSI1SK.into(), s(job.id.to_string()));
    item.insert("id".into(), s(job.id.to_string()));
    item.insert("tenant".into(), s(job.tenant.as_str()));
    item.insert("model".into(), s(job.model.clone()));
    item.insert("task".into(), s(job.task().as_str()));
    item.insert("input".into(), s(job.input.input_json().to_string()));
    item.insert("params".into(), s(job.input.params_json().to_string()));
    if let Some(object) = job.input.object() {
        item.insert("input_object".into(), s(serde_json::json!(object).to_string()));
    }
    item.insert("timeout_s".into(), n(job.timeout_s));
    item.insert("max_attempts".into(), n(job.max_attempts));
    item.insert("created_at".into(), n(job.created_at));
    item.insert("expires_at".into(), n(job.expires_at));
    if let Some(key) = &job.idempotency_key {
        item.insert("idempotency_key".into(), s(key.clone()));
    }
    if let Some(hook) = &job.webhook {
        item.insert("webhook".into(), s(serde_json::json!(hook).to_string()));
    }
    item.insert("last_seq".into(), n(job.last_seq));
    for (name, value) in lifecycle_attrs(job) {
        if let Some(value) = value {
            item.insert(name.into(), value);
        }
    }
    item
}

/// Decodes a job item. Any missing required attribute or unparsable value is `Corrupt`,
/// naming the item and attribute so an operator can find it.
pub(crate) fn item_to_job(item: &Item) -> Result<Job, StoreError> {
    let r = Reader(item);
    let error = match (r.opt_s("error_type")?, r.opt_s("error_message")?) {
        (Some(kind), message) => Some(JobError { kind, message: message.unwrap_or_default() }),
        (None, _) => None,
    };
    Ok(Job {
        id: r.parsed("id")?,
        tenant: TenantId::new(r.s("tenant")?).map_err(|e| r.corrupt("tenant", e))?,
        model: r.s("model")?,
        input: r.job_input()?,
        timeout_s: r.n("timeout_s")?,
        max_attempts: r.n("max_attempts")?,
        created_at: r.n("created_at")?,
        expires_at: r.n("expires_at")?,
        idempotency_key: r.opt_s("idempotency_key")?,
        webhook: r
            .opt_s("webhook")?
            .map(|t| serde_json::from_str(&t).map_err(|e| r.corrupt("webhook", e)))
            .transpose()?,
        status: r.parsed("status")?,
        attempt: r.n("attempt")?,
        started_at: r.opt_n("started_at")?,
        finished_at: r.opt_n("finished_at")?,
        updated_at: r.n("updated_at")?,
        cancel_requested_at: r.opt_n("cancel_requested_at")?,
        executor_id: r.opt_s("executor_id")?,
        lease_until: r.opt_n("lease_until")?,
        output: r.opt_s("output")?.map(|t| parse_json(&r, "output", &t)).transpose()?,
        output_object: r
            .opt_s("output_object")?
            .map(|t| serde_json::from_str(&t).map_err(|e| r.corrupt("output_object", e)))
            .transpose()?,
        error,
        retain_until: r.n("retain_until")?,
        // Written at creation and then only by the progress path: tolerate its absence.
        last_seq: r.opt_n("last_seq")?.unwrap_or(0),
    })
}

pub(crate) fn idem_to_item(rec: &IdempotencyRecord) -> Item {
    HashMap::from([
        (PK.into(), s(idem_pk(&rec.tenant, &rec.key))),
        ("tenant".into(), s(rec.tenant.as_str())),
        ("idem_key".into(), s(rec.key.clone())),
        ("request_hash".into(), s(rec.request_hash.clone())),
        ("job_id".into(), s(rec.job_id.to_string())),
        ("created_at".into(), n(rec.created_at)),
        ("expires_at".into(), n(rec.expires_at)),
        (TTL.into(), ttl_secs(rec.expires_at)),
    ])
}

pub(crate) fn item_to_idem(item: &Item) -> Result<IdempotencyRecord, StoreError> {
    let r = Reader(item);
    Ok(IdempotencyRecord {
        tenant: TenantId::new(r.s("tenant")?).map_err(|e| r.corrupt("tenant", e))?,
        key: r.s("idem_key")?,
        request_hash: r.s("request_hash")?,
        job_id: r.parsed("job_id")?,
        created_at: r.n("created_at")?,
        expires_at: r.n("expires_at")?,
    })
}

pub(crate) fn apikey_to_item(rec: &ApiKeyRecord) -> Item {
    HashMap::from([
        (PK.into(), s(apikey_pk(&rec.key_hash))),
        ("key_hash".into(), s(rec.key_hash.clone())),
        ("tenant".into(), s(rec.tenant.as_str())),
        ("created_at".into(), n(rec.created_at)),
    ])
}

pub(crate) fn item_to_apikey(key_hash: &str, item: &Item) -> Result<ApiKeyRecord, StoreError> {
    let r = Reader(item);
    Ok(ApiKeyRecord {
        key_hash: key_hash.to_string(),
        tenant: TenantId::new(r.s("tenant")?).map_err(|e| r.corrupt("tenant", e))?,
        created_at: r.n("created_at")?,
    })
}

pub(crate) fn event_to_item(event: &ProgressEvent, retain_until: Millis) -> Result<Item, StoreError> {
    let body = serde_json::to_string(event)
        .map_err(|e| StoreError::Corrupt(format!("event {} #{} cannot be encoded: {e}", event.job_id, event.seq)))?;
    Ok(HashMap::from([
        (PK.into(), s(event_pk(&event.job_id, event.seq))),
        ("job_id".into(), s(event.job_id.to_string())),
        ("seq".into(), n(event.seq)),
        ("time".into(), n(event.time)),
        ("body".into(), s(body)),
        (TTL.into(), ttl_secs(retain_until)),
    ]))
}

pub(crate) fn item_to_event(item: &Item) -> Result<ProgressEvent, StoreError> {
    let r = Reader(item);
    let event: ProgressEvent = serde_json::from_str(&r.s("body")?).map_err(|e| r.corrupt("body", e))?;
    let seq: u64 = r.n("seq")?;
    if event.seq != seq {
        return Err(r.corrupt("body", format!("holds seq {} but the item is seq {seq}", event.seq)));
    }
    Ok(event)
}

/// The attributes `ConnectionStore::put` sets (never `subs`, which a re-put keeps).
pub(crate) fn connection_attrs(c: &Connection) -> Vec<(&'static str, AttributeValue)> {
    vec![
        ("id", s(c.id.clone())),
        ("tenant", s(c.tenant.as_str())),
        ("connected_at", n(c.connected_at)),
        ("expires_at", n(c.expires_at)),
        (TTL, ttl_secs(c.expires_at)),
    ]
}

pub(crate) fn item_to_connection(id: &str, item: &Item) -> Result<Connection, StoreError> {
    let r = Reader(item);
    Ok(Connection {
        id: id.to_string(),
        tenant: TenantId::new(r.s("tenant")?).map_err(|e| r.corrupt("tenant", e))?,
        connected_at: r.n("connected_at")?,
        expires_at: r.n("expires_at")?,
    })
}

/// A string set attribute's members; absent means empty (DynamoDB drops empty sets).
pub(crate) fn string_set(item: &Item, name: &str) -> Result<Vec<String>, StoreError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(Vec::new()),
        Some(AttributeValue::Ss(v)) => Ok(v.clone()),
        Some(_) => Err(Reader(item).corrupt(name, "expected a string set")),
    }
}

fn parse_json(r: &Reader<'_>, name: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|e| r.corrupt(name, e))
}

/// Typed access to an item's attributes, producing `Corrupt` errors that name the item.
struct Reader<'a>(&'a Item);

impl Reader<'_> {
    fn corrupt(&self, name: &str, why: impl std::fmt::Display) -> StoreError {
        let pk = match self.0.get(PK) {
            Some(AttributeValue::S(pk)) => pk.as_str(),
            _ => "?",
        };
        StoreError::Corrupt(format!("item {pk:?}, attribute {name:?}: {why}"))
    }

    fn opt_s(&self, name: &str) -> Result<Option<String>, StoreError> {
        match self.0.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
            Some(_) => Err(self.corrupt(name, "expected a string")),
        }
    }

    fn s(&self, name: &str) -> Result<String, StoreError> {
        self.opt_s(name)?.ok_or_else(|| self.corrupt(name, "missing"))
    }

    fn opt_n<T: TryFrom<u64>>(&self, name: &str) -> Result<Option<T>, StoreError> {
        match self.0.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => {
                let wide: u64 =
                    v.parse().map_err(|_| self.corrupt(name, format!("{v:?} is not a non-negative integer")))?;
                T::try_from(wide).map(Some).map_err(|_| self.corrupt(name, format!("{v} is out of range")))
            }
            Some(_) => Err(self.corrupt(name, "expected a number")),
        }
    }

    fn n<T: TryFrom<u64>>(&self, name: &str) -> Result<T, StoreError> {
        self.opt_n(name)?.ok_or_else(|| self.corrupt(name, "missing"))
    }

    fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<T, StoreError>
    where
        T::Err: std::fmt::Display,
    {
        self.s(name)?.parse().map_err(|e| self.corrupt(name, e))
    }

    fn json(&self, name: &str) -> Result<serde_json::Value, StoreError> {
        parse_json(self, name, &self.s(name)?)
    }

    /// The typed input from its three attributes: `task`, `input` and `params`.
    fn job_input(&self) -> Result<Input, StoreError> {
        let mut stored =
            serde_json::json!({"task": self.s("task")?, "input": self.json("input")?, "params": self.json("params")?});
        if let Some(object) = self.opt_s("input_object")? {
            stored["input_object"] = parse_json(self, "input_object", &object)?;
        }
        serde_json::from_value(stored).map_err(|e| self.corrupt("input", e))
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use ferry_core::JobStatus;

    fn sample() -> Job {
        Job {
            id: JobId::generate(1_700_000_000_000),
            tenant: TenantId::new("acme").unwrap(),
            model: "tiny".into(),
            input: ferry_core::input::JobInput::prompt("hi").into(),
            timeout_s: 30,
            max_attempts: 3,
            created_at: 1_700_000_000_000,
            expires_at: 1_700_000_600_000,
            idempotency_key: Some("k".into()),
            webhook: Some(ferry_core::webhook::WebhookRequest {
                url: "https://example.com/h".into(),
                events: vec![ferry_core::webhook::WebhookEvent::Completed],
            }),
            status: JobStatus::Failed,
            attempt: 2,
            started_at: Some(1),
            finished_at: Some(2),
            updated_at: 3,
            cancel_requested_at: None,
            executor_id: Some("ex".into()),
            lease_until: None,
            output: Some(serde_json::json!({"text": "x"})),
            output_object: None,
            error: Some(JobError { kind: "model_error".into(), message: "boom".into() }),
            retain_until: 1_700_086_400_123,
            last_seq: 7,
        }
    }

    #[test]
    fn job_round_trips_and_ttl_is_seconds() {
        let job = sample();
        let item = job_to_item(&job);
        assert_eq!(item.get(TTL), Some(&AttributeValue::N("1700086400".into())));
        assert!(!item.contains_key("lease_until"));
        assert_eq!(item_to_job(&item).unwrap(), job);
    }

    #[test]
    fn event_item_layout() {
        let event = ProgressEvent {
            job_id: sample().id,
            seq: 42,
            time: 1_700_000_000_500,
            body: ferry_core::progress::EventBody::Token { index: 3, id: 9, text: "▁ü".into(), logprob: Some(-0.5) },
        };
        let item = event_to_item(&event, 1_700_086_400_999).unwrap();
        assert_eq!(item.get(PK), Some(&s(format!("evt#{}#00000000000000000042", event.job_id))));
        assert_eq!(item.get(TTL), Some(&AttributeValue::N("1700086400".into())));
        assert_eq!(item_to_event(&item).unwrap(), event);
        let mut wrong = item.clone();
        wrong.insert("seq".into(), n(41u64));
        assert!(matches!(item_to_event(&wrong), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn bad_items_are_corrupt() {
        let mut item = job_to_item(&sample());
        item.insert("attempt".into(), s("two"));
        assert!(matches!(item_to_job(&item), Err(StoreError::Corrupt(_))));
        item.remove("attempt");
        assert!(matches!(item_to_job(&item), Err(StoreError::Corrupt(_))));
    }
}

//! The jobs table's DynamoDB stream, as the dispatcher Lambda receives it: which records
//! show a queued job (its pool needs reconciling now), which are progress events an
//! executor marked for the stream fan-out (it could not push them itself), and which job
//! writes a webhook may be called for. The item layout is this crate's
//! ([`crate::dynamo_codec`]); the Lambda only asks what a batch says.

use std::collections::BTreeSet;

use aws_sdk_dynamodb::types::AttributeValue;
use ferry_core::ports::JobChange;
use ferry_core::progress::ProgressEvent;
use serde_json::Value;

use crate::dynamo_codec::{EVENT_PREFIX, FANOUT, FANOUT_STREAM, Item, JOB_PREFIX, PK, item_to_job};

/// What a batch of stream records says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamBatch {
    /// The models of jobs the records show (still) queued.
    pub queued_models: BTreeSet<String>,
    /// The progress events marked for the stream fan-out, ordered by job and seq.
    pub events: Vec<ProgressEvent>,
    /// The writes of jobs that have a webhook (old and new images), in stream order.
    pub job_changes: Vec<JobChange>,
    /// How many records the batch held.
    pub records: usize,
}

/// Reads `event` as a batch of the jobs table's stream records; `None` when it is not one
/// (the schedule's event, or anything else).
pub fn read_stream_event(event: &Value) -> Option<StreamBatch> {
    let records = event.get("Records").and_then(Value::as_array)?;
    let mut batch = StreamBatch { records: records.len(), ..StreamBatch::default() };
    for r in records {
        if r.get("eventSource").and_then(Value::as_str) != Some("aws:dynamodb") {
            continue;
        }
        let image = &r["dynamodb"]["NewImage"];
        let string = |name: &str| image[name]["S"].as_str();
        let pk = string(PK).unwrap_or_default();
        if pk.starts_with(JOB_PREFIX) && string("status") == Some("queued") {
            if let Some(model) = string("model") {
                batch.queued_models.insert(model.to_string());
            }
        }
        if pk.starts_with(JOB_PREFIX) && image.get("webhook").is_some() {
            let job = |image: &Value| image_to_item(image).and_then(|item| item_to_job(&item).ok());
            match (job(image), r["dynamodb"].get("OldImage").map(job)) {
                (Some(new), None) => batch.job_changes.push(JobChange::between(None, &new)),
                (Some(new), Some(Some(old))) => batch.job_changes.push(JobChange::between(Some(&old), &new)),
                _ => tracing::warn!(pk, "unreadable job image in the stream"),
            }
        }
        if pk.starts_with(EVENT_PREFIX) && string(FANOUT) == Some(FANOUT_STREAM) {
            match string("body").map(serde_json::from_str::<ProgressEvent>) {
                Some(Ok(event)) => batch.events.push(event),
                other => tracing::warn!(pk, error = ?other.map(|r| r.err()), "unreadable progress event in the stream"),
            }
        }
    }
    // The stream orders records per item; a job's events are ordered by seq here.
    batch.events.sort_by_key(|e| (e.job_id, e.seq));
    Some(batch)
}

/// A stream image (DynamoDB JSON, `{"name": {"S": "..."}}`) as an item; `None` when it holds
/// something that is not DynamoDB JSON.
pub(crate) fn image_to_item(image: &Value) -> Option<Item> {
    image.as_object()?.iter().map(|(name, v)| Some((name.clone(), attribute(v)?))).collect()
}

fn attribute(v: &Value) -> Option<AttributeValue> {
    let (kind, v) = v.as_object()?.iter().next()?;
    let strings = |v: &Value| v.as_array()?.iter().map(|s| s.as_str().map(String::from)).collect::<Option<Vec<_>>>();
    Some(match kind.as_str() {
        "S" => AttributeValue::S(v.as_str()?.into()),
        "N" => AttributeValue::N(v.as_str()?.into()),
        "BOOL" => AttributeValue::Bool(v.as_bool()?),
        "NULL" => AttributeValue::Null(true),
        "SS" => AttributeValue::Ss(strings(v)?),
        "NS" => AttributeValue::Ns(strings(v)?),
        "L" => AttributeValue::L(v.as_array()?.iter().map(attribute).collect::<Option<_>>()?),
        "M" => AttributeValue::M(image_to_item(v)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_the_models_of_queued_jobs() {
        let event = serde_json::json!({"Records": [
            {"eventSource": "aws:dynamodb", "eventName": "INSERT", "dynamodb": {"NewImage": {
                "pk": {"S": "job#01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B"}, "status": {"S": "queued"}, "model": {"S": "llama"}}}},
            {"eventSource": "aws:dynamodb", "eventName": "MODIFY", "dynamodb": {"NewImage": {
                "pk": {"S": "job#01JD3Q7ZK8M6W0Y8V6ZQ0C9F1C"}, "status": {"S": "running"}, "model": {"S": "minilm"}}}},
            {"eventSource": "aws:dynamodb", "eventName": "INSERT", "dynamodb": {"NewImage": {
                "pk": {"S": "evt#01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B#00000000000000000001"}}}},
            {"eventSource": "aws:dynamodb", "eventName": "REMOVE", "dynamodb": {}}
        ]});
        let batch = read_stream_event(&event).unwrap();
        assert_eq!(
            batch,
            StreamBatch {
                queued_models: ["llama".to_string()].into(),
                events: vec![],
                job_changes: vec![],
                records: 4
            }
        );
    }

    #[test]
    fn events_marked_for_the_stream_are_read_back_in_seq_order() {
        let evt = |seq: u64, marked: bool| {
            let body = serde_json::json!({"job_id": "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B", "seq": seq, "time": 5,
                "type": "token", "index": seq - 1, "id": 7, "text": "a", "logprob": null});
            let mut image = serde_json::json!({"pk": {"S": format!("evt#01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B#{seq:020}")},
                "body": {"S": body.to_string()}});
            if marked {
                image["fanout"] = serde_json::json!({"S": "stream"});
            }
            serde_json::json!({"eventSource": "aws:dynamodb", "eventName": "INSERT", "dynamodb": {"NewImage": image}})
        };
        let event = serde_json::json!({"Records": [evt(3, true), evt(2, true), evt(4, false)]});
        let batch = read_stream_event(&event).unwrap();
        assert!(batch.queued_models.is_empty());
        assert_eq!(batch.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3], "only marked events, in order");
    }

    #[test]
    fn a_scheduled_event_is_not_a_stream_batch() {
        let event = serde_json::json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        assert_eq!(read_stream_event(&event), None);
    }
}

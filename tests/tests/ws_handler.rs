//! The WebSocket handler (`WsApi`) over real adapters, embedded and DynamoDB on moto: the
//! `$connect` auth rules, subscribe with replay, live events, resume by `after_seq`,
//! cross-tenant refusal, malformed messages, unsubscribe and `$disconnect`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferry_core::auth::hash_api_key;
use ferry_core::job::{Job, JobId, JobStatus, TenantId};
use ferry_core::ports::{ApiKeyRecord, Notifier, NotifyError, SystemClock};
use ferry_core::progress::EventBody;
use ferry_core::publish::ProgressHub;
use ferry_core::ws::{WsApi, WsRequest};
use ferry_tests::backends::{self, Backend};
use serde_json::Value;

/// Collects the frames posted to each connection.
#[derive(Default)]
struct Frames(Mutex<HashMap<String, Vec<Value>>>);

#[async_trait]
impl Notifier for Frames {
    async fn post(&self, id: &str, data: &[u8]) -> Result<(), NotifyError> {
        let v: Value = serde_json::from_slice(data).map_err(|e| NotifyError::Failed(e.to_string()))?;
        self.0.lock().unwrap().entry(id.to_string()).or_default().push(v);
        Ok(())
    }
}

impl Frames {
    fn take(&self, id: &str) -> Vec<Value> {
        self.0.lock().unwrap().remove(id).unwrap_or_default()
    }
}

struct Setup {
    ws: WsApi,
    frames: Arc<Frames>,
    b: Backend,
}

async fn setup(b: Backend) -> Setup {
    for (key, tenant) in [("key-acme", "acme"), ("key-other", "other")] {
        let record =
            ApiKeyRecord { key_hash: hash_api_key(key), tenant: TenantId::new(tenant).unwrap(), created_at: 0 };
        b.keys.put(&record).await.unwrap();
    }
    let frames = Arc::new(Frames::default());
    let hub = Arc::new(ProgressHub {
        jobs: b.jobs.clone(),
        events: b.events.clone(),
        connections: b.connections.clone(),
        notifier: frames.clone(),
        clock: Arc::new(SystemClock),
    });
    Setup { ws: WsApi { hub, keys: b.keys.clone() }, frames, b }
}

fn job(tenant: &str) -> Job {
    ferry_tests::fixtures::job(tenant, JobStatus::Queued)
}

fn conn_id() -> String {
    format!("c{}=", ulid::Ulid::new())
}

fn connect(id: &str, auth: Option<&str>, token: Option<&str>) -> WsRequest {
    WsRequest {
        route_key: "$connect".into(),
        connection_id: id.into(),
        authorization: auth.map(String::from),
        token: token.map(String::from),
        body: None,
    }
}

fn message(id: &str, body: &str) -> WsRequest {
    WsRequest { route_key: "$default".into(), connection_id: id.into(), body: Some(body.into()), ..Default::default() }
}

fn actions(frames: &[Value]) -> Vec<String> {
    frames.iter().map(|f| f["action"].as_str().unwrap_or("?").to_string()).collect()
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() { super::$name(super::setup(super::backends::embedded()).await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn aws() {
                if let Some(b) = super::backends::aws().await { super::$name(super::setup(b).await).await }
            }
        }
    )*};
}

both_backends!(connect_rules, subscribe_replay_live_and_resume, refusals_and_bad_messages);

async fn connect_rules(s: Setup) {
    let (a, b, c, d) = (conn_id(), conn_id(), conn_id(), conn_id());
    assert_eq!(s.ws.handle(connect(&a, None, None)).await.status, 401);
    assert_eq!(s.ws.handle(connect(&b, Some("Bearer nope"), None)).await.status, 401);
    let refused = s.ws.handle(connect(&b, Some("Basic key-acme"), None)).await;
    assert_eq!(refused.status, 401);
    let body: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(body["error"]["type"], "unauthorized");
    assert!(s.b.connections.get(&a).await.unwrap().is_none() && s.b.connections.get(&b).await.unwrap().is_none());

    assert_eq!(s.ws.handle(connect(&c, Some("Bearer key-acme"), None)).await.status, 200);
    assert_eq!(s.ws.handle(connect(&d, None, Some("key-other"))).await.status, 200);
    let rec = s.b.connections.get(&c).await.unwrap().expect("recorded");
    assert_eq!(rec.tenant.as_str(), "acme");
    assert!(rec.expires_at > rec.connected_at);
    assert!(s.frames.take(&c).is_empty(), "nothing is ever posted from $connect");

    s.ws.handle(message(&c, r#"{"action":"ping"}"#)).await;
    assert_eq!(actions(&s.frames.take(&c)), ["pong"]);
    let gone =
        s.ws.handle(WsRequest { route_key: "$disconnect".into(), connection_id: c.clone(), ..Default::default() })
            .await;
    assert_eq!(gone.status, 200);
    assert!(s.b.connections.get(&c).await.unwrap().is_none());
    // A message on a connection that is not registered asks the client to reconnect.
    s.ws.handle(message(&c, r#"{"action":"ping"}"#)).await;
    assert_eq!(s.frames.take(&c)[0]["error"]["type"], "unauthorized");
}

async fn subscribe_replay_live_and_resume(s: Setup) {
    let j = job("acme");
    s.b.jobs.create(&j, None).await.unwrap();
    let hub = &s.ws.hub;
    for i in 0..3 {
        hub.publish_progress(&j.id, EventBody::Token { index: i, id: i, text: format!("t{i}"), logprob: None })
            .await
            .unwrap();
    }
    let c = conn_id();
    assert_eq!(s.ws.handle(connect(&c, Some("Bearer key-acme"), None)).await.status, 200);
    s.ws.handle(message(&c, &format!(r#"{{"action":"subscribe","job_id":"{}","after_seq":1}}"#, j.id))).await;
    let frames = s.frames.take(&c);
    // The replay of stored events is coalesced into one frame.
    assert_eq!(actions(&frames), ["subscribed", "events"]);
    assert_eq!((&frames[0]["status"], &frames[0]["last_seq"]), (&Value::from("queued"), &Value::from(3)));
    let replayed: Vec<u64> =
        frames[1]["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(replayed, [2, 3]);

    // Live: the next event reaches the subscriber once.
    hub.publish_progress(&j.id, EventBody::Percentage { percent: 80.0, message: None }).await.unwrap();
    let live = s.frames.take(&c);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["event"]["seq"], 4);

    // A new connection resumes from seq 4: nothing missing, nothing twice.
    let c2 = conn_id();
    s.ws.handle(connect(&c2, Some("Bearer key-acme"), None)).await;
    hub.publish_progress(&j.id, EventBody::Log { level: "info".into(), message: "while away".into() }).await.unwrap();
    s.ws.handle(message(&c2, &format!(r#"{{"action":"subscribe","job_id":"{}","after_seq":4}}"#, j.id))).await;
    let resumed = s.frames.take(&c2);
    assert_eq!(actions(&resumed), ["subscribed", "event"]);
    assert_eq!(resumed[1]["event"]["seq"], 5);

    // Unsubscribe: no more live events for c.
    s.frames.take(&c);
    s.ws.handle(message(&c, &format!(r#"{{"action":"unsubscribe","job_id":"{}"}}"#, j.id))).await;
    assert_eq!(actions(&s.frames.take(&c)), ["unsubscribed"]);
    hub.publish_progress(&j.id, EventBody::Percentage { percent: 90.0, message: None }).await.unwrap();
    assert!(s.frames.take(&c).is_empty());
    assert_eq!(s.frames.take(&c2).len(), 1, "c2 still follows");
}

async fn refusals_and_bad_messages(s: Setup) {
    let theirs = job("other");
    s.b.jobs.create(&theirs, None).await.unwrap();
    let c = conn_id();
    s.ws.handle(connect(&c, Some("Bearer key-acme"), None)).await;
    let missing = JobId::generate(1);
    s.ws.handle(message(&c, &format!(r#"{{"action":"subscribe","job_id":"{}"}}"#, theirs.id))).await;
    s.ws.handle(message(&c, &format!(r#"{{"action":"subscribe","job_id":"{missing}"}}"#))).await;
    let answers = s.frames.take(&c);
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], answers[1], "another tenant's job looks exactly like a missing one");
    assert_eq!(
        (&answers[0]["error"]["type"], &answers[0]["error"]["field"]),
        (&Value::from("not_found"), &Value::from("job_id"))
    );
    assert!(s.b.connections.subscribers(&theirs.id).await.unwrap().is_empty());

    let huge = format!(r#"{{"action":"ping","pad":"{}"}}"#, "x".repeat(40 * 1024));
    let cases: [(&str, &str); 7] = [
        ("not json", "body"),
        (r#"{"action":"dance"}"#, "action"),
        (r#"{"action":"ping","extra":1}"#, "body"),
        (r#"{"job_id":"x"}"#, "action"),
        (r#"{"action":"subscribe"}"#, "body"),
        (r#"{"action":"subscribe","job_id":"nope"}"#, "job_id"),
        (&huge, "body"),
    ];
    for (body, field) in cases {
        s.ws.handle(message(&c, body)).await;
        let got = s.frames.take(&c);
        assert_eq!(got.len(), 1, "{body:.40}");
        assert_eq!(got[0]["action"], "error", "{body:.40}");
        assert_eq!(got[0]["error"]["field"], field, "{body:.40}: {}", got[0]);
    }
}

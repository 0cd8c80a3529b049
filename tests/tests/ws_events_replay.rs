//! Replays every API Gateway WebSocket event in `events/ws/` through exactly what the `ws`
//! Lambda runs: the JSON is deserialized as the Lambda runtime does (serde_json into
//! `ApiGatewayWebsocketProxyRequest`), handed to `ferry_ws_lambda::handle` over a fresh
//! embedded backend with a recording notifier, and the response status and the frames
//! posted to the event's connection are checked against `events/ws/expected.json`. Every
//! event file must be listed there and every listed file must exist.
//!
//! The WebSocket events live in their own folder because `events_replay.rs` replays every
//! `events/*.json` as an HTTP API event.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_lambda_events::encodings::Body;
use ferry_core::auth::hash_api_key;
use ferry_core::job::{Job, JobId, JobStatus, TenantId};
use ferry_core::ports::{ApiKeyRecord, Clock, Connection, Notifier, NotifyError, SystemClock};
use ferry_core::progress::EventBody;
use ferry_core::publish::{ProgressHub, ServerMessage};
use ferry_core::ws::WsApi;
use ferry_tests::backends::{self, Backend};
use ferry_tests::event_files::EventDir;
use serde_json::Value;

/// The key the authenticated `$connect` events send, and the tenant it belongs to.
const KEY: &str = "fry_example_key";
const TENANT: &str = "acme";
/// The job the subscribe and unsubscribe events name.
const SEEDED_JOB: &str = "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B";
/// Events stored for the seeded job before each replay.
const SEEDED_EVENTS: u64 = 2;

fn events() -> EventDir {
    EventDir::new("events/ws")
}

/// Records every post, by connection id.
#[derive(Default)]
struct Recorder {
    posts: Mutex<Vec<(String, Vec<u8>)>>,
}

impl Recorder {
    fn take(&self) -> Vec<(String, Vec<u8>)> {
        std::mem::take(&mut *self.posts.lock().unwrap())
    }
}

#[async_trait]
impl Notifier for Recorder {
    async fn post(&self, id: &str, data: &[u8]) -> Result<(), NotifyError> {
        self.posts.lock().unwrap().push((id.to_string(), data.to_vec()));
        Ok(())
    }
}

/// One entry of `events/ws/expected.json`.
#[derive(Debug)]
struct Expected {
    status: u16,
    /// The `action` of every frame posted to the event's connection, in order.
    frames: Vec<String>,
}

fn load_expected() -> BTreeMap<String, Expected> {
    events()
        .expected(&["status", "frames"])
        .into_iter()
        .map(|(name, (status, obj))| {
            let frames = obj
                .get("frames")
                .and_then(Value::as_array)
                .unwrap_or_else(|| panic!("expected.json: {name} needs a frames array"))
                .iter()
                .map(|f| f.as_str().unwrap_or_else(|| panic!("expected.json: {name}.frames holds strings")).to_string())
                .collect();
            (name, Expected { status, frames })
        })
        .collect()
}

fn tenant() -> TenantId {
    TenantId::new(TENANT).unwrap()
}

fn seeded_id() -> JobId {
    SEEDED_JOB.parse().expect("the seeded id is a ULID")
}

/// The queued job the subscribe and unsubscribe events name, owned by the key's tenant.
fn job() -> Job {
    Job { id: seeded_id(), ..ferry_tests::fixtures::job(tenant().as_str(), JobStatus::Queued) }
}

/// A fresh embedded backend with the key, the job and its stored events, and the WebSocket
/// API over it posting into `recorder`.
async fn fresh_api(recorder: Arc<Recorder>) -> (Backend, WsApi) {
    let b = backends::embedded();
    let now = SystemClock.now();
    let record = ApiKeyRecord { key_hash: hash_api_key(KEY), tenant: tenant(), created_at: now };
    b.keys.put(&record).await.expect("storing the key");
    b.jobs.create(&job(), None).await.expect("seeding the job");
    let hub = Arc::new(ProgressHub {
        jobs: b.jobs.clone(),
        events: b.events.clone(),
        connections: b.connections.clone(),
        notifier: recorder.clone(),
        clock: Arc::new(SystemClock),
    });
    for i in 0..SEEDED_EVENTS {
        let body = EventBody::Log { level: "info".into(), message: format!("seeded event {i}") };
        hub.publish_progress(&seeded_id(), body).await.expect("publishing a seeded event");
    }
    assert!(recorder.take().is_empty(), "nothing is subscribed yet, so nothing is posted while seeding");
    (b.clone(), WsApi { hub, keys: b.keys.clone() })
}

/// Replays one event; returns what is wrong, if anything.
async fn replay(name: &str, expected: &Expected) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    // What lambda_runtime does with the invocation payload.
    let event: ApiGatewayWebsocketProxyRequest = match serde_json::from_str(&events().read(name)) {
        Ok(e) => e,
        Err(e) => return vec![format!("not an ApiGatewayWebsocketProxyRequest: {e}")],
    };
    let route = event.request_context.route_key.clone().unwrap_or_default();
    let conn = event.request_context.connection_id.clone().unwrap_or_default();

    let recorder = Arc::new(Recorder::default());
    let (b, api) = fresh_api(recorder.clone()).await;
    if route != "$connect" {
        // `$connect` ran earlier and recorded the connection.
        let now = SystemClock.now();
        let c = Connection { id: conn.clone(), tenant: tenant(), connected_at: now, expires_at: now + 7_200_000 };
        b.connections.put(&c).await.expect("registering the connection");
        if name == "ws-unsubscribe.json" {
            b.connections.subscribe(&conn, &seeded_id()).await.expect("subscribing before unsubscribe");
        }
    }

    let resp = ferry_ws_lambda::handle(&api, event).await;

    let status = resp.status_code;
    let text = match &resp.body {
        Some(Body::Text(t)) => t.clone(),
        other => {
            check(false, format!("the body is not text: {other:?}"));
            String::new()
        }
    };
    check(status == i64::from(expected.status), format!("status {status}, expected {}; body {text}", expected.status));
    if status >= 400 {
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        check(
            json["error"]["type"] == "unauthorized",
            format!("a refusal's body is not an unauthorized error: {text}"),
        );
    }

    let posts = recorder.take();
    if route == "$connect" {
        check(posts.is_empty(), format!("{} frame(s) posted during $connect (API Gateway answers 410)", posts.len()));
    }
    check(posts.iter().all(|(id, _)| *id == conn), "a frame went to another connection".into());
    let frames: Vec<Value> = posts.iter().map(|(_, d)| serde_json::from_slice(d).unwrap_or(Value::Null)).collect();
    let actions: Vec<String> =
        frames.iter().map(|f| f["action"].as_str().unwrap_or("<no action>").to_string()).collect();
    check(actions == expected.frames, format!("frames {actions:?}, expected {:?}", expected.frames));

    // What each route leaves behind.
    let stored = b.connections.get(&conn).await.expect("reading the connection");
    let subscribers = b.connections.subscribers(&seeded_id()).await.expect("reading subscribers");
    match route.as_str() {
        "$connect" if status == 200 => {
            check(stored.is_some_and(|c| c.tenant == tenant()), "the connection is not recorded for the tenant".into())
        }
        "$connect" => check(stored.is_none(), "a refused connection was recorded".into()),
        "$disconnect" => check(stored.is_none(), "the connection was not removed".into()),
        _ => check(stored.is_some(), "the connection record is gone".into()),
    }
    match actions.first().map(String::as_str) {
        Some("subscribed") => {
            check(subscribers.contains(&conn), "not subscribed after subscribe".into());
            check(
                frames[0]["job_id"] == SEEDED_JOB && frames[0]["status"] == "queued",
                format!("subscribed frame {}", frames[0]),
            );
            check(frames[0]["last_seq"] == SEEDED_EVENTS, format!("subscribed frame {}", frames[0]));
            let events = frames[1..].iter().flat_map(|f| match serde_json::from_value::<ServerMessage>(f.clone()) {
                Ok(m) => m.into_events(),
                Err(_) => vec![],
            });
            let seqs: Vec<u64> = events.map(|e| e.seq).collect();
            check(seqs == (1..=SEEDED_EVENTS).collect::<Vec<_>>(), format!("replayed seqs {seqs:?}"));
        }
        Some("unsubscribed") => {
            check(!subscribers.contains(&conn), "still subscribed after unsubscribe".into());
            check(frames[0]["job_id"] == SEEDED_JOB, format!("unsubscribed frame {}", frames[0]));
        }
        Some("error") => {
            let err = &frames[0]["error"];
            check(err["type"] == "invalid_request", format!("error frame {}", frames[0]));
            check(err["message"].as_str().is_some_and(|m| !m.is_empty()), format!("error frame {}", frames[0]));
            // An unknown action names `action`; a message that is not JSON names `body`.
            let field = match name {
                "ws-bad-action.json" => Some("action"),
                "ws-not-json.json" => Some("body"),
                _ => None,
            };
            if let Some(field) = field {
                check(err["field"] == field, format!("error.field {}, expected {field}", err["field"]));
            }
        }
        _ => {}
    }
    problems
}

#[test]
fn every_ws_event_is_in_expected_json_and_back() {
    events().assert_all_listed(10);
}

/// The events look like what API Gateway sends, so replaying them means something.
#[test]
fn ws_events_are_realistic() {
    let mut problems = Vec::new();
    for name in events().files() {
        let ev: Value = match serde_json::from_str(&events().read(&name)) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{name}: not JSON: {e}"));
                continue;
            }
        };
        let mut check = |ok: bool, what: &str| {
            if !ok {
                problems.push(format!("{name}: {what}"));
            }
        };
        let ctx = &ev["requestContext"];
        let route = ctx["routeKey"].as_str().unwrap_or("");
        let kind = match route {
            "$connect" => "CONNECT",
            "$disconnect" => "DISCONNECT",
            _ => "MESSAGE",
        };
        check(ctx["eventType"] == kind, "eventType does not match routeKey");
        for k in ["connectionId", "domainName", "stage", "apiId", "requestId", "extendedRequestId", "requestTime"] {
            check(ctx[k].as_str().is_some_and(|s| !s.is_empty()), &format!("no requestContext.{k}"));
        }
        check(ctx["messageDirection"] == "IN", "messageDirection is not IN");
        check(ctx["identity"]["sourceIp"].as_str().is_some_and(|s| !s.is_empty()), "no identity.sourceIp");
        let (connected, at) = (ctx["connectedAt"].as_u64(), ctx["requestTimeEpoch"].as_u64());
        check(connected.is_some() && at.is_some(), "no connectedAt or requestTimeEpoch");
        check(connected <= at, "connectedAt is after requestTimeEpoch");
        check(ev["isBase64Encoded"].is_boolean(), "no isBase64Encoded");
        check(ctx["messageId"].is_string() == (kind == "MESSAGE"), "messageId on a non-message or missing");
        check(ev["body"].is_string() == (kind == "MESSAGE"), "body on a non-message or missing");
        if kind == "CONNECT" {
            let host = ev["headers"]["Host"].as_str();
            check(host.is_some() && host == ctx["domainName"].as_str(), "Host differs from requestContext.domainName");
            check(ev["headers"]["Sec-WebSocket-Version"] == "13", "no Sec-WebSocket-Version");
        }
        if let Some(auth) = ev["headers"]["Authorization"].as_str()
            && name != "ws-connect-bad-key.json"
        {
            check(auth == format!("Bearer {KEY}"), "Authorization is not the example key");
        }
    }
    assert!(problems.is_empty(), "unrealistic events:\n{}", problems.join("\n"));
}

#[tokio::test]
async fn ws_events_replay_through_the_lambda_handler() {
    let expected = load_expected();
    let mut failures = Vec::new();
    for name in events().files() {
        let Some(exp) = expected.get(&name) else {
            failures.push(format!("{name}: not listed in events/ws/expected.json"));
            continue;
        };
        for p in replay(&name, exp).await {
            failures.push(format!("{name}: {p}"));
        }
    }
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}

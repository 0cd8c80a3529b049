//! Replays every API Gateway HTTP API (payload v2) event in `events/` through exactly what
//! the `api` Lambda runs: the JSON is deserialized by `lambda_http` as the Lambda runtime
//! does (`lambda_http::request::from_str`: `LambdaRequest` into `http::Request`), handed to
//! `ferry_api_lambda::handle` over a fresh embedded stack, and the response is checked
//! against `events/expected.json`. Every event file must be listed there and every listed
//! file must exist, so a new event cannot skip the check.

use std::collections::BTreeMap;

use ferry_cli::stack::{self, Stack, StackOptions};
use ferry_core::error::ApiError;
use ferry_core::{JobId, JobStatus, TenantId};
use ferry_tests::event_files::EventDir;
use lambda_http::request::RequestContext;
use lambda_http::{Body, RequestExt};
use serde_json::Value;

/// The key every authenticated event sends, and the tenant it belongs to.
const KEY: &str = "fry_example_key";
const TENANT: &str = "acme";
/// The job `get-job.json`, `cancel-job.json` and `error-method-not-allowed.json` name.
const SEEDED_JOB: &str = "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B";

fn events() -> EventDir {
    EventDir::new("events")
}

/// One entry of `events/expected.json`.
#[derive(Debug)]
struct Expected {
    status: u16,
    field: Option<String>,
    /// Response headers that must be present with exactly these values.
    headers: BTreeMap<String, String>,
}

fn load_expected() -> BTreeMap<String, Expected> {
    events()
        .expected(&["status", "field", "headers"])
        .into_iter()
        .map(|(name, (status, obj))| {
            let field = obj.get("field").map(|f| {
                f.as_str().unwrap_or_else(|| panic!("expected.json: {name}.field is not a string")).to_string()
            });
            let headers = obj
                .get("headers")
                .map(|h| {
                    h.as_object()
                        .unwrap_or_else(|| panic!("expected.json: {name}.headers is not an object"))
                        .iter()
                        .map(|(k, v)| {
                            (k.to_ascii_lowercase(), v.as_str().expect("header values are strings").to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            (name, Expected { status, field, headers })
        })
        .collect()
}

/// The `type` the API sends with an error status: the API's own mapping, so the test
/// checks the body carries it rather than restating the table.
fn error_kind(status: u16) -> &'static str {
    ApiError::new(http::StatusCode::from_u16(status).expect("a status code"), "").kind()
}

async fn fresh_stack() -> Stack {
    let opts = StackOptions { api_keys: vec![format!("{KEY}={TENANT}")], ..StackOptions::embedded() };
    let stack = stack::build(&opts).await.expect("embedded stack builds");
    seed(&stack).await;
    stack
}

/// The queued job the get and cancel events name, owned by the events' tenant.
async fn seed(stack: &Stack) {
    let job = ferry_tests::fixtures::job_with_id(SEEDED_JOB, TENANT, JobStatus::Queued);
    stack.root.ports.jobs.create(&job, None).await.expect("seeding the job");
}

fn body_bytes(body: &Body) -> Vec<u8> {
    match body {
        Body::Empty => Vec::new(),
        Body::Text(s) => s.as_bytes().to_vec(),
        Body::Binary(b) => b.clone(),
        _ => Vec::new(),
    }
}

/// Replays one event; returns what is wrong with the response, if anything.
async fn replay(name: &str, expected: &Expected) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };

    let request = match lambda_http::request::from_str(&events().read(name)) {
        Ok(r) => r,
        Err(e) => return vec![format!("lambda_http cannot deserialize it: {e}")],
    };
    if !matches!(request.request_context_ref(), Some(RequestContext::ApiGatewayV2(_))) {
        return vec!["not deserialized as an API Gateway HTTP API (v2) request".into()];
    }
    let method = request.method().as_str().to_string();
    let path = request.uri().path().to_string();
    let request_body = body_bytes(request.body());

    let stack = fresh_stack().await;
    let resp = ferry_api_lambda::handle(&stack.api, request).await;

    let status = resp.status().as_u16();
    let body = body_bytes(resp.body());
    let text = String::from_utf8_lossy(&body).into_owned();
    check(status == expected.status, format!("status {status}, expected {}; body {text}", expected.status));
    check(matches!(resp.body(), Body::Text(_)), "the body is not sent as text".into());
    let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    check(
        header("content-type").as_deref() == Some("application/json"),
        format!("content-type {:?}", header("content-type")),
    );
    check(header("x-request-id").is_some_and(|v| v.parse::<ulid::Ulid>().is_ok()), "no ULID x-request-id".into());
    for (k, v) in &expected.headers {
        check(header(k).as_deref() == Some(v.as_str()), format!("header {k}: {:?}, expected {v:?}", header(k)));
    }
    let json: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("body is not JSON ({e}): {text}"));
            return problems;
        }
    };

    if status >= 400 {
        check(expected.status >= 400, format!("unexpected error: {text}"));
        let top_ok = json.as_object().is_some_and(|o| o.len() == 1 && o.contains_key("error"));
        check(top_ok, format!("error body is not {{\"error\": {{...}}}}: {text}"));
        let err = json.get("error").and_then(Value::as_object).cloned().unwrap_or_default();
        for k in err.keys() {
            check(["type", "message", "field"].contains(&k.as_str()), format!("unexpected key error.{k}"));
        }
        check(
            err.get("type").and_then(Value::as_str) == Some(error_kind(status)),
            format!("error.type {:?}", err.get("type")),
        );
        check(
            err.get("message").and_then(Value::as_str).is_some_and(|m| !m.trim().is_empty()),
            format!("error.message {:?}", err.get("message")),
        );
        let field = err.get("field").cloned().unwrap_or(Value::Null);
        let want = expected.field.as_deref().map_or(Value::Null, |f| Value::String(f.into()));
        check(field == want, format!("error.field {field}, expected {want}"));
        return problems;
    }

    check(expected.field.is_none(), format!("expected.json names a field but the answer is {status}"));
    match (method.as_str(), path.as_str()) {
        ("GET", "/healthz") => check(json["status"] == "ok", format!("healthz body {text}")),
        ("GET", "/openapi.json") => {
            check(json["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "no openapi version".into());
            for (m, template) in ferry_http::route_table() {
                let op = &json["paths"][&template][m.as_str().to_ascii_lowercase()];
                check(op.is_object(), format!("the document lacks {m} {template}"));
            }
        }
        ("GET", "/v1/models" | "/prod/v1/models") => {
            let ids: Vec<&str> =
                json["models"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
            check(ids.contains(&"tiny-llama") && ids.contains(&"all-minilm-l6-v2"), format!("models {ids:?}"));
        }
        ("POST", "/v1/jobs") => {
            let sent: Value = serde_json::from_slice(&request_body).unwrap_or(Value::Null);
            check(json["model"] == sent["model"], format!("model {}, sent {}", json["model"], sent["model"]));
            check(json["status"] == "queued", format!("status {}", json["status"]));
            check(json["input"] == sent["input"], format!("input {}, sent {}", json["input"], sent["input"]));
            let id = json["id"].as_str().unwrap_or_default();
            check(id.parse::<JobId>().is_ok(), format!("id {id:?} is not a job id"));
            check(header("location") == Some(format!("/v1/jobs/{id}")), format!("location {:?}", header("location")));
            let task = match sent["model"].as_str() {
                Some("all-minilm-l6-v2") => "embeddings",
                _ => "text-generation",
            };
            check(json["task"] == task, format!("task {}", json["task"]));
            // The job is stored for the key's tenant.
            match stack
                .api
                .service
                .get(&TenantId::new(TENANT).unwrap(), &id.parse().unwrap_or(JobId::generate(0)))
                .await
            {
                Ok(job) => check(job.status == JobStatus::Queued, format!("stored status {}", job.status)),
                Err(e) => check(false, format!("the submitted job is not stored for {TENANT}: {e}")),
            }
        }
        ("GET", "/v1/jobs") => {
            let jobs = json["jobs"].as_array().cloned().unwrap_or_default();
            check(jobs.iter().any(|j| j["id"] == SEEDED_JOB), format!("the seeded job is not listed: {text}"));
            check(jobs.iter().all(|j| j["status"] == "queued"), format!("a listed job is not queued: {text}"));
            check(json.get("next_cursor").is_some(), "no next_cursor key".into());
        }
        ("GET", p) if p == format!("/v1/jobs/{SEEDED_JOB}") => {
            check(json["id"] == SEEDED_JOB && json["status"] == "queued", format!("job {text}"));
        }
        ("GET", p) if p == format!("/v1/jobs/{SEEDED_JOB}/events") => {
            let ok = json["events"].as_array().is_some_and(|e| e.is_empty()) && json["last_seq"] == 0;
            check(ok && json["status"] == "queued", format!("events {text}"));
        }
        ("POST", p) if p == format!("/v1/jobs/{SEEDED_JOB}/cancel") => {
            check(json["id"] == SEEDED_JOB && json["status"] == "cancelled", format!("job {text}"));
        }
        _ => check(false, format!("no success check for {method} {path}; add one to events_replay.rs")),
    }
    let idem = serde_json::from_str::<Value>(&events().read(name))
        .ok()
        .and_then(|e| e["headers"]["idempotency-key"].as_str().map(str::to_string));
    if let Some(key) = idem {
        check(
            json["idempotency_key"] == key.as_str(),
            format!("idempotency_key {}, sent {key}", json["idempotency_key"]),
        );
    }
    problems
}

#[test]
fn every_event_is_in_expected_json_and_back() {
    events().assert_all_listed(20);
}

/// The events look like what API Gateway sends, so replaying them means something.
#[test]
fn events_are_realistic_http_api_v2_payloads() {
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
        check(ev["version"] == "2.0", "version is not \"2.0\"");
        check(ev["routeKey"] == "$default" && ctx["routeKey"] == "$default", "routeKey is not $default");
        // A named stage prefixes rawPath (`/prod/v1/...`); the Lambda glue strips it.
        let stage = ctx["stage"].as_str().unwrap_or("");
        check(
            stage == "$default" || ev["rawPath"].as_str().is_some_and(|p| p.starts_with(&format!("/{stage}/"))),
            "stage is neither $default nor the rawPath prefix",
        );
        check(
            ev["rawPath"].is_string() && ev["rawPath"] == ctx["http"]["path"],
            "rawPath differs from requestContext.http.path",
        );
        check(ev["rawQueryString"].is_string(), "no rawQueryString");
        for k in ["accountId", "apiId", "domainName", "requestId", "time"] {
            check(ctx[k].as_str().is_some_and(|s| !s.is_empty()), &format!("no requestContext.{k}"));
        }
        check(ctx["timeEpoch"].is_u64(), "no requestContext.timeEpoch");
        for k in ["method", "path", "protocol", "sourceIp", "userAgent"] {
            check(ctx["http"][k].as_str().is_some_and(|s| !s.is_empty()), &format!("no requestContext.http.{k}"));
        }
        check(ev["isBase64Encoded"].is_boolean(), "no isBase64Encoded");
        let headers = ev["headers"].as_object().cloned().unwrap_or_default();
        check(!headers.is_empty(), "no headers");
        check(headers.keys().all(|k| *k == k.to_ascii_lowercase()), "header names are not lower case");
        check(headers.get("host") == ctx.get("domainName"), "host differs from requestContext.domainName");
        check(
            headers.get("user-agent") == ctx["http"].get("userAgent"),
            "user-agent differs from requestContext.http.userAgent",
        );
        if let Some(auth) = headers.get("authorization").and_then(Value::as_str)
            && name != "error-bad-key.json"
        {
            check(auth == format!("Bearer {KEY}"), "authorization is not the example key");
        }
        // content-length matches the (decoded) body, as API Gateway sends it.
        if let Ok(req) = lambda_http::request::from_str(&events().read(&name)) {
            let body = body_bytes(req.body());
            let len = headers.get("content-length").and_then(Value::as_str).and_then(|s| s.parse::<usize>().ok());
            check(
                len == Some(body.len()) || (len.is_none() && body.is_empty()),
                "content-length differs from the body's length",
            );
        }
    }
    assert!(problems.is_empty(), "unrealistic events:\n{}", problems.join("\n"));
}

#[tokio::test]
async fn events_replay_through_the_lambda_handler() {
    let expected = load_expected();
    let mut failures = Vec::new();
    for name in events().files() {
        let Some(exp) = expected.get(&name) else {
            failures.push(format!("{name}: not listed in events/expected.json"));
            continue;
        };
        for p in replay(&name, exp).await {
            failures.push(format!("{name}: {p}"));
        }
    }
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}

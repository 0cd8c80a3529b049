//! The HTTP API end to end: a real `ferry dev` server (the same `serve` and stack the
//! binary uses) on a loopback port, driven by a real HTTP client, on both backends:
//! embedded, and AWS adapters against the moto emulator. Every case runs twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_cli::server::{self, Mode};
use ferry_cli::stack::{self, BackendKind, Stack, StackOptions};
use ferry_core::config::Config;
use ferry_core::state::Transition;
use ferry_core::{JobId, JobStatus};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEY_A: &str = "key-a-0123456789";
const KEY_B: &str = "key-b-0123456789";

struct Harness {
    url: String,
    stack: Stack,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts the stack on `backend`; `None` when that backend cannot run here (no moto outside CI).
async fn start(backend: &str, tweak: impl FnOnce(&mut StackOptions)) -> Option<Harness> {
    let mut opts = StackOptions {
        api_keys: vec![format!("{KEY_A}=tenant-a"), format!("{KEY_B}=tenant-b")],
        config: Config { rate_limit_per_s: 0.0, ..Config::default() },
        ..StackOptions::embedded()
    };
    if backend == "aws" {
        let moto = ferry_tests::moto::shared()?;
        let name = format!("api-{}", ulid::Ulid::new().to_string().to_ascii_lowercase());
        opts.backend = BackendKind::Aws;
        opts.aws_endpoint = Some(moto.endpoint.clone());
        opts.table = name.clone();
        opts.queue = name;
    }
    tweak(&mut opts);
    let stack = stack::build(&opts).await.expect("stack builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mode = Mode::Api(stack.api.clone());
    tokio::spawn(server::serve(listener, mode, async move {
        let _ = rx.await;
    }));
    Some(Harness { url, stack, http: reqwest::Client::new(), _stop: tx })
}

impl Harness {
    fn req(&self, method: &str, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = self.http.request(m, format!("{}{}", self.url, path));
        match key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn submit(&self, key: &str, body: Value) -> (StatusCode, Value) {
        send(self.req("POST", "/v1/jobs", Some(key)).json(&body)).await
    }

    async fn job_count(&self, key: &str) -> usize {
        let (s, v) = send(self.req("GET", "/v1/jobs?limit=100", Some(key))).await;
        assert_eq!(s, StatusCode::OK);
        v["jobs"].as_array().unwrap().len()
    }

    /// Plays an executor: claim the job, then apply `then` (through the same service).
    async fn drive(&self, id: &str, then: Option<Transition>) {
        let svc = &self.stack.api.service;
        let id: JobId = id.parse().unwrap();
        let job = self.stack.root.ports.jobs.get(&id).await.unwrap().unwrap();
        let job = svc
            .apply(&job, Transition::Claim { executor_id: "test-exec".into(), lease_until: u64::MAX / 2 })
            .await
            .unwrap();
        if let Some(t) = then {
            svc.apply(&job, t).await.unwrap();
        }
    }
}

async fn send(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = r.send().await.expect("request sent");
    let status = resp.status();
    let body = resp.bytes().await.unwrap();
    let v = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("non-JSON body for {status}: {body:?}"));
    (status, v)
}

fn text_job() -> Value {
    json!({"model": "tiny-llama", "input": {"prompt": "Hello, ferry"}, "params": {"max_new_tokens": 8}})
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() { super::$name("embedded").await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn aws() { super::$name("aws").await }
        }
    )*};
}

both_backends!(
    submit_get_list,
    submit_embeddings,
    idempotency_key,
    prefer_wait_times_out_then_returns_terminal,
    cancel_lifecycle,
    tenants_cannot_see_each_other,
    list_pages_and_filters,
    bad_input_never_changes_state,
    meta_routes,
    unicode_round_trips,
    job_events_over_http,
    a_foreign_host_is_refused,
    webhook_secrets_and_rotation,
);

async fn submit_get_list(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let resp = h.req("POST", "/v1/jobs", Some(KEY_A)).json(&text_job()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(resp.headers().contains_key("x-request-id"));
    let job: Value = resp.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["status"], "queued");
    assert_eq!(job["task"], "text-generation");
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["timeout_s"], 600);
    assert_eq!(job["params"], json!({"max_new_tokens": 8}));
    assert!(job["started_at"].is_null() && job["error"].is_null() && job["output"].is_null());

    let (s, got) = send(h.req("GET", &location, Some(KEY_A))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["id"], job["id"]);
    assert_eq!(got["input"], job["input"]);
    assert_eq!(got["created_at"], job["created_at"]);
    // ULIDs are case-insensitive: a lower-case id names the same job, shown in upper case.
    let (s, lower) = send(h.req("GET", &location.to_ascii_lowercase(), Some(KEY_A))).await;
    assert_eq!((s, &lower["id"]), (StatusCode::OK, &job["id"]), "{lower}");

    // The message on the queue carries ids, not the input.
    let d = h.stack.queue().receive(10, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].message.job_id.to_string(), id);
    assert_eq!(d[0].message.attempt, 1);
    assert_eq!(d[0].message.tenant.as_str(), "tenant-a");

    let (s, list) = send(h.req("GET", "/v1/jobs", Some(KEY_A))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["jobs"][0]["id"], job["id"]);
    assert!(list["next_cursor"].is_null());
}

async fn submit_embeddings(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let body = json!({"model": "all-minilm-l6-v2", "input": {"texts": ["a", "b"]}, "timeout_s": 30});
    let (s, job) = h.submit(KEY_A, body).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["task"], "embeddings");
    assert_eq!(job["timeout_s"], 30);
    assert_eq!(job["params"], json!({}));
}

async fn idempotency_key(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let with_key =
        |body: &Value, key: &str| h.req("POST", "/v1/jobs", Some(KEY_A)).header("Idempotency-Key", key).json(body);
    let (s1, first) = send(with_key(&text_job(), "order-42")).await;
    assert_eq!(s1, StatusCode::ACCEPTED);
    let (s2, again) = send(with_key(&text_job(), "order-42")).await;
    assert_eq!(s2, StatusCode::OK);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["idempotency_key"], "order-42");
    let mut other = text_job();
    other["input"]["prompt"] = "something else".into();
    let (s3, err) = send(with_key(&other, "order-42")).await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_eq!(err["error"]["field"], "Idempotency-Key");
    // Another tenant's identical key is its own.
    let (s4, theirs) =
        send(h.req("POST", "/v1/jobs", Some(KEY_B)).header("Idempotency-Key", "order-42").json(&text_job())).await;
    assert_eq!(s4, StatusCode::ACCEPTED);
    assert_ne!(theirs["id"], first["id"]);
    assert_eq!(h.job_count(KEY_A).await, 1);
    // One message only for the replayed submit.
    let d = h.stack.queue().receive(10, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap();
    assert_eq!(d.len(), 2, "one message per created job");
}

async fn prefer_wait_times_out_then_returns_terminal(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let t0 = Instant::now();
    let resp =
        h.req("POST", "/v1/jobs", Some(KEY_A)).header("Prefer", "wait=1").json(&text_job()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["preference-applied"], "wait=1");
    assert!(t0.elapsed() >= Duration::from_millis(900), "waited {:?}", t0.elapsed());

    // An "executor" finishes the next job while the request waits.
    let h = Arc::new(h);
    let h2 = h.clone();
    let waiter = tokio::spawn(async move {
        send(
            h2.req("POST", "/v1/jobs", Some(KEY_A))
                .header("Prefer", "wait=20")
                .header("Idempotency-Key", "w1")
                .json(&text_job()),
        )
        .await
    });
    let id = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, list) = send(h.req("GET", "/v1/jobs?status=queued", Some(KEY_A))).await;
        if let Some(j) = list["jobs"].as_array().unwrap().iter().find(|j| j["idempotency_key"] == "w1") {
            break j["id"].as_str().unwrap().to_string();
        }
    };
    h.drive(&id, Some(Transition::Succeed { output: json!({"text": "hi"}).into() })).await;
    let (s, job) = waiter.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["output"], json!({"text": "hi"}));
    assert!(job["execution_ms"].is_u64());

    // Above the cap is lowered, not refused; garbage is refused.
    let (s, _) = send(h.req("POST", "/v1/jobs", Some(KEY_A)).header("Prefer", "wait=abc").json(&text_job())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

async fn cancel_lifecycle(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let (_, queued) = h.submit(KEY_A, text_job()).await;
    let id = queued["id"].as_str().unwrap();
    let (s, c) = send(h.req("POST", &format!("/v1/jobs/{id}/cancel"), Some(KEY_A))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c["status"], "cancelled");
    assert!(c["finished_at"].is_string() && c["cancel_requested_at"].is_string());
    let (s, e) = send(h.req("POST", &format!("/v1/jobs/{id}/cancel"), Some(KEY_A))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"]["type"], "conflict");

    let (_, running) = h.submit(KEY_A, text_job()).await;
    let rid = running["id"].as_str().unwrap();
    h.drive(rid, None).await;
    let (s, c) = send(h.req("POST", &format!("/v1/jobs/{rid}/cancel"), Some(KEY_A))).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(c["status"], "cancelling");
    let (s, c2) = send(h.req("POST", &format!("/v1/jobs/{rid}/cancel"), Some(KEY_A))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "cancelling again is harmless");
    assert_eq!(c2["cancel_requested_at"], c["cancel_requested_at"]);

    // A finished job cannot be cancelled, and stays as it was.
    let (_, done) = h.submit(KEY_A, text_job()).await;
    let did = done["id"].as_str().unwrap();
    h.drive(did, Some(Transition::Succeed { output: json!(1).into() })).await;
    let (_, before) = send(h.req("GET", &format!("/v1/jobs/{did}"), Some(KEY_A))).await;
    let (s, _) = send(h.req("POST", &format!("/v1/jobs/{did}/cancel"), Some(KEY_A))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, after) = send(h.req("GET", &format!("/v1/jobs/{did}"), Some(KEY_A))).await;
    assert_eq!(before["status"], after["status"]);
    assert_eq!(before["finished_at"], after["finished_at"]);
}

async fn tenants_cannot_see_each_other(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let (_, job) = h.submit(KEY_A, text_job()).await;
    let id = job["id"].as_str().unwrap();
    let missing = JobId::generate(1_700_000_000_000).to_string();
    let (s1, theirs) = send(h.req("GET", &format!("/v1/jobs/{id}"), Some(KEY_B))).await;
    let (s2, absent) = send(h.req("GET", &format!("/v1/jobs/{missing}"), Some(KEY_B))).await;
    assert_eq!((s1, s2), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(theirs, absent, "someone else's job looks exactly like a missing one");
    let (s3, c1) = send(h.req("POST", &format!("/v1/jobs/{id}/cancel"), Some(KEY_B))).await;
    let (_, c2) = send(h.req("POST", &format!("/v1/jobs/{missing}/cancel"), Some(KEY_B))).await;
    assert_eq!(s3, StatusCode::NOT_FOUND);
    assert_eq!(c1, c2);
    assert_eq!(h.job_count(KEY_B).await, 0);
    let (_, still) = send(h.req("GET", &format!("/v1/jobs/{id}"), Some(KEY_A))).await;
    assert_eq!(still["status"], "queued", "B's cancel did nothing");
}

async fn list_pages_and_filters(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let mut ids = vec![];
    for i in 0..13 {
        let (_, j) = h.submit(KEY_A, text_job()).await;
        let id = j["id"].as_str().unwrap().to_string();
        if i % 3 == 0 {
            send(h.req("POST", &format!("/v1/jobs/{id}/cancel"), Some(KEY_A))).await;
        }
        ids.push(id);
    }
    h.submit(KEY_B, text_job()).await;
    let collect = |status: Option<&'static str>| {
        let h = &h;
        async move {
            let mut seen = vec![];
            let mut cursor: Option<String> = None;
            for _ in 0..20 {
                let mut path = "/v1/jobs?limit=4".to_string();
                if let Some(s) = status {
                    path += &format!("&status={s}");
                }
                if let Some(c) = &cursor {
                    path += &format!("&cursor={c}");
                }
                let (s, page) = send(h.req("GET", &path, Some(KEY_A))).await;
                assert_eq!(s, StatusCode::OK, "{page}");
                let jobs = page["jobs"].as_array().unwrap();
                assert!(jobs.len() <= 4);
                seen.extend(jobs.iter().map(|j| (j["id"].as_str().unwrap().to_string(), j["status"].clone())));
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => return seen,
                }
            }
            panic!("pagination did not end");
        }
    };
    let all = collect(None).await;
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(all.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), newest_first);
    let (s, empty) = send(h.req("GET", "/v1/jobs?status=&limit=&cursor=", Some(KEY_A))).await;
    assert_eq!(s, StatusCode::OK, "empty parameters mean unset: {empty}");
    assert_eq!(empty["jobs"].as_array().unwrap().len(), 13, "the default limit (20) holds them all");
    let cancelled = collect(Some("cancelled")).await;
    let expect: Vec<String> =
        newest_first.iter().filter(|id| ids.iter().position(|x| x == *id).unwrap() % 3 == 0).cloned().collect();
    assert_eq!(cancelled.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), expect);
    assert!(cancelled.iter().all(|(_, s)| s == "cancelled"));
    for bad in ["limit=0", "limit=101", "limit=x", "status=done", "cursor=zzz", "colour=red", "limit=1&limit=2"] {
        let (s, e) = send(h.req("GET", &format!("/v1/jobs?{bad}"), Some(KEY_A))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert!(e["error"]["field"].is_string(), "{bad}: {e}");
    }
}

/// (method, path, API key, content type, body, expected status, expected error field)
type Case<'a> = (&'a str, String, Option<&'a str>, Option<&'a str>, Vec<u8>, u16, Option<&'a str>);

/// Every malformed or unacceptable request gets a 4xx naming the field, and nothing is stored.
async fn bad_input_never_changes_state(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let big = "x".repeat(Config::default().max_body_bytes);
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let valid_id = JobId::generate(1_700_000_000_000).to_string();
    // (method, path, key, content-type, body, status, field)
    let cases: Vec<Case> = vec![
        ("POST", "/v1/jobs".into(), None, Some("application/json"), text_job().to_string().into(), 401, Some("Authorization")),
        ("POST", "/v1/jobs".into(), Some("wrong-key"), Some("application/json"), text_job().to_string().into(), 401, Some("Authorization")),
        ("GET", "/v1/jobs".into(), None, None, vec![], 401, Some("Authorization")),
        ("GET", "/v1/models".into(), Some("a b"), None, vec![], 401, Some("Authorization")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), b"".to_vec(), 400, Some("body")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), None, b"".to_vec(), 400, Some("body")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), b"{\"model\": ".to_vec(), 400, Some("body")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), b"[1,2]".to_vec(), 400, Some("body")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), b"null".to_vec(), 400, Some("body")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), deep.into_bytes(), 400, Some("body")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), vec![b'{', 0xff, 0xfe, b'}'], 400, Some("body")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("text/plain"), text_job().to_string().into(), 415, Some("Content-Type")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), None, text_job().to_string().into(), 415, Some("Content-Type")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json; charset=latin1"), text_job().to_string().into(), 415, Some("Content-Type")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": big}}).to_string().into(), 413, Some("body")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"input": {"prompt": "x"}}).to_string().into(), 400, Some("model")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": 7, "input": {"prompt": "x"}}).to_string().into(), 400, Some("model")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama"}).to_string().into(), 400, Some("input")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "priority": 1}).to_string().into(), 400, Some("priority")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": {"temprature": 0.5}}).to_string().into(), 400, Some("params.temprature")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x", "system": "y"}}).to_string().into(), 400, Some("input.system")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"texts": ["x"]}}).to_string().into(), 400, Some("input.texts")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": "hello"}).to_string().into(), 400, Some("input")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": 5}}).to_string().into(), 400, Some("input.prompt")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": []}).to_string().into(), 400, Some("params")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": {"temperature": "hot"}}).to_string().into(), 400, Some("params.temperature")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "timeout_s": "60"}).to_string().into(), 400, Some("timeout_s")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "all-minilm-l6-v2", "input": {"texts": ["a"]}, "params": {"top_k": 1}}).to_string().into(), 400, Some("params.top_k")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "all-minilm-l6-v2", "input": {"texts": ["a", 3]}}).to_string().into(), 400, Some("input.texts[1]")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "gpt-17", "input": {"prompt": "x"}}).to_string().into(), 422, Some("model")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "timeout_s": -5}).to_string().into(), 422, Some("timeout_s")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "timeout_s": 0}).to_string().into(), 422, Some("timeout_s")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "timeout_s": 1e12}).to_string().into(), 422, Some("timeout_s")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "timeout_s": 1.5}).to_string().into(), 422, Some("timeout_s")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), br#"{"model":"tiny-llama","input":{"prompt":"x"},"timeout_s":99999999999999999999999999}"#.to_vec(), 422, Some("timeout_s")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), br#"{"model":"tiny-llama","input":{"prompt":"x"},"timeout_s":1e999}"#.to_vec(), 400, Some("body")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": ""}}).to_string().into(), 422, Some("input.prompt")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "a\u{0000}b"}}).to_string().into(), 422, Some("input.prompt")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "bell\u{0007}"}}).to_string().into(), 422, Some("input.prompt")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": {"temperature": -0.1}}).to_string().into(), 422, Some("params.temperature")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": {"top_p": 0}}).to_string().into(), 422, Some("params.top_p")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": {"top_k": 0}}).to_string().into(), 422, Some("params.top_k")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": {"seed": -1}}).to_string().into(), 422, Some("params.seed")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), br#"{"model":"tiny-llama","input":{"prompt":"x"},"params":{"seed":18446744073709551616}}"#.to_vec(), 422, Some("params.seed")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": {"max_new_tokens": 1_000_000}}).to_string().into(), 422, Some("params.max_new_tokens")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": {"repetition_penalty": 0}}).to_string().into(), 422, Some("params.repetition_penalty")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": {"stop": ["a","b","c","d","e","f","g","h","i"]}}).to_string().into(), 422, Some("params.stop")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "tiny-llama", "input": {"prompt": "x"}, "params": {"stop": [""]}}).to_string().into(), 422, Some("params.stop[0]")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "all-minilm-l6-v2", "input": {"texts": []}}).to_string().into(), 422, Some("input.texts")),
        ("POST", "/v1/jobs".into(), Some(KEY_A), Some("application/json"), json!({"model": "all-minilm-l6-v2", "input": {"texts": ["ok", " "]}}).to_string().into(), 422, Some("input.texts[1]")),
        ("GET", "/v1/jobs/not-a-ulid".into(), Some(KEY_A), None, vec![], 400, Some("id")),
        ("GET", "/v1/jobs/01jd3q7zk8m6w0y8v6zq0c9f1b".into(), Some(KEY_A), None, vec![], 404, Some("id")),
        ("GET", "/v1/jobs/%00%01".into(), Some(KEY_A), None, vec![], 400, Some("id")),
        ("GET", format!("/v1/jobs/{valid_id}"), Some(KEY_A), None, vec![], 404, Some("id")),
        ("POST", format!("/v1/jobs/{valid_id}/cancel"), Some(KEY_A), None, vec![], 404, Some("id")),
        ("POST", "/v1/jobs/01JD3Q7ZK8M6W0Y8V6ZQ0C9F1U/cancel".into(), Some(KEY_A), None, vec![], 400, Some("id")),
        ("GET", "/v1/nothing".into(), Some(KEY_A), None, vec![], 404, None),
        ("DELETE", "/v1/jobs".into(), Some(KEY_A), None, vec![], 405, None),
        ("PUT", format!("/v1/jobs/{valid_id}"), Some(KEY_A), None, vec![], 405, None),
    ];
    for (method, path, key, ctype, body, status, field) in cases {
        let mut r = h.req(method, &path, key).body(body);
        if let Some(c) = ctype {
            r = r.header("content-type", c);
        }
        let resp = r.send().await.unwrap();
        let got = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: non-JSON {text}"));
        assert_eq!(got, status, "{method} {path} ({field:?}): {v}");
        let err = &v["error"];
        assert!(err["type"].is_string() && err["message"].is_string(), "{v}");
        if let Some(f) = field {
            assert_eq!(err["field"], f, "{method} {path}: {v}");
        }
        assert!(!text.contains("Dynamo") && !text.contains("panicked"), "internals leaked: {text}");
    }
    // Headers that are wrong on an otherwise good submit.
    for (name, value) in [("Idempotency-Key", "k".repeat(256)), ("Idempotency-Key", "has space".to_string())] {
        let (s, e) = send(h.req("POST", "/v1/jobs", Some(KEY_A)).header(name, value).json(&text_job())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(e["error"]["field"], name);
    }
    assert_eq!(h.job_count(KEY_A).await, 0, "no bad request stored anything");
    let d = h.stack.queue().receive(10, Duration::from_millis(200), Duration::from_secs(30)).await.unwrap();
    assert!(d.is_empty(), "no bad request queued anything");
}

async fn meta_routes(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let (s, health) = send(h.req("GET", "/healthz", None)).await;
    assert_eq!((s, health["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, models) = send(h.req("GET", "/v1/models", Some(KEY_A))).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> = models["models"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny-llama", "all-minilm-l6-v2"]);
    assert_eq!(models["models"][0]["task"], "text-generation");
    assert_eq!(models["models"][0]["pool"], "cpu");
    let (s, doc) = send(h.req("GET", "/openapi.json", None)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let resp = h.req("DELETE", "/v1/jobs", Some(KEY_A)).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "GET, POST");
}

async fn unicode_round_trips(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let prompt = "Grüße, 世界! 🚢 \"quotes\" \\ tab\there\nnew line — ÿ";
    let (s, job) =
        h.submit(KEY_A, json!({"model": "tiny-llama", "input": {"prompt": prompt}, "params": {"stop": "\n\n"}})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let (_, got) = send(h.req("GET", &format!("/v1/jobs/{}", job["id"].as_str().unwrap()), Some(KEY_A))).await;
    assert_eq!(got["input"]["prompt"], prompt);
    assert_eq!(got["params"]["stop"], json!(["\n\n"]), "a single stop string is stored as a list");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let h = start("embedded", |o| {
        o.config.rate_limit_per_s = 1.0;
        o.config.rate_limit_burst = 2.0;
    })
    .await
    .unwrap();
    for _ in 0..2 {
        assert_eq!(h.req("GET", "/v1/models", Some(KEY_A)).send().await.unwrap().status(), StatusCode::OK);
    }
    let resp = h.req("GET", "/v1/models", Some(KEY_A)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    // Another tenant is not affected.
    assert_eq!(h.req("GET", "/v1/models", Some(KEY_B)).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn statuses_in_list_filter_parse() {
    // Every status name the API shows is accepted by the list filter.
    let h = start("embedded", |_| {}).await.unwrap();
    for s in JobStatus::ALL {
        let (code, _) = send(h.req("GET", &format!("/v1/jobs?status={s}"), Some(KEY_A))).await;
        assert_eq!(code, StatusCode::OK, "{s}");
    }
}

/// A notifier for stacks where nothing subscribes: any post is a test failure.
struct NoSubscribers;

#[async_trait::async_trait]
impl ferry_core::ports::Notifier for NoSubscribers {
    async fn post(&self, id: &str, _: &[u8]) -> Result<(), ferry_core::ports::NotifyError> {
        panic!("nothing subscribed, yet {id} was posted to");
    }
}

async fn job_events_over_http(backend: &str) {
    use ferry_core::progress::EventBody;
    let Some(h) = start(backend, |_| {}).await else { return };
    let hub = Arc::new(ferry_core::publish::ProgressHub {
        jobs: h.stack.root.ports.jobs.clone(),
        events: h.stack.root.ports.events.clone(),
        connections: h.stack.root.ports.connections.clone(),
        notifier: Arc::new(NoSubscribers),
        clock: Arc::new(ferry_core::ports::SystemClock),
    });
    let (_, job) = h.submit(KEY_A, text_job()).await;
    let id: JobId = job["id"].as_str().unwrap().parse().unwrap();
    let (s, none) = send(h.req("GET", &format!("/v1/jobs/{id}/events"), Some(KEY_A))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (none["events"].as_array().unwrap().len(), &none["last_seq"], &none["status"]),
        (0, &json!(0), &json!("queued"))
    );
    for i in 0..3 {
        let body = EventBody::Token { index: i, id: 7 + i, text: format!("tok{i}"), logprob: None };
        hub.publish_progress(&id, body).await.unwrap();
    }
    let (s, all) = send(h.req("GET", &format!("/v1/jobs/{id}/events"), Some(KEY_A))).await;
    assert_eq!(s, StatusCode::OK, "{all}");
    let seqs: Vec<u64> = all["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!((&all["last_seq"], &all["next_after"]), (&json!(3), &json!(3)));
    assert_eq!(all["events"][0]["type"], "token");
    assert_eq!(all["events"][0]["text"], "tok0");
    let (_, page) = send(h.req("GET", &format!("/v1/jobs/{id}/events?after=1&limit=1"), Some(KEY_A))).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!((&page["events"][0]["seq"], &page["next_after"]), (&json!(2), &json!(2)));

    // Long poll: the request returns as soon as the next event is stored.
    let (hub2, id2) = (hub.clone(), id);
    let publisher = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        hub2.publish_progress(&id2, EventBody::Percentage { percent: 50.0, message: Some("half".into()) })
            .await
            .unwrap();
    });
    let t0 = Instant::now();
    let (s, next) = send(h.req("GET", &format!("/v1/jobs/{id}/events?after=3&wait=15"), Some(KEY_A))).await;
    publisher.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(next["events"][0]["seq"], 4);
    assert_eq!(next["events"][0]["percent"], 50.0);
    assert!(t0.elapsed() < Duration::from_secs(10), "woke on the event");
    let (_, view) = send(h.req("GET", &format!("/v1/jobs/{id}"), Some(KEY_A))).await;
    assert_eq!(view["last_seq"], 4, "the job view shows the latest seq");

    let (s, theirs) = send(h.req("GET", &format!("/v1/jobs/{id}/events"), Some(KEY_B))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{theirs}");
    for (q, field) in [("after=-1", "after"), ("wait=21", "wait"), ("limit=0", "limit"), ("since=3", "since")] {
        let (s, e) = send(h.req("GET", &format!("/v1/jobs/{id}/events?{q}"), Some(KEY_A))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {e}");
        assert_eq!(e["error"]["field"], field);
    }
}

/// DNS rebinding: a web page whose own name resolves to 127.0.0.1 reaches `ferry dev` with
/// its name in `Host`. Refused, before anything is read or written; localhost and IP
/// addresses are served.
async fn a_foreign_host_is_refused(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let post = |host: &str| h.req("POST", "/v1/jobs", Some(KEY_A)).header("host", host).json(&text_job());
    let (status, body) = send(post("evil.example:8080")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!((body["error"]["type"].as_str(), body["error"]["field"].as_str()), (Some("forbidden"), Some("Host")));
    assert_eq!(h.job_count(KEY_A).await, 0, "nothing submitted");
    for host in ["localhost:8080", "127.0.0.1"] {
        let (status, body) = send(post(host)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{host}: {body}");
    }
    assert_eq!(h.job_count(KEY_A).await, 2);
}

/// `GET /v1/webhooks/secret` makes a tenant's first secret and then answers the same one;
/// `POST /v1/webhooks/secret/rotate` puts a new one first and keeps the old one beside it;
/// tenants have their own; no key, no secret.
async fn webhook_secrets_and_rotation(backend: &str) {
    let Some(h) = start(backend, |_| {}).await else { return };
    let secrets = |v: &Value| -> Vec<String> {
        v["secrets"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    };
    let (status, first) = send(h.req("GET", "/v1/webhooks/secret", Some(KEY_A))).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let first = secrets(&first);
    assert_eq!(first.len(), 1);
    assert!(ferry_core::webhook::WebhookSecret::parse(&first[0]).is_ok(), "{first:?}");
    let (_, again) = send(h.req("GET", "/v1/webhooks/secret", Some(KEY_A))).await;
    assert_eq!(secrets(&again), first, "the same secret until a rotation");
    let (_, other) = send(h.req("GET", "/v1/webhooks/secret", Some(KEY_B))).await;
    assert_ne!(secrets(&other), first, "each tenant has its own");
    let (status, rotated) = send(h.req("POST", "/v1/webhooks/secret/rotate", Some(KEY_A))).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let rotated = secrets(&rotated);
    assert_eq!(rotated.len(), 2);
    assert_ne!(rotated[0], first[0]);
    assert_eq!(rotated[1], first[0], "the old secret signs beside the new one");
    let (_, now) = send(h.req("GET", "/v1/webhooks/secret", Some(KEY_A))).await;
    assert_eq!(secrets(&now), rotated);
    let (status, body) = send(h.req("GET", "/v1/webhooks/secret", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

//! A recording proxy in front of moto: every AWS request a component makes goes through it,
//! and it notes the IAM actions the request needs. The infra cross-check gives each
//! component (a Lambda, the executor) its own recorder, drives it through its work, and
//! compares what was recorded with the component's IAM policy in `infra/`.
//!
//! Requests are told apart as the services' wire protocols do: `X-Amz-Target` for the
//! JSON protocols (DynamoDB, SQS, ECS), the method and query for S3's REST API, and
//! `/@connections/` for the API Gateway Management API, which the recorder answers itself
//! (moto's does not work with the Rust SDK).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;

/// A running recorder; its `endpoint` is what the component's SDK config points at.
pub struct Recorder {
    pub endpoint: String,
    actions: Arc<Mutex<BTreeSet<String>>>,
    keys: Arc<Mutex<BTreeSet<String>>>,
    faults: Arc<Mutex<Vec<Fault>>>,
    posts: Arc<Mutex<Vec<(String, bytes::Bytes)>>>,
}

#[derive(Clone)]
struct Ctx {
    upstream: String,
    http: reqwest::Client,
    actions: Arc<Mutex<BTreeSet<String>>>,
    keys: Arc<Mutex<BTreeSet<String>>>,
    faults: Arc<Mutex<Vec<Fault>>>,
    posts: Arc<Mutex<Vec<(String, bytes::Bytes)>>>,
}

impl Recorder {
    /// Starts a recorder forwarding to `upstream` (moto's base URL).
    pub async fn start(upstream: &str) -> Recorder {
        let actions = Arc::new(Mutex::new(BTreeSet::new()));
        let keys = Arc::new(Mutex::new(BTreeSet::new()));
        let faults = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let ctx = Ctx {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            actions: actions.clone(),
            keys: keys.clone(),
            faults: faults.clone(),
            posts: posts.clone(),
        };
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(forward).with_state(ctx);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { endpoint: format!("http://{addr}"), actions, keys, faults, posts }
    }

    /// What was posted to live connections through the Management API: (connection id, data).
    pub fn posts(&self) -> Vec<(String, bytes::Bytes)> {
        self.posts.lock().unwrap().clone()
    }

    /// Injects `fault` into the next `times` requests that match it (a fault-injecting
    /// proxy: the recorder is one already).
    pub fn inject(&self, fault: Fault) {
        self.faults.lock().unwrap().push(fault);
    }

    /// How many injected faults are still to happen.
    pub fn faults_left(&self) -> u32 {
        self.faults.lock().unwrap().iter().map(|f| f.times).sum()
    }

    /// The kinds of DynamoDB items reached so far: the prefixes (`job#`, `apikey#`, ...) of
    /// the partition keys each request names (an index's, for a query), which IAM checks
    /// against a `dynamodb:LeadingKeys` condition.
    pub fn leading_keys(&self) -> BTreeSet<String> {
        self.keys.lock().unwrap().clone()
    }

    /// The IAM actions recorded so far (`service:Action`).
    pub fn actions(&self) -> BTreeSet<String> {
        self.actions.lock().unwrap().clone()
    }
}

/// A fault to inject: into requests whose `X-Amz-Target` ends with `.{operation}` and
/// whose body contains `containing`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub operation: &'static str,
    pub containing: String,
    pub kind: FaultKind,
    pub times: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// 400 `ThrottlingException` (DynamoDB's and SQS's throttling answer).
    Throttle,
    /// 500 `InternalServerError`.
    ServerError,
    /// The request is not forwarded, and the answer is a success as SQS gives it for
    /// SendMessage: the message is lost (as in a crash right after the call).
    Drop,
    /// No answer for this long, then forwarded (a hung call).
    Hang(std::time::Duration),
}

/// The fault `ctx` holds for this request, if any (counted down).
fn take_fault(ctx: &Ctx, target: Option<&str>, body: &[u8]) -> Option<FaultKind> {
    let target = target?;
    let text = String::from_utf8_lossy(body);
    let mut faults = ctx.faults.lock().unwrap();
    let f = faults.iter_mut().find(|f| {
        f.times > 0 && target.ends_with(&format!(".{}", f.operation)) && text.contains(f.containing.as_str())
    })?;
    f.times -= 1;
    Some(f.kind)
}

fn fault_response(kind: FaultKind, target: &str) -> Option<Response> {
    let json = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.0")
            .body(Body::from(body))
            .unwrap()
    };
    match kind {
        FaultKind::Throttle => Some(json(
            400,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"injected: rate exceeded"}"#
                .into(),
        )),
        FaultKind::ServerError => Some(json(
            500,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"injected: internal error"}"#
                .into(),
        )),
        FaultKind::Drop if target.ends_with(".SendMessage") => {
            Some(json(200, r#"{"MessageId":"00000000-0000-0000-0000-000000000000"}"#.into()))
        }
        FaultKind::Drop => Some(json(200, "{}".into())),
        FaultKind::Hang(_) => None,
    }
}

async fn forward(State(ctx): State<Ctx>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(kind) = take_fault(&ctx, target.as_deref(), &body) {
        if let FaultKind::Hang(d) = kind {
            tokio::time::sleep(d).await;
        } else if let Some(resp) = fault_response(kind, target.as_deref().unwrap_or_default()) {
            return resp;
        }
    }
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let actions = iam_actions(parts.method.as_str(), &path, &query, target.as_deref(), &body);
    ctx.actions.lock().unwrap().extend(actions);
    if target.as_deref().is_some_and(|t| t.starts_with("DynamoDB")) {
        ctx.keys.lock().unwrap().extend(leading_key_kinds(&body));
    }

    if let Some((_, id)) = path.split_once("/@connections/") {
        // The Management API: connections named `gone-...` are closed (410, as API Gateway
        // answers), the others accept posts like a live socket.
        if id.starts_with("gone") {
            return Response::builder()
                .status(410)
                .header("x-amzn-ErrorType", "GoneException")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"message":"Gone"}"#))
                .unwrap();
        }
        ctx.posts.lock().unwrap().push((id.to_string(), body.clone()));
        return Response::builder().status(200).body(Body::empty()).unwrap();
    }
    let url = format!("{}{}{}", ctx.upstream, path, if query.is_empty() { String::new() } else { format!("?{query}") });
    let mut upstream = ctx.http.request(parts.method.clone(), url).body(body.to_vec());
    for (name, value) in parts.headers.iter() {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    match upstream.send().await {
        Ok(resp) => {
            let mut out = Response::builder().status(resp.status().as_u16());
            for (name, value) in resp.headers() {
                if name != http::header::TRANSFER_ENCODING && name != http::header::CONTENT_LENGTH {
                    out = out.header(name, value);
                }
            }
            out.body(Body::from(resp.bytes().await.unwrap_or_default())).unwrap()
        }
        Err(e) => Response::builder().status(502).body(Body::from(e.to_string())).unwrap(),
    }
}

/// The prefixes (up to and including the first `#`) of the partition keys a DynamoDB
/// request names: `pk` of its `Key` or `Item` (in transactions and batches too), and the
/// `:pk` value of a query's key condition.
pub fn leading_key_kinds(body: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let mut keys = Vec::new();
    let mut pk_of = |item: &serde_json::Value| {
        if let Some(pk) = item["pk"]["S"].as_str() {
            keys.push(pk.to_string());
        }
    };
    pk_of(&v["Key"]);
    pk_of(&v["Item"]);
    for t in v["TransactItems"].as_array().into_iter().flatten() {
        for kind in ["Put", "Update", "Delete", "ConditionCheck"] {
            pk_of(&t[kind]["Key"]);
            pk_of(&t[kind]["Item"]);
        }
    }
    for (_, request) in v["RequestItems"].as_object().into_iter().flatten() {
        for k in request["Keys"].as_array().into_iter().flatten() {
            pk_of(k);
        }
        for w in request.as_array().into_iter().flatten() {
            pk_of(&w["PutRequest"]["Item"]);
            pk_of(&w["DeleteRequest"]["Key"]);
        }
    }
    if let Some(pk) =
        v["ExpressionAttributeValues"][":pk"]["S"].as_str().filter(|_| v.get("KeyConditionExpression").is_some())
    {
        keys.push(pk.to_string());
    }
    keys.into_iter().map(|k| k.split_once('#').map_or(k.clone(), |(kind, _)| format!("{kind}#"))).collect()
}

/// The IAM actions one request needs.
pub fn iam_actions(method: &str, path: &str, query: &str, target: Option<&str>, body: &[u8]) -> Vec<String> {
    if path.contains("/@connections/") {
        return vec!["execute-api:ManageConnections".into()];
    }
    if let Some(target) = target {
        let (prefix, op) = target.split_once('.').unwrap_or(("", target));
        let service = if prefix.starts_with("DynamoDB") {
            "dynamodb"
        } else if prefix.starts_with("AmazonSQS") {
            "sqs"
        } else if prefix.starts_with("AmazonEC2ContainerService") {
            "ecs"
        } else if prefix == "TrentService" {
            "kms"
        } else {
            return vec![format!("unknown:{target}")];
        };
        if service == "dynamodb" && op == "TransactWriteItems" {
            // IAM has no TransactWriteItems action: each item's own action is checked.
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let mut out = Vec::new();
            for item in v["TransactItems"].as_array().into_iter().flatten() {
                for (kind, action) in [
                    ("Put", "PutItem"),
                    ("Update", "UpdateItem"),
                    ("Delete", "DeleteItem"),
                    ("ConditionCheck", "ConditionCheckItem"),
                ] {
                    if item.get(kind).is_some() {
                        out.push(format!("dynamodb:{action}"));
                    }
                }
            }
            return out;
        }
        if service == "ecs" && op == "RunTask" {
            // Tagging at launch needs ecs:TagResource; launching hands the task its roles.
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let mut out = vec!["ecs:RunTask".to_string(), "iam:PassRole".to_string()];
            if v["tags"].as_array().is_some_and(|t| !t.is_empty()) {
                out.push("ecs:TagResource".into());
            }
            return out;
        }
        return vec![format!("{service}:{op}")];
    }
    // S3 (path-style): GET /bucket?list-type=2 lists, GET /bucket/key reads (a presigned
    // URL too: authorized as the signer's GetObject), PUT /bucket/key writes.
    let segments = path.trim_start_matches('/').split('/').filter(|s| !s.is_empty()).count();
    match (method, segments) {
        ("GET", 1) if query.contains("list-type=2") => vec!["s3:ListBucket".into()],
        ("GET" | "HEAD", n) if n >= 2 => vec!["s3:GetObject".into()],
        ("PUT", n) if n >= 2 => vec!["s3:PutObject".into()],
        _ => vec![format!("unknown:{method} {path}?{query}")],
    }
}

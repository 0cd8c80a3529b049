//! The OpenAPI document is generated from the routes' own declarations, and checked against
//! the router that serves them: every documented operation is routed, every other method of
//! a documented path is a 405 naming the documented ones, and nothing else is routed.

use std::sync::Arc;

use bytes::Bytes;
use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::fleet::NoLauncher;
use ferry_core::pool::Pools;
use ferry_core::ports::NoNotifier;
use ferry_core::root::Root;
use ferry_http::{Api, route_table};
use http::{Method, StatusCode};

fn api() -> Api {
    let ports = ferry_local::ports(
        &["cpu".into()],
        5,
        Arc::new(NoLauncher),
        Arc::new(NoNotifier),
        Arc::new(ferry_core::objects::NoObjects),
    );
    Api::new(&Root::new(ports, Catalog::demo(), Pools::default(), Config::default()))
}

async fn status(api: &Api, method: &Method, path: &str) -> (StatusCode, Option<String>) {
    let req = http::Request::builder().method(method).uri(path).body(Bytes::new()).unwrap();
    let resp = api.handle(req).await;
    let allow = resp.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
    (resp.status(), allow)
}

#[tokio::test]
async fn the_document_and_the_router_agree() {
    let api = api();
    let routes = route_table();
    let expected = [
        ("GET", "/healthz"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/models"),
        ("GET", "/v1/pools"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/{id}"),
        ("POST", "/v1/jobs/{id}/cancel"),
        ("GET", "/v1/jobs/{id}/events"),
        ("GET", "/v1/jobs/{id}/output"),
        ("POST", "/v1/inputs"),
        ("GET", "/v1/inputs/{id}"),
        ("GET", "/openai/v1/models"),
        ("POST", "/openai/v1/chat/completions"),
        ("POST", "/openai/v1/completions"),
        ("POST", "/openai/v1/embeddings"),
        ("GET", "/v1/webhooks/secret"),
        ("POST", "/v1/webhooks/secret/rotate"),
        ("GET", "/v1/jobs/{id}/webhooks"),
        ("POST", "/v1/jobs/{id}/webhooks/redeliver"),
    ];
    let mut got: Vec<(String, String)> = routes.iter().map(|(m, p)| (m.to_string(), p.clone())).collect();
    let mut want: Vec<(String, String)> = expected.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the documented operations");
    for (method, template) in &routes {
        let path = template.replace("{id}", "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B");
        let (s, _) = status(&api, method, &path).await;
        assert!(s != StatusCode::NOT_FOUND && s != StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {s}");
        let (s, _) = status(&api, method, &format!("{path}/")).await;
        assert!(s != StatusCode::NOT_FOUND && s != StatusCode::METHOD_NOT_ALLOWED, "{method} {path}/: {s}");
        let documented: Vec<&str> = routes.iter().filter(|(_, t)| t == template).map(|(m, _)| m.as_str()).collect();
        for other in [Method::PUT, Method::DELETE, Method::PATCH, Method::GET, Method::POST] {
            if documented.contains(&other.as_str()) {
                continue;
            }
            let (s, allow) = status(&api, &other, &path).await;
            let mut want = documented.clone();
            want.sort_unstable();
            assert_eq!((s, allow), (StatusCode::METHOD_NOT_ALLOWED, Some(want.join(", "))), "{other} {path}");
        }
    }
    for nowhere in [
        "/",
        "/v1",
        "/v1/nothing",
        "/v1/jobs//cancel",
        "/v1/jobs/x/y/z",
        "/v2/jobs",
        "/openai",
        "/openai/v1",
        "/openai/v1/nothing",
    ] {
        assert_eq!(status(&api, &Method::GET, nowhere).await.0, StatusCode::NOT_FOUND, "{nowhere}");
    }
}

#[test]
fn schemas_describe_the_bodies() {
    let doc = serde_json::to_value(ferry_http::openapi()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let schemas = &doc["components"]["schemas"];
    for name in ["SubmitJob", "JobView", "JobList", "ErrorBody", "ModelList", "TextGenerationParams", "EmbeddingsInput"]
    {
        assert!(schemas[name].is_object(), "schema {name} missing");
    }
    let view = schemas["JobView"]["properties"].as_object().unwrap();
    for field in ["id", "status", "attempt", "queue_delay_ms", "execution_ms", "error", "output", "last_seq"] {
        assert!(view.contains_key(field), "JobView.{field} missing");
    }
    let status = &schemas["JobStatus"]["enum"];
    assert_eq!(status.as_array().unwrap().len(), 8);
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert_eq!(
        doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SubmitJob"
    );
    let list_params: Vec<&str> = doc["paths"]["/v1/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(list_params, ["status", "limit", "cursor"], "query parameters come from their type");
}

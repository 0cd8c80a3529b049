//! The OpenAPI document is generated from the code: it lists exactly the routes the router
//! serves, with their schemas.

use std::collections::BTreeSet;

use ferry_core::api::{ROUTES, match_path};

#[test]
fn document_lists_exactly_the_routes() {
    let doc = serde_json::to_value(ferry_core::openapi::document()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, routed);
    for (_, template) in ROUTES {
        let concrete = template.replace("{id}", "01JD3Q7ZK8M6W0Y8V6ZQ0C9F1B");
        assert_eq!(match_path(&concrete).map(|(t, _)| t), Some(*template), "the router serves {template}");
    }
}

#[test]
fn schemas_describe_the_bodies() {
    let doc = serde_json::to_value(ferry_core::openapi::document()).unwrap();
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
}

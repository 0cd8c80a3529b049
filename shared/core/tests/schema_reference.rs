//! Ferry's JSON Schema checks (`ferry_core::schema`, for handlers' `input_schema`) against the
//! reference: the `jsonschema` package's `Draft202012Validator` (`.ci/run` installs the pinned
//! version). Every (schema, instance) pair of the corpus must get the same verdict from both;
//! where Ferry refuses, its error names the failing field.

use std::io::Write;
use std::process::{Command, Stdio};

use ferry_core::schema::Schema;
use serde_json::{Value, json};

/// The reference's verdict on each `[schema, instance]`.
fn reference(cases: &[(Value, Value)]) -> Option<Vec<bool>> {
    let script = r#"
import json, sys
from jsonschema import Draft202012Validator
print(json.dumps([Draft202012Validator(s).is_valid(i) for s, i in json.load(sys.stdin)]))
"#;
    let installed = Command::new("python3").args(["-c", "import jsonschema"]).status().is_ok_and(|s| s.success());
    if !installed {
        assert!(std::env::var_os("CI").is_none(), "CI installs the jsonschema package");
        eprintln!("skipped: the jsonschema Python package is not installed");
        return None;
    }
    let mut child =
        Command::new("python3").args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let pairs: Vec<Value> = cases.iter().map(|(s, i)| json!([s, i])).collect();
    child.stdin.take().unwrap().write_all(serde_json::to_string(&pairs).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference ran");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// A research agent's input schema, as a handler's catalog entry would give it.
fn agent() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["question"],
        "additionalProperties": false,
        "properties": {
            "question": {"type": "string", "minLength": 3, "maxLength": 500},
            "depth": {"type": "integer", "minimum": 1, "maximum": 5, "default": 2},
            "sources": {"type": "array", "items": {"$ref": "#/$defs/source"}, "maxItems": 3, "uniqueItems": true},
            "tone": {"enum": ["brief", "thorough"]},
            "budget_usd": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.01}
        },
        "$defs": {
            "source": {"type": "object", "required": ["url"], "properties": {
                "url": {"type": "string", "pattern": "^https://"},
                "weight": {"type": ["number", "null"]}
            }}
        }
    })
}

fn corpus() -> Vec<(Value, Value)> {
    let a = agent();
    let mut cases: Vec<(Value, Value)> = [
        json!({"question": "why is the sky blue?"}),
        json!({"question": "why?", "depth": 3, "tone": "brief", "budget_usd": 1.25}),
        json!({"question": "hi"}),
        json!({"depth": 2}),
        json!({"question": "why is it?", "depth": 0}),
        json!({"question": "why is it?", "depth": 2.0}),
        json!({"question": "why is it?", "depth": 2.5}),
        json!({"question": "why is it?", "extra": 1}),
        json!({"question": "why is it?", "tone": "loud"}),
        json!({"question": "why is it?", "budget_usd": 0}),
        json!({"question": "why is it?", "budget_usd": 0.005}),
        json!({"question": "why is it?", "sources": [{"url": "https://a.example"}, {"url": "https://b.example", "weight": null}]}),
        json!({"question": "why is it?", "sources": [{"url": "http://a.example"}]}),
        json!({"question": "why is it?", "sources": [{"weight": 1}]}),
        json!({"question": "why is it?", "sources": [{"url": "https://a"}, {"url": "https://a"}]}),
        json!({"question": "why is it?", "sources": [{"url": "https://a"}, {"url": "https://b"}, {"url": "https://c"}, {"url": "https://d"}]}),
        json!({"question": "ünïcødé ok"}),
        json!({"question": "ab\u{1F680}"}),
        json!("just a string"),
        json!(null),
    ]
    .into_iter()
    .map(|i| (a.clone(), i))
    .collect();
    let combinators = [
        (
            json!({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 10}]}),
            vec![json!("x"), json!(12), json!(3), json!(null)],
        ),
        (
            json!({"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 5}]}),
            vec![json!(3), json!(7), json!(7.5), json!("7")],
        ),
        (json!({"not": {"type": "null"}}), vec![json!(null), json!(0)]),
        (
            json!({"if": {"properties": {"kind": {"const": "url"}}}, "then": {"required": ["url"]}, "else": {"required": ["text"]}}),
            vec![
                json!({"kind": "url", "url": "u"}),
                json!({"kind": "url", "text": "t"}),
                json!({"text": "t"}),
                json!({}),
            ],
        ),
        (
            json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false}),
            vec![json!(["a", 1]), json!(["a"]), json!(["a", 1, 2]), json!([1, "a"])],
        ),
        (
            json!({"type": "array", "contains": {"type": "integer"}, "minContains": 2, "maxContains": 3}),
            vec![json!([1, "a", 2]), json!([1, "a"]), json!([1, 2, 3, 4]), json!([])],
        ),
        (
            json!({"type": "object", "patternProperties": {"^x-": {"type": "string"}}, "additionalProperties": {"type": "integer"},
            "propertyNames": {"maxLength": 5}, "minProperties": 1, "maxProperties": 2}),
            vec![
                json!({"x-a": "s", "b": 1}),
                json!({"x-a": 1}),
                json!({"b": "s"}),
                json!({}),
                json!({"toolong": 1}),
                json!({"a": 1, "b": 2, "c": 3}),
            ],
        ),
        (
            json!({"dependentRequired": {"card": ["billing"]}}),
            vec![json!({"card": 1, "billing": 2}), json!({"card": 1}), json!({"billing": 2})],
        ),
        (
            json!({"allOf": [{"type": "number"}, {"maximum": 10}], "const": 10}),
            vec![json!(10), json!(10.0), json!(9), json!(11)],
        ),
        (
            json!({"enum": [[1, 2], {"a": 1}, null]}),
            vec![json!([1, 2]), json!([1.0, 2.0]), json!({"a": 1}), json!([2, 1]), json!(null)],
        ),
        (
            json!({"$ref": "#/$defs/n", "$defs": {"n": {"type": "integer", "multipleOf": 3}}}),
            vec![json!(9), json!(10), json!(-3)],
        ),
        (json!({"type": "string", "format": "email"}), vec![json!("not an email"), json!(1)]),
        (json!(true), vec![json!({"anything": 1})]),
        (json!({"properties": {"never": false}}), vec![json!({}), json!({"never": 1})]),
    ];
    for (schema, instances) in combinators {
        cases.extend(instances.into_iter().map(|i| (schema.clone(), i)));
    }
    cases
}

#[test]
fn verdicts_match_the_reference_validator() {
    let cases = corpus();
    let ours: Vec<bool> = cases.iter().map(|(s, i)| Schema::compile(s).unwrap().validate(i).is_ok()).collect();
    let Some(theirs) = reference(&cases) else { return };
    for (((schema, instance), ours), theirs) in cases.iter().zip(&ours).zip(&theirs) {
        assert_eq!(ours, theirs, "schema {schema}\ninstance {instance}");
    }
    assert!(ours.iter().filter(|v| !**v).count() > 20, "the corpus refuses plenty");
}

#[test]
fn errors_name_the_failing_field() {
    let s = Schema::compile(&agent()).unwrap();
    let field = |v: Value| s.validate(&v).unwrap_err().field;
    assert_eq!(field(json!({"depth": 2})), "input.question");
    assert_eq!(field(json!({"question": "why is it?", "depth": 9})), "input.depth");
    assert_eq!(
        field(json!({"question": "why is it?", "sources": [{"url": "https://a"}, {"url": "ftp://b"}]})),
        "input.sources[1].url"
    );
    assert_eq!(
        field(json!({"question": "why is it?", "sources": [{"url": "https://a"}, {"url": "https://a"}]})),
        "input.sources[1]"
    );
    assert_eq!(field(json!({"question": "why is it?", "odd key": 1})), "input[\"odd key\"]");
    let e = s.validate(&json!({"question": "why is it?", "tone": "loud"})).unwrap_err();
    assert!(e.message.contains("brief"), "{e}");
}

#[test]
fn what_cannot_be_checked_is_refused_when_compiled() {
    for (schema, why) in [
        (json!({"unevaluatedProperties": false}), "unevaluatedProperties"),
        (json!({"$ref": "https://example.com/other.json"}), "$ref"),
        (json!({"properties": {"a": {"$dynamicRef": "#x"}}}), "$dynamicRef"),
        (json!({"pattern": "(?<=a)b"}), "pattern"),
        (json!({"type": "text"}), "type"),
        (json!({"minLength": -1}), "minLength"),
        (json!({"items": 3}), "schema"),
        (json!({"$ref": "#/$defs/missing"}), "$ref"),
    ] {
        let err = Schema::compile(&schema).unwrap_err();
        assert!(err.to_string().contains(why), "{schema}: {err}");
    }
}

//! JSON Schema (draft 2020-12) for a handler's `input_schema` (issue 16): [`Schema::compile`]
//! checks a schema once, when the catalog is read, and [`Schema::validate`] checks an input
//! against it, naming the first failing field as submit's errors do (`input.steps[2].url`).
//!
//! Supported: `type`, `enum`, `const`; `properties`, `required`, `additionalProperties`,
//! `patternProperties`, `propertyNames`, `minProperties`, `maxProperties`,
//! `dependentRequired`; `items`, `prefixItems`, `minItems`, `maxItems`, `uniqueItems`,
//! `contains` (with `minContains`, `maxContains`); `minLength`, `maxLength`, `pattern`;
//! `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`; `allOf`,
//! `anyOf`, `oneOf`, `not`, `if`/`then`/`else`; `$ref` to `#`, `#/$defs/...` and
//! `#/definitions/...`; annotations (`title`, `description`, `default`, `examples`,
//! `format`, which 2020-12 makes an annotation, `$schema`, `$id`, `$comment`, ...).
//! A schema using anything else (`unevaluatedProperties`, `$dynamicRef`, a remote `$ref`, a
//! pattern the regex engine cannot run) is refused when compiled: an input is never passed
//! by a check that was silently skipped.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Keywords that carry no assertion.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$anchor",
    "$comment",
    "$defs",
    "definitions",
    "$vocabulary",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "format",
    "contentMediaType",
    "contentEncoding",
    "contentSchema",
];

/// Keywords that assert something, and are checked.
const ASSERTIONS: &[&str] = &[
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "$ref",
];

/// A schema that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input_schema at {at}: {message}")]
pub struct SchemaError {
    /// A JSON pointer into the schema (`#/properties/url`).
    pub at: String,
    pub message: String,
}

/// Where an input fails its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The failing value's path under `input` (`input.steps[2].url`).
    pub field: String,
    pub message: String,
}

/// A compiled schema.
#[derive(Debug, Clone)]
pub struct Schema {
    root: Value,
    patterns: BTreeMap<String, regex::Regex>,
}

impl Schema {
    /// Checks `schema` (every keyword supported, every subschema a schema, every pattern
    /// compiled, every `$ref` resolvable).
    pub fn compile(schema: &Value) -> Result<Schema, SchemaError> {
        let mut patterns = BTreeMap::new();
        check(schema, schema, "#", &mut patterns)?;
        Ok(Schema { root: schema.clone(), patterns })
    }

    /// The schema's JSON.
    pub fn json(&self) -> &Value {
        &self.root
    }

    /// Checks `value` (a job's input, at `input`); the first failure found.
    pub fn validate(&self, value: &Value) -> Result<(), Invalid> {
        self.at(&self.root, value, "input", 0)
    }

    fn at(&self, schema: &Value, v: &Value, path: &str, depth: u32) -> Result<(), Invalid> {
        let fail = |message: String| Err(Invalid { field: path.to_string(), message });
        let s = match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return fail("no value is allowed here".into()),
            Value::Object(s) => s,
            _ => return Ok(()), // compile refused anything else
        };
        if depth > 64 {
            return fail("the schema nests (or refers to itself) too deeply".into());
        }
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let target = resolve(&self.root, r).expect("compile resolved every $ref");
            self.at(target, v, path, depth + 1)?;
        }
        if let Some(t) = s.get("type") {
            let names: Vec<&str> = match t {
                Value::String(n) => vec![n.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !names.iter().any(|n| is_type(v, n)) {
                return fail(format!("must be {}", names.iter().map(|n| article(n)).collect::<Vec<_>>().join(" or ")));
            }
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array)
            && !options.iter().any(|o| equal(o, v))
        {
            return fail(format!("must be one of {}", Value::Array(options.clone())));
        }
        if let Some(c) = s.get("const")
            && !equal(c, v)
        {
            return fail(format!("must be {c}"));
        }
        match v {
            Value::Object(o) => self.object(s, o, path, depth)?,
            Value::Array(a) => self.array(s, a, path, depth)?,
            Value::String(text) => self.string(s, text, path)?,
            Value::Number(_) => number(s, v, path)?,
            _ => {}
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            for sub in all {
                self.at(sub, v, path, depth + 1)?;
            }
        }
        if let Some(any) = s.get("anyOf").and_then(Value::as_array)
            && !any.iter().any(|sub| self.at(sub, v, path, depth + 1).is_ok())
        {
            return fail("matches none of the schemas allowed here (anyOf)".into());
        }
        if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
            let n = one.iter().filter(|sub| self.at(sub, v, path, depth + 1).is_ok()).count();
            if n != 1 {
                return fail(format!("must match exactly one of the schemas allowed here (oneOf); it matches {n}"));
            }
        }
        if let Some(not) = s.get("not")
            && self.at(not, v, path, depth + 1).is_ok()
        {
            return fail("matches a schema it must not (not)".into());
        }
        if let Some(cond) = s.get("if") {
            let branch = if self.at(cond, v, path, depth + 1).is_ok() { s.get("then") } else { s.get("else") };
            if let Some(b) = branch {
                self.at(b, v, path, depth + 1)?;
            }
        }
        Ok(())
    }

    fn object(&self, s: &Map<String, Value>, o: &Map<String, Value>, path: &str, depth: u32) -> Result<(), Invalid> {
        let child =
            |k: &str| if is_identifier(k) { format!("{path}.{k}") } else { format!("{path}[{}]", Value::from(k)) };
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for name in req.iter().filter_map(Value::as_str) {
                if !o.contains_key(name) {
                    return Err(Invalid { field: child(name), message: "is required".into() });
                }
            }
        }
        if let Some(deps) = s.get("dependentRequired").and_then(Value::as_object) {
            for (name, needs) in deps {
                if o.contains_key(name) {
                    for need in needs.as_array().into_iter().flatten().filter_map(Value::as_str) {
                        if !o.contains_key(need) {
                            return Err(Invalid { field: child(need), message: format!("is required with {name}") });
                        }
                    }
                }
            }
        }
        let count = |k: &str| s.get(k).and_then(Value::as_u64);
        if let Some(min) = count("minProperties")
            && (o.len() as u64) < min
        {
            return Err(Invalid { field: path.into(), message: format!("must have at least {min} fields") });
        }
        if let Some(max) = count("maxProperties")
            && (o.len() as u64) > max
        {
            return Err(Invalid { field: path.into(), message: format!("must have at most {max} fields") });
        }
        let props = s.get("properties").and_then(Value::as_object);
        let pattern_props = s.get("patternProperties").and_then(Value::as_object);
        for (k, value) in o {
            if let Some(names) = s.get("propertyNames") {
                self.at(names, &Value::from(k.as_str()), &child(k), depth + 1).map_err(|e| Invalid {
                    field: child(k),
                    message: format!("is not an allowed name: {}", e.message),
                })?;
            }
            let mut matched = false;
            if let Some(sub) = props.and_then(|p| p.get(k)) {
                matched = true;
                self.at(sub, value, &child(k), depth + 1)?;
            }
            for (pattern, sub) in pattern_props.into_iter().flatten() {
                if self.patterns[pattern].is_match(k) {
                    matched = true;
                    self.at(sub, value, &child(k), depth + 1)?;
                }
            }
            if !matched && let Some(extra) = s.get("additionalProperties") {
                if extra == &Value::Bool(false) {
                    return Err(Invalid { field: child(k), message: "is not an allowed field".into() });
                }
                self.at(extra, value, &child(k), depth + 1)?;
            }
        }
        Ok(())
    }

    fn array(&self, s: &Map<String, Value>, a: &[Value], path: &str, depth: u32) -> Result<(), Invalid> {
        let fail = |message: String| Err(Invalid { field: path.to_string(), message });
        let count = |k: &str| s.get(k).and_then(Value::as_u64);
        if let Some(min) = count("minItems")
            && (a.len() as u64) < min
        {
            return fail(format!("must have at least {min} items"));
        }
        if let Some(max) = count("maxItems")
            && (a.len() as u64) > max
        {
            return fail(format!("must have at most {max} items"));
        }
        if s.get("uniqueItems") == Some(&Value::Bool(true)) {
            for (i, x) in a.iter().enumerate() {
                if a[..i].iter().any(|y| equal(x, y)) {
                    return Err(Invalid { field: format!("{path}[{i}]"), message: "repeats an earlier item".into() });
                }
            }
        }
        let prefix = s.get("prefixItems").and_then(Value::as_array).map_or(&[][..], |p| p.as_slice());
        for (i, item) in a.iter().enumerate() {
            let sub = match prefix.get(i) {
                Some(sub) => Some(sub),
                None => s.get("items"),
            };
            if let Some(sub) = sub {
                self.at(sub, item, &format!("{path}[{i}]"), depth + 1)?;
            }
        }
        if let Some(contains) = s.get("contains") {
            let n = a.iter().filter(|item| self.at(contains, item, path, depth + 1).is_ok()).count() as u64;
            let min = count("minContains").unwrap_or(1);
            if n < min {
                return fail(format!("must contain at least {min} matching items (contains); it has {n}"));
            }
            if let Some(max) = count("maxContains")
                && n > max
            {
                return fail(format!("must contain at most {max} matching items (contains); it has {n}"));
            }
        }
        Ok(())
    }

    fn string(&self, s: &Map<String, Value>, text: &str, path: &str) -> Result<(), Invalid> {
        let fail = |message: String| Err(Invalid { field: path.to_string(), message });
        let chars = text.chars().count() as u64;
        if let Some(min) = s.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            return fail(format!("must be at least {min} characters"));
        }
        if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            return fail(format!("must be at most {max} characters"));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str)
            && !self.patterns[p].is_match(text)
        {
            return fail(format!("must match the pattern {}", Value::from(p)));
        }
        Ok(())
    }
}

fn number(s: &Map<String, Value>, v: &Value, path: &str) -> Result<(), Invalid> {
    let fail = |message: String| Err(Invalid { field: path.to_string(), message });
    let x = v.as_f64().unwrap_or(f64::NAN);
    let bound = |k: &str| s.get(k).and_then(Value::as_f64);
    if let Some(m) = bound("minimum")
        && x < m
    {
        return fail(format!("must be at least {m}"));
    }
    if let Some(m) = bound("maximum")
        && x > m
    {
        return fail(format!("must be at most {m}"));
    }
    if let Some(m) = bound("exclusiveMinimum")
        && x <= m
    {
        return fail(format!("must be more than {m}"));
    }
    if let Some(m) = bound("exclusiveMaximum")
        && x >= m
    {
        return fail(format!("must be less than {m}"));
    }
    if let Some(m) = bound("multipleOf") {
        let q = x / m;
        if !(q.is_finite() && (q - q.round()).abs() < 1e-9) {
            return fail(format!("must be a multiple of {m}"));
        }
    }
    Ok(())
}

/// JSON Schema's type names; an integer is a number with no fraction (`1.0` is one).
fn is_type(v: &Value, name: &str) -> bool {
    match name {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn article(name: &str) -> String {
    match name {
        "null" => "null".into(),
        "integer" | "object" | "array" => format!("an {name}"),
        other => format!("a {other}"),
    }
}

/// Equality as JSON Schema defines it: numbers by value (`1` equals `1.0`).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| equal(p, q)))
        }
        _ => a == b,
    }
}

fn is_identifier(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The subschema a local `$ref` names.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    let decoded = percent_decode(pointer)?;
    if decoded.is_empty() { Some(root) } else { root.pointer(&decoded) }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks one (sub)schema at `at` and those inside it.
fn check(
    root: &Value,
    schema: &Value,
    at: &str,
    patterns: &mut BTreeMap<String, regex::Regex>,
) -> Result<(), SchemaError> {
    let err = |message: String| Err(SchemaError { at: at.to_string(), message });
    let s = match schema {
        Value::Bool(_) => return Ok(()),
        Value::Object(s) => s,
        _ => return err("a schema is an object or a boolean".into()),
    };
    for k in s.keys() {
        if !ANNOTATIONS.contains(&k.as_str()) && !ASSERTIONS.contains(&k.as_str()) {
            return err(format!("the keyword {k:?} is not supported"));
        }
    }
    let sub = |k: &str| format!("{at}/{k}");
    if let Some(p) = s.get("pattern") {
        let Some(p) = p.as_str() else { return err("pattern is a string".into()) };
        compile_pattern(p, sub("pattern"), patterns)?;
    }
    if let Some(r) = s.get("$ref") {
        let target = r.as_str().and_then(|r| resolve(root, r));
        if target.is_none() {
            return err(format!("$ref {r} does not name a part of this schema"));
        }
    }
    if let Some(t) = s.get("type") {
        let names: Vec<&Value> = match t {
            Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        const TYPES: [&str; 7] = ["null", "boolean", "object", "array", "string", "number", "integer"];
        if !names.iter().all(|n| n.as_str().is_some_and(|n| TYPES.contains(&n))) {
            return err(format!("type {t} is not one of {TYPES:?}"));
        }
    }
    for k in ["enum", "required", "allOf", "anyOf", "oneOf", "prefixItems"] {
        if s.get(k).is_some_and(|v| !v.is_array()) {
            return err(format!("{k} is an array"));
        }
    }
    for k in ["properties", "patternProperties", "dependentRequired", "$defs", "definitions"] {
        if s.get(k).is_some_and(|v| !v.is_object()) {
            return err(format!("{k} is an object"));
        }
    }
    for k in [
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "minContains",
        "maxContains",
    ] {
        if s.get(k).is_some_and(|v| v.as_u64().is_none()) {
            return err(format!("{k} is a non-negative integer"));
        }
    }
    for k in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
        if s.get(k).is_some_and(|v| !v.is_number()) {
            return err(format!("{k} is a number"));
        }
    }
    if s.get("multipleOf").is_some_and(|v| v.as_f64().is_none_or(|m| m <= 0.0)) {
        return err("multipleOf is a number above 0".into());
    }
    for k in ["additionalProperties", "propertyNames", "items", "contains", "not", "if", "then", "else"] {
        if let Some(v) = s.get(k) {
            check(root, v, &sub(k), patterns)?;
        }
    }
    for k in ["allOf", "anyOf", "oneOf", "prefixItems"] {
        for (i, v) in s.get(k).and_then(Value::as_array).into_iter().flatten().enumerate() {
            check(root, v, &format!("{at}/{k}/{i}"), patterns)?;
        }
    }
    for k in ["properties", "$defs", "definitions"] {
        for (name, v) in s.get(k).and_then(Value::as_object).into_iter().flatten() {
            check(root, v, &format!("{at}/{k}/{name}"), patterns)?;
        }
    }
    for (p, v) in s.get("patternProperties").and_then(Value::as_object).into_iter().flatten() {
        compile_pattern(p, format!("{at}/patternProperties"), patterns)?;
        check(root, v, &format!("{at}/patternProperties/{p}"), patterns)?;
    }
    Ok(())
}

fn compile_pattern(p: &str, at: String, patterns: &mut BTreeMap<String, regex::Regex>) -> Result<(), SchemaError> {
    if !patterns.contains_key(p) {
        let re = regex::Regex::new(p).map_err(|e| SchemaError { at, message: format!("pattern {p:?}: {e}") })?;
        patterns.insert(p.to_string(), re);
    }
    Ok(())
}

//! Reading `infra/` for the cross-check tests: the HCL files, the `locals` the
//! environments are written in, and the actions of the IAM policy documents. Parsed with
//! `hcl-rs` (a real HCL2 parser); expressions are inspected, never evaluated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::expr::{Expression, ObjectKey, TraversalOperator};
use hcl::structure::{Body, Structure};

/// Every `.tf` and `.tftest.hcl` file under `dir`, sorted.
pub fn hcl_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() && !name.starts_with('.') {
                stack.push(p);
            } else if name.ends_with(".tf") || name.ends_with(".tftest.hcl") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every top-level `.tf` file of `dir` parsed, in file order.
pub fn bodies(dir: &Path) -> Vec<(PathBuf, Body)> {
    hcl_files(dir)
        .into_iter()
        .filter(|p| p.parent() == Some(dir) && p.extension().is_some_and(|e| e == "tf"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let body = hcl::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, body)
        })
        .collect()
}

/// Every `locals` attribute of the configuration in `dir`, by name.
pub fn locals(dir: &Path) -> BTreeMap<String, Expression> {
    let mut out = BTreeMap::new();
    for (_, body) in bodies(dir) {
        for s in body.into_inner() {
            if let Structure::Block(b) = s
                && b.identifier() == "locals"
            {
                for a in b.body.attributes() {
                    out.insert(a.key().to_string(), a.expr().clone());
                }
            }
        }
    }
    out
}

fn key_name(k: &ObjectKey) -> String {
    match k {
        ObjectKey::Identifier(i) => i.to_string(),
        ObjectKey::Expression(Expression::String(s)) => s.clone(),
        ObjectKey::Expression(e) => e.to_string(),
        other => format!("{other:?}"),
    }
}

/// The keys of an object literal local (`name = { A = ..., B = ... }`), of the object in
/// the true branch of a conditional (`cond ? { A = ... } : {}`), or of a `merge(...)` of
/// such objects and other locals (`merge(local.api_env, { B = ... })`).
pub fn local_map_keys(locals: &BTreeMap<String, Expression>, name: &str) -> BTreeSet<String> {
    let expr = locals.get(name).unwrap_or_else(|| panic!("infra/ has no local {name}"));
    object_keys(expr, locals).unwrap_or_else(|| panic!("local {name} is not an object literal: {expr}"))
}

fn object_keys(expr: &Expression, locals: &BTreeMap<String, Expression>) -> Option<BTreeSet<String>> {
    match expr {
        Expression::Object(o) => Some(o.keys().map(key_name).collect()),
        Expression::Conditional(c) => object_keys(&c.true_expr, locals),
        Expression::Parenthesis(e) => object_keys(e, locals),
        Expression::FuncCall(f) if f.name.name.as_str() == "merge" => {
            let mut keys = BTreeSet::new();
            for arg in &f.args {
                keys.extend(object_keys(arg, locals)?);
            }
            Some(keys)
        }
        Expression::Traversal(t) => match (&t.expr, t.operators.as_slice()) {
            (Expression::Variable(v), [TraversalOperator::GetAttr(local)]) if v.as_str() == "local" => {
                object_keys(locals.get(local.as_str())?, locals)
            }
            _ => None,
        },
        _ => None,
    }
}

/// An object literal of object literals (`name = { cpu = { ... }, gpu = { ... } }`): the
/// inner keys by outer key.
pub fn local_object(locals: &BTreeMap<String, Expression>, name: &str) -> BTreeMap<String, BTreeSet<String>> {
    let Some(Expression::Object(o)) = locals.get(name) else { panic!("local {name} is not an object literal") };
    o.iter()
        .map(|(k, v)| {
            (key_name(k), object_keys(v, locals).unwrap_or_else(|| panic!("{name}.{}: not an object", key_name(k))))
        })
        .collect()
}

/// The policy document a Lambda role's policy is (`locals.lambda_policies` in
/// infra/iam_roles.tf: `role = data.aws_iam_policy_document.<name>[...].json`); for any other
/// role, the document of the role's own name. A document with `for_each` must list the
/// role among its keys.
pub fn role_policy_document(dir: &Path, role: &str) -> String {
    let locals = locals(dir);
    let Some(Expression::Object(policies)) = locals.get("lambda_policies") else { return role.to_string() };
    let Some((_, expr)) = policies.iter().find(|(k, _)| key_name(k) == role) else { return role.to_string() };
    let Expression::Traversal(t) = expr else { panic!("lambda_policies.{role} is not a document's json: {expr}") };
    let attrs: Vec<String> = t
        .operators
        .iter()
        .map(|op| match op {
            TraversalOperator::GetAttr(a) => a.to_string(),
            TraversalOperator::Index(Expression::String(key)) => format!("[{key}]"),
            other => panic!("lambda_policies.{role}: unexpected {other:?}"),
        })
        .collect();
    match attrs.as_slice() {
        [kind, name, json] if kind == "aws_iam_policy_document" && json == "json" => name.clone(),
        [kind, name, key, json] if kind == "aws_iam_policy_document" && json == "json" => {
            assert_eq!(key, &format!("[{role}]"), "lambda_policies.{role} is the {name} document's own instance");
            name.clone()
        }
        _ => panic!("lambda_policies.{role} is not a policy document's json: {expr}"),
    }
}

/// The actions of `data "aws_iam_policy_document" "<name>"`, by statement `sid` (statements
/// inside `dynamic "statement"` blocks included, under their content's sid).
pub fn policy_actions(dir: &Path, name: &str) -> BTreeMap<String, BTreeSet<String>> {
    for (_, body) in bodies(dir) {
        for s in body.into_inner() {
            let Structure::Block(b) = s else { continue };
            let labels: Vec<String> = b.labels().iter().map(|l| l.as_str().to_string()).collect();
            if b.identifier() != "data" || labels != ["aws_iam_policy_document", name] {
                continue;
            }
            let mut out = BTreeMap::new();
            collect_statements(&b.body, &mut out);
            return out;
        }
    }
    panic!("infra/ has no data.aws_iam_policy_document.{name}");
}

fn collect_statements(body: &Body, out: &mut BTreeMap<String, BTreeSet<String>>) {
    for block in body.blocks() {
        match block.identifier() {
            "statement" | "content" => {
                let sid = block
                    .body
                    .attributes()
                    .find(|a| a.key() == "sid")
                    .map(|a| match a.expr() {
                        Expression::String(s) => s.clone(),
                        e => e.to_string(),
                    })
                    .unwrap_or_else(|| format!("statement-{}", out.len()));
                let actions = block
                    .body
                    .attributes()
                    .find(|a| a.key() == "actions")
                    .map(|a| match a.expr() {
                        Expression::Array(items) => items
                            .iter()
                            .map(|i| match i {
                                Expression::String(s) => s.clone(),
                                e => e.to_string(),
                            })
                            .collect(),
                        e => panic!("statement {sid}: actions is not a literal list: {e}"),
                    })
                    .unwrap_or_default();
                out.insert(sid, actions);
            }
            "dynamic" => collect_statements(&block.body, out),
            _ => {}
        }
    }
}

/// The partition key kinds (`job#`, ...) `data "aws_iam_policy_document" "<name>"` lets its
/// DynamoDB statements reach: the values of its `dynamodb:LeadingKeys` conditions, without
/// their trailing `*`.
pub fn policy_leading_keys(dir: &Path, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, body) in bodies(dir) {
        for block in body.blocks() {
            let labels: Vec<&str> = block.labels().iter().map(|l| l.as_str()).collect();
            if block.identifier() == "data" && labels == ["aws_iam_policy_document", name] {
                collect_leading_keys(&block.body, &mut out);
            }
        }
    }
    out
}

fn collect_leading_keys(body: &Body, out: &mut BTreeSet<String>) {
    for block in body.blocks() {
        match block.identifier() {
            "statement" | "content" | "dynamic" => collect_leading_keys(&block.body, out),
            "condition" => {
                let attr = |k: &str| block.body.attributes().find(|a| a.key() == k).map(|a| a.expr().clone());
                let is_leading = matches!(attr("variable"), Some(Expression::String(v)) if v == "dynamodb:LeadingKeys");
                if let (true, Some(Expression::Array(values))) = (is_leading, attr("values")) {
                    for v in values {
                        if let Expression::String(v) = v {
                            out.insert(v.trim_end_matches('*').to_string());
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

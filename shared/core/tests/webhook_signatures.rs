//! Ferry's webhook signatures through the Standard Webhooks reference library (the
//! `standardwebhooks` package from PyPI; `.ci/run` installs the pinned version): what Ferry
//! signs, the reference verifies; a changed body, id or timestamp does not; during a rotation
//! (both secrets' signatures in the header) a receiver holding either secret verifies, and
//! after it only the new one.

use std::io::Write;
use std::process::{Command, Stdio};

use ferry_core::webhook::{WebhookSecret, signature_header};
use serde_json::{Value, json};

/// Runs the reference verifier on each case: `{secret, body, id, timestamp, signature}`;
/// returns whether each verified.
fn reference_verifies(cases: &[Value]) -> Option<Vec<bool>> {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
out = []
for c in json.load(sys.stdin):
    headers = {"webhook-id": c["id"], "webhook-timestamp": str(c["timestamp"]), "webhook-signature": c["signature"]}
    try:
        Webhook(c["secret"]).verify(c["body"].encode(), headers)
        out.append(True)
    except WebhookVerificationError:
        out.append(False)
print(json.dumps(out))
"#;
    let installed = Command::new("python3").args(["-c", "import standardwebhooks"]).status().is_ok_and(|s| s.success());
    if !installed {
        assert!(std::env::var_os("CI").is_none(), "CI installs the standardwebhooks package");
        eprintln!("skipped: the standardwebhooks Python package is not installed");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(serde_json::to_string(cases).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the verifier ran");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn the_reference_library_verifies_what_ferry_signs() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
    let body = json!({"type": "job.completed", "timestamp": "2026-12-04T20:00:00Z",
        "data": {"id": "01JFERRY", "status": "succeeded", "output": {"text": "ünïcode ✓"}}})
    .to_string();
    let id = "msg_01JFERRY_completed";
    let both = signature_header(&[new.clone(), old.clone()], id, now, body.as_bytes());
    let only_new = signature_header(std::slice::from_ref(&new), id, now, body.as_bytes());
    let case = |secret: &WebhookSecret, body: &str, id: &str, ts: i64, signature: &str| json!({"secret": secret.encode(), "body": body, "id": id, "timestamp": ts, "signature": signature});
    let cases = [
        case(&new, &body, id, now, &only_new),
        // During a rotation: either secret verifies the two-signature header.
        case(&new, &body, id, now, &both),
        case(&old, &body, id, now, &both),
        // After it: the old secret no longer verifies.
        case(&old, &body, id, now, &only_new),
        // Anything changed: no.
        case(&new, &body.replace("succeeded", "failed"), id, now, &only_new),
        case(&new, &body, "msg_other", now, &only_new),
        case(&new, &body, id, now + 1, &only_new),
    ];
    let Some(verified) = reference_verifies(&cases) else { return };
    assert_eq!(verified, vec![true, true, true, false, false, false, false]);
}

//! Ferry's webhook signatures through the Standard Webhooks reference library (the
//! `standardwebhooks` package from PyPI; `.ci/run` installs the pinned version): what Ferry
//! signs, the reference verifies; a changed body, id or timestamp does not; during a rotation
//! (both secrets' signatures in the header) a receiver holding either secret verifies, and
//! after it only the new one.

use ferry_core::webhook::{WebhookSecret, signature_header};
use ferry_tests::standard_webhooks::{Case, verifies};
use serde_json::json;

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
    let case = |secret: &WebhookSecret, body: &str, id: &str, ts: i64, signature: &str| Case {
        secret: secret.encode(),
        body: body.as_bytes().to_vec(),
        headers: [
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    };
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
    let Some(verified) = verifies(&cases) else { return };
    assert_eq!(verified, vec![true, true, true, false, false, false, false]);
}

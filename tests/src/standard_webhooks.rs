//! The Standard Webhooks reference library (the `standardwebhooks` package from PyPI; `.ci/run`
//! installs the pinned version) as the judge of Ferry's webhook signatures.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// One request to verify: the secret the receiver holds, the body and the headers it got.
pub struct Case {
    pub secret: String,
    pub body: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Whether the reference library verifies each case (`Webhook(secret).verify(body, headers)`);
/// `None` where the package is missing outside CI (in CI that fails the test).
pub fn verifies(cases: &[Case]) -> Option<Vec<bool>> {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
out = []
for c in json.load(sys.stdin):
    try:
        Webhook(c["secret"]).verify(c["body"].encode(), c["headers"])
        out.append(True)
    except WebhookVerificationError:
        out.append(False)
print(json.dumps(out))
"#;
    let installed = Command::new("python3").args(["-c", "import standardwebhooks"]).status().is_ok_and(|s| s.success());
    if !installed {
        assert!(std::env::var_os("CI").is_none(), "CI installs the standardwebhooks package");
        eprintln!("skipped the signature check: the standardwebhooks Python package is not installed");
        return None;
    }
    let cases: Vec<serde_json::Value> = cases
        .iter()
        .map(
            |c| serde_json::json!({"secret": c.secret, "body": String::from_utf8_lossy(&c.body), "headers": c.headers}),
        )
        .collect();
    let mut child =
        Command::new("python3").args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(serde_json::to_string(&cases).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the verifier ran");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

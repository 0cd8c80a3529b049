//! SDK configuration and the settings read from the environment.
//!
//! A deployed function reads everything from its environment ([`sdk_config_from_env`],
//! [`AwsSettings::from_lookup`]); tests and `ferry dev --backend aws` point at an emulator
//! with [`sdk_config_for_endpoint`], which reads nothing from the process environment, so
//! two test suites in one process never fight over `AWS_*` variables.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

use crate::AwsError;

/// The table name used when `FERRY_TABLE` is unset.
pub const DEFAULT_TABLE: &str = "ferry-jobs";
/// The queue name used when neither `FERRY_QUEUE_URL` nor `FERRY_QUEUE_NAME` is set.
pub const DEFAULT_QUEUE_NAME: &str = "ferry-work";

/// The region used against emulators: any valid region works there, but one is needed to sign.
const TEST_REGION: &str = "us-east-1";

/// The standard SDK configuration chain: region, credentials and endpoint from the
/// environment, profile files or instance metadata. Honours `AWS_ENDPOINT_URL` (and the
/// per-service `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL_SQS`), with [`Timeouts`]
/// from the environment; a malformed timeout is an error.
pub async fn sdk_config_from_env() -> Result<SdkConfig, AwsError> {
    let timeouts = Timeouts::from_lookup(|k| std::env::var(k).ok())?;
    Ok(aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts.config()).load().await)
}

/// Configuration for an emulator at `endpoint` (e.g. `http://127.0.0.1:5000`): region
/// us-east-1, static credentials `test`/`test`, the default [`Timeouts`], and nothing taken
/// from the process environment or profile files. Explicit credentials also keep the SDK
/// from probing the instance metadata endpoint, which would stall for seconds off EC2.
pub async fn sdk_config_for_endpoint(endpoint: &str) -> SdkConfig {
    sdk_config_for_endpoint_with(endpoint, &Timeouts::default()).await
}

/// [`sdk_config_for_endpoint`] with other timeouts.
pub async fn sdk_config_for_endpoint_with(endpoint: &str, timeouts: &Timeouts) -> SdkConfig {
    sdk_config(endpoint, timeouts, "test").await
}

/// [`sdk_config_for_endpoint`] signing with the access key id `key`: how `ferry dev`'s
/// processes reach its local Management API, which accepts only requests signed with the
/// stack's own key (a random token handed to them, never a real credential).
pub async fn sdk_config_for_endpoint_as(endpoint: &str, key: &str) -> SdkConfig {
    sdk_config(endpoint, &Timeouts::default(), key).await
}

async fn sdk_config(endpoint: &str, timeouts: &Timeouts, key: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        // An empty environment also hides HOME, so no profile file is read either.
        .empty_test_environment()
        .region(Region::new(TEST_REGION))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(key, "test", None, None, "ferry-static"))
        .timeout_config(timeouts.config())
        .load()
        .await
}

/// How long an AWS call may take. The SDK sets no operation or attempt timeout by default,
/// so one hung call (a half-open connection, a stuck endpoint) would block its caller
/// forever: an executor's finish, a Lambda until its own timeout. Read from the environment:
/// - `FERRY_AWS_CONNECT_TIMEOUT_S` (default 3): opening a connection;
/// - `FERRY_AWS_ATTEMPT_TIMEOUT_S` (default 10): one try of a call;
/// - `FERRY_AWS_OPERATION_TIMEOUT_S` (default 30): all tries of one call together.
///
/// An SQS long poll adds its wait time to both (`SqsWorkQueue::receive`). Streamed bodies
/// (S3 model downloads) are read after the call returns and are not bounded by these; the
/// SDK's stalled-stream protection ends a download that stops moving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub attempt: Duration,
    pub operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            attempt: Duration::from_secs(10),
            operation: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// The timeouts `lookup` sets (seconds, fractions allowed), the defaults for the rest.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Timeouts, AwsError> {
        let d = Timeouts::default();
        let secs = |name: &str, default: Duration| -> Result<Duration, AwsError> {
            match lookup(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        AwsError::Config(format!("{name} must be a number of seconds in (0, 3600], got {v:?}"))
                    }),
            }
        };
        let t = Timeouts {
            connect: secs("FERRY_AWS_CONNECT_TIMEOUT_S", d.connect)?,
            attempt: secs("FERRY_AWS_ATTEMPT_TIMEOUT_S", d.attempt)?,
            operation: secs("FERRY_AWS_OPERATION_TIMEOUT_S", d.operation)?,
        };
        if t.operation < t.attempt {
            return Err(AwsError::Config(format!(
                "FERRY_AWS_OPERATION_TIMEOUT_S ({:?}) is shorter than FERRY_AWS_ATTEMPT_TIMEOUT_S ({:?}): no try could use its whole time",
                t.operation, t.attempt
            )));
        }
        Ok(t)
    }

    /// The SDK's form of these timeouts.
    pub fn config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(self.connect)
            .operation_attempt_timeout(self.attempt)
            .operation_timeout(self.operation)
            .build()
    }
}

/// Where the backend's resources are: the table name and the work queue's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub table: String,
    pub queue_url: String,
}

impl AwsSettings {
    /// Reads `FERRY_TABLE` (default `ferry-jobs`) and `FERRY_QUEUE_URL`, or failing that
    /// `FERRY_QUEUE_NAME` (default `ferry-work`), which is resolved with GetQueueUrl:
    /// queue URLs differ between AWS, moto and ElasticMQ, so they are never built by hand.
    pub async fn from_env(sqs: &aws_sdk_sqs::Client) -> Result<AwsSettings, AwsError> {
        Self::from_lookup(sqs, |name| std::env::var(name).ok()).await
    }

    /// [`AwsSettings::from_env`] over any variable lookup, so it can be tested without
    /// touching the process environment.
    pub async fn from_lookup(
        sqs: &aws_sdk_sqs::Client,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AwsSettings, AwsError> {
        let non_empty = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let table = table_from_lookup(&lookup);
        let queue_url = match non_empty("FERRY_QUEUE_URL") {
            Some(url) => url,
            None => {
                let name = non_empty("FERRY_QUEUE_NAME").unwrap_or_else(|| DEFAULT_QUEUE_NAME.to_string());
                resolve_queue_url(sqs, &name).await?
            }
        };
        Ok(AwsSettings { table, queue_url })
    }
}

/// `FERRY_TABLE`, or the default table name.
pub fn table_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> String {
    lookup("FERRY_TABLE").filter(|v| !v.trim().is_empty()).unwrap_or_else(|| DEFAULT_TABLE.to_string())
}

/// Looks a queue's URL up by name.
pub async fn resolve_queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String, AwsError> {
    let out =
        sqs.get_queue_url().queue_name(name).send().await.map_err(|e| AwsError::service("SQS", "GetQueueUrl", e))?;
    out.queue_url.ok_or_else(|| AwsError::Config(format!("GetQueueUrl returned no URL for queue {name:?}")))
}

#[cfg(test)]
mod timeout_tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn timeouts_come_from_the_environment_and_bad_ones_are_refused() {
        assert_eq!(Timeouts::from_lookup(env(&[])).unwrap(), Timeouts::default());
        let t = Timeouts::from_lookup(env(&[
            ("FERRY_AWS_ATTEMPT_TIMEOUT_S", "2.5"),
            ("FERRY_AWS_OPERATION_TIMEOUT_S", "5"),
        ]))
        .unwrap();
        assert_eq!((t.attempt, t.operation), (Duration::from_millis(2500), Duration::from_secs(5)));
        assert_eq!(t.connect, Timeouts::default().connect);
        for bad in ["0", "-1", "soon", "NaN", "7200"] {
            let err = Timeouts::from_lookup(env(&[("FERRY_AWS_CONNECT_TIMEOUT_S", bad)])).unwrap_err().to_string();
            assert!(err.contains("FERRY_AWS_CONNECT_TIMEOUT_S"), "{bad}: {err}");
        }
        let err = Timeouts::from_lookup(env(&[("FERRY_AWS_OPERATION_TIMEOUT_S", "5")])).unwrap_err().to_string();
        assert!(err.contains("shorter than FERRY_AWS_ATTEMPT_TIMEOUT_S"), "{err}");
    }
}

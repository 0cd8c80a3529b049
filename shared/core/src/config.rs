//! Settings of the API and the job service, with their environment variables. The Lambda
//! reads them from its environment; `ferry dev` from flags that fall back to the same
//! variables. README's configuration table lists them all.

use crate::catalog::ModelSpec;
use crate::input::InputLimits;
use crate::webhook::UrlPolicy;

/// Everything the HTTP API and the job service can be tuned with.
#[derive(Debug, Clone)]
pub struct Config {
    /// `FERRY_MAX_BODY_BYTES`: larger request bodies get 413. Default 6 MiB (the Lambda
    /// payload limit); inputs over [`crate::objects::INLINE_BYTES`] go to the results store.
    pub max_body_bytes: usize,
    /// `FERRY_DEFAULT_TIMEOUT_S`: a job's execution timeout when it names none. Default 600.
    pub default_timeout_s: u64,
    /// `FERRY_MAX_TIMEOUT_S`: the largest `timeout_s` accepted. Default 86400 (one day).
    pub max_timeout_s: u64,
    /// `FERRY_MAX_ATTEMPTS`: tries per job before it fails. Default 3.
    pub max_attempts: u32,
    /// `FERRY_QUEUE_TTL_S`: a job still queued after this expires. Default 3600.
    pub queue_ttl_s: u64,
    /// `FERRY_RETENTION_S`: how long finished jobs are kept (DynamoDB TTL). Default 7 days.
    pub retention_s: u64,
    /// `FERRY_IDEMPOTENCY_TTL_S`: how long an `Idempotency-Key` stays bound. Default 1 day.
    pub idempotency_ttl_s: u64,
    /// `FERRY_MAX_WAIT_S`: the cap on `Prefer: wait=N`. Default 25 (API Gateway stops at 30).
    pub max_wait_s: u64,
    /// `FERRY_RATE_LIMIT_PER_S`: requests per second per tenant and per process; 0 turns
    /// the limiter off. Default 50. (API Gateway throttling is the account-wide limit.)
    pub rate_limit_per_s: f64,
    /// `FERRY_RATE_LIMIT_BURST`: bucket size of the limiter. Default 100.
    pub rate_limit_burst: f64,
    /// `FERRY_MAX_NEW_TOKENS`: bound on `params.max_new_tokens` for models naming none. Default 4096.
    pub max_new_tokens: u32,
    /// `FERRY_MAX_BATCH`: bound on `input.texts` for models naming none. Default 2048
    /// (OpenAI's limit per embeddings request).
    pub max_batch: u32,
    /// `FERRY_OUTPUT_URL_TTL_S`: how long a job view's `output_url` works. Default 3600;
    /// 60 to 604800 (SigV4's limit of 7 days).
    pub output_url_ttl_s: u64,
    /// Which webhook URLs submit accepts and the deliverer calls: [`UrlPolicy::AWS`] (https
    /// to public addresses) unless `ferry dev` sets [`UrlPolicy::LOCAL`]. Not a variable: a
    /// deployment cannot be told to call its own network.
    pub webhook_policy: UrlPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_body_bytes: 6 << 20,
            default_timeout_s: 600,
            max_timeout_s: 86_400,
            max_attempts: 3,
            queue_ttl_s: 3600,
            retention_s: 7 * 86_400,
            idempotency_ttl_s: 86_400,
            max_wait_s: 25,
            rate_limit_per_s: 50.0,
            rate_limit_burst: 100.0,
            max_new_tokens: 4096,
            max_batch: 2048,
            output_url_ttl_s: crate::objects::DEFAULT_URL_TTL_S,
            webhook_policy: UrlPolicy::AWS,
        }
    }
}

/// Every variable [`Config::from_lookup`] reads: tuning knobs, each with a default, so a
/// deployment may leave any of them unset (the infra cross-check relies on this list; a
/// test below keeps it equal to what `from_lookup` reads).
pub const VARS: &[&str] = &[
    "FERRY_MAX_BODY_BYTES",
    "FERRY_DEFAULT_TIMEOUT_S",
    "FERRY_MAX_TIMEOUT_S",
    "FERRY_MAX_ATTEMPTS",
    "FERRY_QUEUE_TTL_S",
    "FERRY_RETENTION_S",
    "FERRY_IDEMPOTENCY_TTL_S",
    "FERRY_MAX_WAIT_S",
    "FERRY_RATE_LIMIT_PER_S",
    "FERRY_RATE_LIMIT_BURST",
    "FERRY_MAX_NEW_TOKENS",
    "FERRY_MAX_BATCH",
    "FERRY_OUTPUT_URL_TTL_S",
];

/// A variable that is set but unusable.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {var}={value:?} is invalid: {reason}")]
pub struct ConfigError {
    pub var: String,
    pub value: String,
    pub reason: String,
}

impl Config {
    /// Defaults overridden by whichever `FERRY_*` variables are set.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`Config::from_env`], reading variables through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        fn parse<T: std::str::FromStr>(
            get: &dyn Fn(&str) -> Option<String>,
            var: &str,
            into: &mut T,
            ok: fn(&T) -> bool,
        ) -> Result<(), ConfigError> {
            if let Some(value) = get(var) {
                let v = value.trim().parse::<T>().ok().filter(ok).ok_or_else(|| ConfigError {
                    var: var.into(),
                    value: value.clone(),
                    reason: "not a number in the allowed range".into(),
                })?;
                *into = v;
            }
            Ok(())
        }
        let mut c = Config::default();
        let g: &dyn Fn(&str) -> Option<String> = &get;
        parse(g, "FERRY_MAX_BODY_BYTES", &mut c.max_body_bytes, |v| *v >= 1024 && *v <= 10 << 20)?;
        parse(g, "FERRY_DEFAULT_TIMEOUT_S", &mut c.default_timeout_s, |v| *v >= 1)?;
        parse(g, "FERRY_MAX_TIMEOUT_S", &mut c.max_timeout_s, |v| *v >= 1)?;
        parse(g, "FERRY_MAX_ATTEMPTS", &mut c.max_attempts, |v| (1..=100).contains(v))?;
        parse(g, "FERRY_QUEUE_TTL_S", &mut c.queue_ttl_s, |v| *v >= 1)?;
        parse(g, "FERRY_RETENTION_S", &mut c.retention_s, |v| *v >= 60)?;
        parse(g, "FERRY_IDEMPOTENCY_TTL_S", &mut c.idempotency_ttl_s, |v| *v >= 60)?;
        parse(g, "FERRY_MAX_WAIT_S", &mut c.max_wait_s, |v| *v <= 25)?;
        parse(g, "FERRY_RATE_LIMIT_PER_S", &mut c.rate_limit_per_s, |v| v.is_finite() && *v >= 0.0)?;
        parse(g, "FERRY_RATE_LIMIT_BURST", &mut c.rate_limit_burst, |v| v.is_finite() && *v >= 1.0)?;
        parse(g, "FERRY_MAX_NEW_TOKENS", &mut c.max_new_tokens, |v| *v >= 1)?;
        parse(g, "FERRY_MAX_BATCH", &mut c.max_batch, |v| *v >= 1)?;
        parse(g, "FERRY_OUTPUT_URL_TTL_S", &mut c.output_url_ttl_s, |v| (60..=604_800).contains(v))?;
        if c.default_timeout_s > c.max_timeout_s {
            return Err(ConfigError {
                var: "FERRY_DEFAULT_TIMEOUT_S".into(),
                value: c.default_timeout_s.to_string(),
                reason: "larger than FERRY_MAX_TIMEOUT_S".into(),
            });
        }
        Ok(c)
    }

    /// The bounds of `model`'s input: its own `max_new_tokens` and `max_batch`, else the
    /// deployment's defaults.
    pub fn input_limits(&self, model: &ModelSpec) -> InputLimits {
        InputLimits {
            max_new_tokens: model.max_new_tokens.unwrap_or(self.max_new_tokens),
            max_texts: model.max_batch.unwrap_or(self.max_batch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_lists_exactly_what_from_lookup_reads() {
        let read = std::sync::Mutex::new(std::collections::BTreeSet::new());
        Config::from_lookup(|k| {
            read.lock().unwrap().insert(k.to_string());
            None
        })
        .unwrap();
        let want: std::collections::BTreeSet<String> = VARS.iter().map(|s| s.to_string()).collect();
        assert_eq!(read.into_inner().unwrap(), want);
    }
}

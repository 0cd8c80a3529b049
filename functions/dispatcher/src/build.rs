//! The dispatcher and the watchdog as the Lambda runs them, configured by an environment
//! lookup (the process environment in `main`; tests pass a recording one, which is how the
//! infra cross-check learns what the Lambda reads).

use ferry_core::watchdog::DEFAULT_CANCEL_GRACE_MS;

use ferry_core::deliver::NoTransport;

use crate::Handlers;

/// Why the Lambda cannot start.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the clients once (the table, each pool's queue and dead-letter queue, ECS, the
/// Management API, the webhook queue) through the composition root.
pub async fn build(
    sdk: &ferry_aws::SdkConfig,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Handlers, BuildError> {
    let root = ferry_aws::root_from_lookup(sdk, env).await?;
    let cancel_grace_ms = match env("FERRY_CANCEL_GRACE_S") {
        Some(v) => {
            v.trim().parse::<u64>().map_err(|_| format!("FERRY_CANCEL_GRACE_S={v:?} is not a number of seconds"))?
                * 1000
        }
        None => DEFAULT_CANCEL_GRACE_MS,
    };
    Ok(Handlers {
        dispatcher: root.dispatcher(),
        watchdog: root.watchdog(cancel_grace_ms),
        // It only queues deliveries: the webhooks Lambda posts them.
        webhooks: root.webhooks(std::sync::Arc::new(NoTransport), Default::default()),
    })
}

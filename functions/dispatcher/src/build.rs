//! The dispatcher and the watchdog as the Lambda runs them, configured by an environment
//! lookup (the process environment in `main`; tests pass a recording one, which is how the
//! infra cross-check learns what the Lambda reads).

use std::sync::Arc;

use ferry_core::catalog::Catalog;
use ferry_core::config::Config;
use ferry_core::dispatch::Dispatcher;
use ferry_core::ports::{Clock, SystemClock};
use ferry_core::publish::ProgressHub;
use ferry_core::service::JobService;
use ferry_core::watchdog::{DEFAULT_CANCEL_GRACE_MS, Watchdog};

/// Why the Lambda cannot start.
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the clients once: the table, each pool's queue and dead-letter queue, ECS.
pub async fn build(
    sdk: &ferry_aws::SdkConfig,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<(Dispatcher, Watchdog), BuildError> {
    let backend = ferry_aws::AwsBackend::from_lookup(sdk, env).await?;
    let catalog = Catalog::from_lookup(env)?;
    let fleet = ferry_aws::AwsFleet::from_lookup(sdk, &backend, &catalog, env)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Status changes the watchdog makes reach WebSocket subscribers through the Management API.
    let progress = env("FERRY_WS_MANAGEMENT_ENDPOINT").filter(|v| !v.trim().is_empty()).map(|endpoint| {
        Arc::new(ProgressHub {
            jobs: backend.jobs.clone(),
            events: backend.jobs.clone(),
            connections: backend.connections.clone(),
            notifier: Arc::new(ferry_aws::ApiGatewayNotifier::new(sdk, &endpoint)),
            clock: clock.clone(),
        })
    });
    let cancel_grace_ms = match env("FERRY_CANCEL_GRACE_S") {
        Some(v) => {
            v.trim().parse::<u64>().map_err(|_| format!("FERRY_CANCEL_GRACE_S={v:?} is not a number of seconds"))?
                * 1000
        }
        None => DEFAULT_CANCEL_GRACE_MS,
    };
    let service = JobService {
        jobs: backend.jobs.clone(),
        queues: fleet.queues.clone(),
        clock: clock.clone(),
        catalog: Arc::new(catalog),
        config: Config::from_lookup(env)?,
        progress,
        fleet: None,
    };
    let dispatcher = fleet.dispatcher(clock);
    let watchdog =
        Watchdog { service, pools: fleet.pools.clone(), launcher: Some(fleet.launcher.clone()), cancel_grace_ms };
    Ok((dispatcher, watchdog))
}

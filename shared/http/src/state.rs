//! What the routes read: the job service, the key store, stored events, the pools'
//! dispatcher (read only), the rate limiter and the OpenAPI document, derived once from the
//! composition root.

use std::sync::Arc;

use ferry_core::dispatch::Dispatcher;
use ferry_core::ports::{ApiKeyStore, EventStore, WebhookSecretStore};
use ferry_core::ratelimit::RateLimiter;
use ferry_core::root::Root;
use ferry_core::service::JobService;

/// The routes' state.
pub struct ApiState {
    pub service: JobService,
    pub keys: Arc<dyn ApiKeyStore>,
    /// Stored progress events (`GET /v1/jobs/{id}/events`).
    pub events: Arc<dyn EventStore>,
    /// Tenants' webhook signing secrets (`/v1/webhooks/secret`).
    pub webhook_secrets: Arc<dyn WebhookSecretStore>,
    /// A job's webhook deliveries, listed and queued again (never posted from here).
    pub webhooks: ferry_core::deliver::Webhooks,
    /// The pools' dispatcher, read-only (`GET /v1/pools`).
    pub pools: Dispatcher,
    /// Per tenant, per process.
    pub limiter: RateLimiter,
    /// `GET /openapi.json`.
    pub doc: utoipa::openapi::OpenApi,
}

/// The state as axum hands it to routes.
pub type AppState = Arc<ApiState>;

impl ApiState {
    pub fn new(root: &Root) -> ApiState {
        let config = &root.config;
        ApiState {
            service: root.service(),
            keys: root.ports.keys.clone(),
            events: root.ports.events.clone(),
            webhook_secrets: root.ports.webhook_secrets.clone(),
            webhooks: root.webhooks(Arc::new(ferry_core::deliver::NoTransport), Default::default()),
            pools: root.dispatcher(),
            limiter: RateLimiter::new(config.rate_limit_per_s, config.rate_limit_burst),
            doc: crate::openapi(),
        }
    }
}

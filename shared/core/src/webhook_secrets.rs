//! A tenant's webhook signing secrets over the [`WebhookSecretStore`] port (issue 15): the
//! secrets that sign now, created on first use ([`signing_secrets`]), and rotation ([`rotate`]):
//! a rotated-out secret signs beside the new one for [`ROTATION_OVERLAP`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::job::{Millis, TenantId};
use crate::ports::{StoreError, StoredWebhookSecret, WebhookSecretStore, WebhookSecrets};
use crate::webhook::{ROTATION_OVERLAP, WebhookSecret};

/// `GET /v1/webhooks/secret`'s answer: the signing secrets, the current one first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookSecretList {
    /// `whsec_...`, current first.
    pub secrets: Vec<String>,
}

impl From<&[WebhookSecret]> for WebhookSecretList {
    fn from(secrets: &[WebhookSecret]) -> Self {
        WebhookSecretList { secrets: secrets.iter().map(WebhookSecret::encode).collect() }
    }
}

/// Why a tenant's secrets could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored secret does not parse (the record was written by something else).
    #[error("a stored webhook secret is malformed")]
    Malformed,
    /// Other writers kept winning (a storm of rotations).
    #[error("the tenant's webhook secrets kept changing; try again")]
    Contended,
}

/// Tries of a compare-and-set before [`SecretsError::Contended`].
const CAS_TRIES: usize = 5;

/// The secrets that sign the tenant's deliveries now, the current one first, then those
/// rotated out less than [`ROTATION_OVERLAP`] ago; a first secret is created on first use
/// (two first uses at once agree on one).
pub async fn signing_secrets(
    store: &dyn WebhookSecretStore,
    tenant: &TenantId,
    now: Millis,
) -> Result<Vec<WebhookSecret>, SecretsError> {
    for _ in 0..CAS_TRIES {
        if let Some(record) = store.get(tenant).await? {
            return live(&record, now);
        }
        let first = WebhookSecrets {
            tenant: tenant.clone(),
            secrets: vec![StoredWebhookSecret {
                secret: WebhookSecret::generate().encode(),
                created_at: now,
                retires_at: None,
            }],
            version: 1,
        };
        if store.put(&first).await? {
            return live(&first, now);
        }
    }
    Err(SecretsError::Contended)
}

/// Makes a new current secret; the old one keeps signing for [`ROTATION_OVERLAP`]. Secrets
/// past their overlap are dropped. Returns [`signing_secrets`] after the rotation.
pub async fn rotate(
    store: &dyn WebhookSecretStore,
    tenant: &TenantId,
    now: Millis,
) -> Result<Vec<WebhookSecret>, SecretsError> {
    let overlap = ROTATION_OVERLAP.as_millis() as Millis;
    for _ in 0..CAS_TRIES {
        let stored = store.get(tenant).await?;
        let version = stored.as_ref().map_or(0, |r| r.version);
        let mut secrets =
            vec![StoredWebhookSecret { secret: WebhookSecret::generate().encode(), created_at: now, retires_at: None }];
        for old in stored.into_iter().flat_map(|r| r.secrets) {
            let retires_at = old.retires_at.unwrap_or(now + overlap);
            if retires_at > now {
                secrets.push(StoredWebhookSecret { retires_at: Some(retires_at), ..old });
            }
        }
        let next = WebhookSecrets { tenant: tenant.clone(), secrets, version: version + 1 };
        if store.put(&next).await? {
            return live(&next, now);
        }
    }
    Err(SecretsError::Contended)
}

fn live(record: &WebhookSecrets, now: Millis) -> Result<Vec<WebhookSecret>, SecretsError> {
    record
        .secrets
        .iter()
        .filter(|s| s.retires_at.is_none_or(|t| t > now))
        .map(|s| WebhookSecret::parse(&s.secret).map_err(|_| SecretsError::Malformed))
        .collect()
}

//! The embedded webhook delivery store: deliveries by (job, id) and the endpoints a 410
//! disabled, written compare-and-set on the version as the DynamoDB adapter does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use ferry_core::deliver::{WebhookDelivery, WebhookDeliveryStore};
use ferry_core::ports::StoreError;
use ferry_core::{JobId, Millis, TenantId};

use crate::lock;

/// Webhook deliveries in memory.
#[derive(Debug, Default)]
pub struct MemoryDeliveries {
    deliveries: Mutex<BTreeMap<(JobId, String), WebhookDelivery>>,
    disabled: Mutex<HashMap<(TenantId, String), Millis>>,
}

impl MemoryDeliveries {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl WebhookDeliveryStore for MemoryDeliveries {
    async fn create(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError> {
        let mut all = lock(&self.deliveries);
        let key = (delivery.job_id, delivery.id.clone());
        if all.contains_key(&key) {
            return Ok(false);
        }
        all.insert(key, delivery.clone());
        Ok(true)
    }

    async fn get(&self, job_id: &JobId, id: &str) -> Result<Option<WebhookDelivery>, StoreError> {
        Ok(lock(&self.deliveries).get(&(*job_id, id.to_string())).cloned())
    }

    async fn list(&self, job_id: &JobId) -> Result<Vec<WebhookDelivery>, StoreError> {
        let all = lock(&self.deliveries);
        Ok(all
            .range((*job_id, String::new())..)
            .take_while(|((j, _), _)| j == job_id)
            .map(|(_, d)| d.clone())
            .collect())
    }

    async fn update(&self, delivery: &WebhookDelivery) -> Result<bool, StoreError> {
        let mut all = lock(&self.deliveries);
        match all.get_mut(&(delivery.job_id, delivery.id.clone())) {
            Some(stored) if delivery.version >= 2 && stored.version == delivery.version - 1 => {
                *stored = delivery.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn disabled_since(&self, tenant: &TenantId, url: &str) -> Result<Option<Millis>, StoreError> {
        Ok(lock(&self.disabled).get(&(tenant.clone(), url.to_string())).copied())
    }

    async fn set_disabled(&self, tenant: &TenantId, url: &str, at: Option<Millis>) -> Result<(), StoreError> {
        let mut disabled = lock(&self.disabled);
        let key = (tenant.clone(), url.to_string());
        match at {
            Some(at) => disabled.insert(key, at),
            None => disabled.remove(&key),
        };
        Ok(())
    }
}

//! The embedded API key store: a map from key hash to record, like the DynamoDB table
//! keyed by the hash (the key itself is never held); and the webhook secret store, a map
//! from tenant to its record, written compare-and-set on the version as DynamoDB does.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ferry_core::TenantId;
use ferry_core::ports::{ApiKeyRecord, ApiKeyStore, StoreError, WebhookSecretStore, WebhookSecrets};

use crate::lock;

/// API keys in memory. Clones of the records are handed out, so callers never share state.
#[derive(Debug, Default)]
pub struct MemoryApiKeyStore {
    keys: Mutex<HashMap<String, ApiKeyRecord>>,
}

impl MemoryApiKeyStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ApiKeyStore for MemoryApiKeyStore {
    async fn lookup(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(lock(&self.keys).get(key_hash).cloned())
    }

    async fn put(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        lock(&self.keys).insert(record.key_hash.clone(), record.clone());
        Ok(())
    }
}

/// Webhook secrets in memory.
#[derive(Debug, Default)]
pub struct MemoryWebhookSecrets {
    records: Mutex<HashMap<TenantId, WebhookSecrets>>,
}

impl MemoryWebhookSecrets {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl WebhookSecretStore for MemoryWebhookSecrets {
    async fn get(&self, tenant: &TenantId) -> Result<Option<WebhookSecrets>, StoreError> {
        Ok(lock(&self.records).get(tenant).cloned())
    }

    async fn put(&self, record: &WebhookSecrets) -> Result<bool, StoreError> {
        let mut records = lock(&self.records);
        let stored = records.get(&record.tenant).map(|r| r.version).unwrap_or(0);
        if record.version == 0 || stored != record.version - 1 {
            return Ok(false);
        }
        records.insert(record.tenant.clone(), record.clone());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_replaces_and_lookup_finds() {
        let store = MemoryApiKeyStore::new();
        let mut rec = ApiKeyRecord { key_hash: "ab".into(), tenant: TenantId::new("t1").unwrap(), created_at: 1 };
        store.put(&rec).await.unwrap();
        rec.tenant = TenantId::new("t2").unwrap();
        store.put(&rec).await.unwrap();
        assert_eq!(store.lookup("ab").await.unwrap(), Some(rec));
        assert_eq!(store.lookup("cd").await.unwrap(), None);
    }
}

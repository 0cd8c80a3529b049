//! The embedded connection store: WebSocket connections and their job subscriptions, in
//! memory, with the same semantics as `DynamoConnectionStore`.
//!
//! One mutex guards the connections and the per-job subscriber sets together, so a
//! subscription is visible to `subscribers` the moment `subscribe` returns and `delete`
//! removes a connection from every job at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use ferry_core::JobId;
use ferry_core::ports::{Connection, ConnectionStore, StoreError};

use crate::lock;

/// Connections and subscriptions in memory.
#[derive(Debug, Default)]
pub struct MemoryConnectionStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    connections: HashMap<String, Connection>,
    /// The jobs each connection follows. Kept apart from the record so a re-`put` keeps
    /// them, as the DynamoDB store's update of the connection item does.
    subs: HashMap<String, BTreeSet<JobId>>,
    /// The connections following each job.
    conns: HashMap<JobId, BTreeSet<String>>,
}

impl MemoryConnectionStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of recorded connections, for tests and `ferry dev` diagnostics.
    pub fn len(&self) -> usize {
        lock(&self.inner).connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl ConnectionStore for MemoryConnectionStore {
    async fn put(&self, connection: &Connection) -> Result<(), StoreError> {
        lock(&self.inner).connections.insert(connection.id.clone(), connection.clone());
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Connection>, StoreError> {
        Ok(lock(&self.inner).connections.get(id).cloned())
    }

    async fn delete(&self, id: &str) -> Result<Vec<JobId>, StoreError> {
        let mut inner = lock(&self.inner);
        inner.connections.remove(id);
        let jobs = inner.subs.remove(id).unwrap_or_default();
        for job in &jobs {
            if let Some(conns) = inner.conns.get_mut(job) {
                conns.remove(id);
                if conns.is_empty() {
                    inner.conns.remove(job);
                }
            }
        }
        Ok(jobs.into_iter().collect())
    }

    async fn subscribe(&self, id: &str, job_id: &JobId) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        // Only a recorded connection can subscribe (DynamoDB: `attribute_exists(pk)` on
        // the connection item), so a subscribe racing with `delete` leaves nothing behind.
        if !inner.connections.contains_key(id) {
            return Err(StoreError::ConditionFailed { current: None });
        }
        inner.subs.entry(id.to_string()).or_default().insert(*job_id);
        inner.conns.entry(*job_id).or_default().insert(id.to_string());
        Ok(())
    }

    async fn unsubscribe(&self, id: &str, job_id: &JobId) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        if let Some(subs) = inner.subs.get_mut(id) {
            subs.remove(job_id);
            if subs.is_empty() {
                inner.subs.remove(id);
            }
        }
        if let Some(conns) = inner.conns.get_mut(job_id) {
            conns.remove(id);
            if conns.is_empty() {
                inner.conns.remove(job_id);
            }
        }
        Ok(())
    }

    async fn subscribers(&self, job_id: &JobId) -> Result<Vec<String>, StoreError> {
        Ok(lock(&self.inner).conns.get(job_id).map(|c| c.iter().cloned().collect()).unwrap_or_default())
    }
}

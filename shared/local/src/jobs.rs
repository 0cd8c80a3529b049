//! The embedded job store: DynamoDB's table, tenant index and idempotency items, in memory.
//!
//! One mutex guards jobs, the per-tenant index and the idempotency bindings together, so
//! a create (job + binding) is atomic exactly as the DynamoDB transaction is, and an
//! update's check and write cannot interleave with another's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use ferry_core::Millis;
use ferry_core::job::{Job, JobId, JobStatus, TenantId};
use ferry_core::ports::{
    Created, EventStore, Expected, IdempotencyRecord, JobChange, JobChanges, JobPage, JobStore, ListQuery, StoreError,
    is_append_batch,
};
use ferry_core::progress::ProgressEvent;

use crate::lock;

/// Jobs in memory, with the same conditional-write semantics as `DynamoJobStore`.
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// A B-tree, not a hash map: growing it never rehashes every job under the lock (a
    /// hash map stalled submits for tens of ms at each doubling in the benchmark).
    jobs: BTreeMap<JobId, Job>,
    /// The tenant index: ULIDs sort by creation time, so iterating backwards is newest first.
    by_tenant: HashMap<TenantId, BTreeSet<JobId>>,
    /// Idempotency bindings per (tenant, client key).
    idem: HashMap<(TenantId, String), IdempotencyRecord>,
    /// Progress events by (job, seq), under the same lock as the jobs so an append and
    /// its `last_seq` move are one atomic step, as the DynamoDB transaction is.
    events: BTreeMap<(JobId, u64), ProgressEvent>,
    /// Receivers of every job write, in write order: the embedded table's stream.
    watchers: Vec<tokio::sync::mpsc::UnboundedSender<JobChange>>,
}

impl Inner {
    /// Tells the watchers of a write of `new` over `old` (done under the lock, so they see
    /// writes in order).
    fn changed(&mut self, old: Option<&Job>, new: &Job) {
        if self.watchers.is_empty() {
            return;
        }
        let change = JobChange::between(old, new);
        self.watchers.retain(|w| w.send(change.clone()).is_ok());
    }
}

impl MemoryJobStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of jobs stored (every tenant), for tests and `ferry dev` diagnostics.
    pub fn len(&self) -> usize {
        lock(&self.inner).jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `create`, and `rebind` when `stale` is given: the binding may then also be taken
    /// over from `stale`.
    fn create_bound(
        &self,
        job: &Job,
        idem: Option<&IdempotencyRecord>,
        stale: Option<&JobId>,
    ) -> Result<Created, StoreError> {
        let mut inner = lock(&self.inner);
        // Validate everything before writing anything: the create is all-or-nothing.
        if let Some(rec) = idem {
            let slot = (rec.tenant.clone(), rec.key.clone());
            if let Some(existing) = inner.idem.get(&slot) {
                // An expired binding is replaced, as the DynamoDB condition
                // `attribute_not_exists(pk) OR expires_at < :created_at` allows; so is the
                // binding to `stale` (`OR job_id = :stale`).
                if existing.expires_at >= rec.created_at && Some(&existing.job_id) != stale {
                    return Ok(Created::Duplicate(existing.clone()));
                }
            }
        }
        if inner.jobs.contains_key(&job.id) {
            return Err(StoreError::AlreadyExists);
        }
        if let Some(rec) = idem {
            inner.idem.insert((rec.tenant.clone(), rec.key.clone()), rec.clone());
        }
        inner.by_tenant.entry(job.tenant.clone()).or_default().insert(job.id);
        inner.jobs.insert(job.id, job.clone());
        inner.changed(None, job);
        Ok(Created::New)
    }
}

#[async_trait]
impl JobStore for MemoryJobStore {
    /// Every job write from now on, in order, as DynamoDB's stream shows them on AWS (what
    /// `ferry dev` queues webhooks from).
    fn changes(&self) -> Option<JobChanges> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        lock(&self.inner).watchers.push(tx);
        Some(rx)
    }

    async fn create(&self, job: &Job, idem: Option<&IdempotencyRecord>) -> Result<Created, StoreError> {
        self.create_bound(job, idem, None)
    }

    async fn rebind(&self, job: &Job, idem: &IdempotencyRecord, stale: &JobId) -> Result<Created, StoreError> {
        self.create_bound(job, Some(idem), Some(stale))
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        Ok(lock(&self.inner).jobs.get(id).cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<JobPage, StoreError> {
        let inner = lock(&self.inner);
        let Some(ids) = inner.by_tenant.get(&query.tenant) else {
            return Ok(JobPage { jobs: Vec::new(), next: None });
        };
        let limit = query.limit.clamp(1, 100) as usize;
        let older = match query.after {
            Some(after) => ids.range(..after),
            None => ids.range(..),
        };
        let mut matching =
            older.rev().filter_map(|id| inner.jobs.get(id)).filter(|job| query.status.is_none_or(|s| job.status == s));
        let jobs: Vec<Job> = matching.by_ref().take(limit).cloned().collect();
        // Unlike DynamoDB we can look ahead, so `next` is only set when a further page
        // really has jobs (the port allows either).
        let next = if matching.next().is_some() { jobs.last().map(|j| j.id) } else { None };
        Ok(JobPage { jobs, next })
    }

    async fn active(&self, status: JobStatus, limit: u32, after: Option<JobId>) -> Result<JobPage, StoreError> {
        if status.is_terminal() {
            return Ok(JobPage { jobs: Vec::new(), next: None });
        }
        let inner = lock(&self.inner);
        let limit = limit.clamp(1, 100) as usize;
        let range = match after {
            Some(after) => inner.jobs.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => inner.jobs.range(..),
        };
        let mut matching = range.map(|(_, j)| j).filter(|j| j.status == status);
        let jobs: Vec<Job> = matching.by_ref().take(limit).cloned().collect();
        let next = if matching.next().is_some() { jobs.last().map(|j| j.id) } else { None };
        Ok(JobPage { jobs, next })
    }

    async fn update(&self, job: &Job, expected: Expected) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let watching = !inner.watchers.is_empty();
        let Some(stored) = inner.jobs.get_mut(&job.id) else {
            return Err(StoreError::ConditionFailed { current: None });
        };
        if stored.status != expected.status || stored.attempt != expected.attempt {
            return Err(StoreError::ConditionFailed { current: Some(Box::new(stored.clone())) });
        }
        let old = watching.then(|| stored.clone());
        write_lifecycle(stored, job);
        let new = stored.clone();
        inner.changed(old.as_ref(), &new);
        Ok(())
    }

    async fn update_with_events(
        &self,
        job: &Job,
        expected: Expected,
        expected_last_seq: u64,
        events: &[ProgressEvent],
        _retain_until: Millis,
    ) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let watching = !inner.watchers.is_empty();
        let Some(stored) = inner.jobs.get_mut(&job.id) else {
            return Err(StoreError::ConditionFailed { current: None });
        };
        let ok = stored.status == expected.status
            && stored.attempt == expected.attempt
            && stored.last_seq == expected_last_seq
            && is_append_batch(events, expected_last_seq)
            && events[0].job_id == job.id;
        if !ok {
            return Err(StoreError::ConditionFailed { current: Some(Box::new(stored.clone())) });
        }
        let old = watching.then(|| stored.clone());
        write_lifecycle(stored, job);
        stored.last_seq = events[events.len() - 1].seq;
        let new = stored.clone();
        for event in events {
            inner.events.insert((event.job_id, event.seq), event.clone());
        }
        inner.changed(old.as_ref(), &new);
        Ok(())
    }
}

/// Copies only the lifecycle fields: immutable fields and `last_seq` (owned by the progress
/// path) keep their stored values whatever `job` carries.
fn write_lifecycle(stored: &mut Job, job: &Job) {
    {
        stored.status = job.status;
        stored.attempt = job.attempt;
        stored.started_at = job.started_at;
        stored.finished_at = job.finished_at;
        stored.updated_at = job.updated_at;
        stored.cancel_requested_at = job.cancel_requested_at;
        stored.executor_id = job.executor_id.clone();
        stored.lease_until = job.lease_until;
        stored.output = job.output.clone();
        stored.output_object = job.output_object.clone();
        stored.error = job.error.clone();
        stored.retain_until = job.retain_until;
    }
}

#[async_trait]
impl EventStore for MemoryJobStore {
    async fn append(
        &self,
        events: &[ProgressEvent],
        expected_last_seq: u64,
        _retain_until: Millis,
    ) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let watching = !inner.watchers.is_empty();
        let Some(job_id) = events.first().map(|e| e.job_id) else {
            return Err(StoreError::ConditionFailed { current: None });
        };
        let Some(job) = inner.jobs.get_mut(&job_id) else {
            return Err(StoreError::ConditionFailed { current: None });
        };
        // A batch breaking the port's shape rules gets the stored job back like any other
        // mismatch, and nothing is written.
        if job.last_seq != expected_last_seq || !is_append_batch(events, expected_last_seq) {
            return Err(StoreError::ConditionFailed { current: Some(Box::new(job.clone())) });
        }
        let old = watching.then(|| job.clone());
        job.last_seq = events[events.len() - 1].seq;
        let new = job.clone();
        inner.changed(old.as_ref(), &new);
        // Events are not expired here: the embedded store keeps them as long as the job
        // (which it does not expire either).
        for event in events {
            inner.events.insert((event.job_id, event.seq), event.clone());
        }
        Ok(())
    }

    async fn read(
        &self,
        job_id: &JobId,
        after: u64,
        last_seq: u64,
        limit: u32,
    ) -> Result<Vec<ProgressEvent>, StoreError> {
        let window = ferry_core::progress::read_window(after, last_seq, limit);
        if window.is_empty() {
            return Ok(Vec::new());
        }
        let inner = lock(&self.inner);
        let range = (*job_id, *window.start())..=(*job_id, *window.end());
        Ok(inner.events.range(range).map(|(_, e)| e.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::job::JobStatus;

    fn job(tenant: &str, ts: u64) -> Job {
        Job {
            id: JobId::generate(ts),
            tenant: TenantId::new(tenant).unwrap(),
            model: "m".into(),
            input: ferry_core::input::JobInput::texts(["a"]).into(),
            timeout_s: 60,
            max_attempts: 3,
            created_at: ts,
            expires_at: ts + 1000,
            idempotency_key: None,
            webhook: None,
            status: JobStatus::Queued,
            attempt: 1,
            started_at: None,
            finished_at: None,
            updated_at: ts,
            cancel_requested_at: None,
            executor_id: None,
            lease_until: None,
            output: None,
            output_object: None,
            error: None,
            retain_until: ts + 10_000,
            last_seq: 0,
        }
    }

    fn idem(tenant: &str, key: &str, job_id: JobId, created_at: u64) -> IdempotencyRecord {
        IdempotencyRecord {
            tenant: TenantId::new(tenant).unwrap(),
            key: key.into(),
            request_hash: "h".into(),
            job_id,
            created_at,
            expires_at: created_at + 100,
        }
    }

    #[tokio::test]
    async fn duplicate_binding_writes_nothing() {
        let store = MemoryJobStore::new();
        let a = job("t", 1);
        let b = job("t", 2);
        let ra = idem("t", "k", a.id, 1);
        assert_eq!(store.create(&a, Some(&ra)).await.unwrap(), Created::New);
        let got = store.create(&b, Some(&idem("t", "k", b.id, 2))).await.unwrap();
        assert_eq!(got, Created::Duplicate(ra));
        assert_eq!(store.len(), 1);
        // Past expiry the key binds afresh.
        let c = job("t", 300);
        assert_eq!(store.create(&c, Some(&idem("t", "k", c.id, 300))).await.unwrap(), Created::New);
        assert_eq!(store.len(), 2);
    }

    #[tokio::test]
    async fn list_sets_next_only_when_more_match() {
        let store = MemoryJobStore::new();
        for ts in 1..=4 {
            store.create(&job("t", ts), None).await.unwrap();
        }
        let q = |after| ListQuery { tenant: TenantId::new("t").unwrap(), status: None, limit: 2, after };
        let p1 = store.list(&q(None)).await.unwrap();
        assert_eq!(p1.jobs.iter().map(|j| j.created_at).collect::<Vec<_>>(), [4, 3]);
        let p2 = store.list(&q(p1.next)).await.unwrap();
        assert_eq!(p2.jobs.iter().map(|j| j.created_at).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(p2.next, None);
    }

    #[tokio::test]
    async fn update_keeps_immutable_fields() {
        let store = MemoryJobStore::new();
        let original = job("t", 1);
        store.create(&original, None).await.unwrap();
        let mut changed = original.clone();
        changed.model = "other".into();
        changed.last_seq = 9;
        changed.status = JobStatus::Running;
        store.update(&changed, Expected { status: JobStatus::Queued, attempt: 1 }).await.unwrap();
        let stored = store.get(&original.id).await.unwrap().unwrap();
        assert_eq!((stored.model.as_str(), stored.last_seq, stored.status), ("m", 0, JobStatus::Running));
        let err = store.update(&changed, Expected { status: JobStatus::Queued, attempt: 1 }).await;
        assert!(matches!(err, Err(StoreError::ConditionFailed { current: Some(j) }) if j.status == JobStatus::Running));
    }
}

//! Jobs that explain themselves: where a job stands between submit and its first token
//! (`queue_state` in the job view), from the pool's dispatcher record and the executors'
//! heartbeats. Two small reads per job view; absent when the API has no fleet to ask.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::fleet::{ExecutorActivity, ExecutorRecord, PoolState, PoolStore};
use crate::job::rfc3339;
use crate::job::{Job, JobStatus, Millis};
use crate::pool::{PoolConfig, Pools};
use crate::ports::StoreError;

/// Where a job waits (or runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueStateKind {
    /// Queued with no executor coming for it yet: every executor is busy, the pool is at
    /// `max_tasks`, or launches are failing (the reason says which).
    WaitingForCapacity,
    /// An executor was launched for the pool and is starting.
    LaunchingExecutor,
    /// An executor took the job and is loading its model.
    LoadingModel,
    Running,
}

/// `queue_state` in the job view. Null for finished jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueState {
    pub state: QueueStateKind,
    /// Since when (RFC 3339).
    pub since: String,
    /// Why, in words (always set while waiting for capacity).
    pub reason: Option<String>,
    /// When the job is expected to start (RFC 3339), once known: a launch's start plus the
    /// pool's `cold_start_s`, or now when an idle executor is about to take it.
    pub estimated_start_at: Option<String>,
}

/// What the API needs to explain queued jobs: the pool configuration and the pool store.
#[derive(Clone)]
pub struct Fleet {
    pub pools: Pools,
    pub store: Arc<dyn PoolStore>,
}

impl Fleet {
    /// The queue state of `job` in `pool` at `now`, reading the pool's records.
    pub async fn queue_state(&self, job: &Job, pool: &str, now: Millis) -> Result<Option<QueueState>, StoreError> {
        if job.status.is_terminal() {
            return Ok(None);
        }
        let default = PoolConfig::named(pool);
        let cfg = self.pools.get(pool).unwrap_or(&default);
        let state = if job.status == JobStatus::Queued { self.store.pool_state(pool).await? } else { None };
        let executors = self.store.executors(pool).await?;
        Ok(explain(job, cfg, state.as_ref(), &executors, now))
    }
}

/// The pure part of [`Fleet::queue_state`].
pub fn explain(
    job: &Job,
    cfg: &PoolConfig,
    state: Option<&PoolState>,
    executors: &[ExecutorRecord],
    now: Millis,
) -> Option<QueueState> {
    let live: Vec<&ExecutorRecord> = executors.iter().filter(|e| e.is_live(now)).collect();
    let at = |s: QueueStateKind, since: Millis, reason: Option<String>, eta: Option<Millis>| {
        Some(QueueState { state: s, since: rfc3339(since), reason, estimated_start_at: eta.map(rfc3339) })
    };
    match job.status {
        JobStatus::Running | JobStatus::Cancelling => {
            let mine = job.executor_id.as_deref().and_then(|id| live.iter().find(|e| e.id == id));
            match mine {
                Some(e) if e.activity == ExecutorActivity::LoadingModel => {
                    at(QueueStateKind::LoadingModel, e.since, e.model.as_ref().map(|m| format!("loading {m}")), None)
                }
                _ => at(QueueStateKind::Running, job.started_at.unwrap_or(job.updated_at), None, None),
            }
        }
        JobStatus::Queued => {
            let waiting_since = job.updated_at.max(job.created_at);
            if let Some(s) = state.filter(|s| s.failures > 0) {
                let retry = s.backoff_until.filter(|t| *t > now).map(|t| format!("; next try at {}", rfc3339(t)));
                let reason = format!(
                    "launching an executor failed {} time(s): {}{}",
                    s.failures,
                    s.last_error.as_deref().unwrap_or("unknown error"),
                    retry.unwrap_or_default()
                );
                return at(
                    QueueStateKind::WaitingForCapacity,
                    s.last_error_at.unwrap_or(waiting_since),
                    Some(reason),
                    None,
                );
            }
            if let Some(since) = state.and_then(|s| s.launching_since) {
                let eta = cfg.cold_start_s.map(|c| since + (c * 1000.0) as u64).map(|t| t.max(now));
                return at(QueueStateKind::LaunchingExecutor, since, None, eta);
            }
            let idle = live.iter().filter(|e| e.activity == ExecutorActivity::Idle).count();
            let reason = if idle > 0 {
                format!("{idle} idle executor(s) will take it shortly")
            } else if live.len() as u32 >= cfg.max_tasks {
                format!("all {} executors of pool {} are busy (max_tasks {})", live.len(), cfg.name, cfg.max_tasks)
            } else if live.is_empty() {
                format!("pool {} has no executor; waiting for the dispatcher to launch one", cfg.name)
            } else {
                format!("{} executor(s) of pool {} are busy; waiting for the dispatcher", live.len(), cfg.name)
            };
            at(QueueStateKind::WaitingForCapacity, waiting_since, Some(reason), (idle > 0).then_some(now))
        }
        _ => None,
    }
}

//! The dispatcher: per pool, compares the backlog with the executors that exist and
//! launches the difference. Level-triggered and idempotent: it reads the whole situation
//! every time (queue depth, the launcher's task list, its own recent launches), so a
//! missed or repeated trigger does no harm. Called by the dispatcher Lambda (on the jobs
//! table's stream and every minute) and by `ferry dev`'s reconcile loop.
//!
//! Launches spend a budget guarded by a compare-and-set on the pool's [`PoolState`]: a
//! dispatcher first records "I am launching N" (the reservation), and only then calls
//! RunTask. A concurrent dispatcher either sees the reservation and counts it as running,
//! or loses the write and starts over. A task the launcher does not list yet (ECS lists are
//! eventually consistent) stays counted through its launch record for [`LAUNCH_MEMORY_MS`].

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::fleet::{
    ExecutorActivity, ExecutorRecord, ExecutorTask, LaunchError, LaunchRecord, Launcher, PoolState, PoolStore,
    TaskState,
};
use crate::job::Millis;
use crate::pool::{PoolConfig, Pools};
use crate::ports::{Clock, QueueDepth, QueueError, Queues, StoreError};

/// How long a launch is counted while the launcher does not list its task.
pub const LAUNCH_MEMORY_MS: u64 = 60_000;
/// ECS RunTask starts at most 10 tasks per call.
pub const MAX_PER_CALL: u32 = 10;
/// First backoff after a failed launch; doubles per failure up to [`MAX_BACKOFF_MS`].
pub const BASE_BACKOFF_MS: u64 = 5_000;
pub const MAX_BACKOFF_MS: u64 = 300_000;

/// Why a pool could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("unknown pool {0:?}")]
    UnknownPool(String),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("launcher: {0}")]
    Launcher(#[from] LaunchError),
    #[error("gave up after {0} lost races for the pool record")]
    Contended(u32),
}

/// The backlog of a pool, as the queue reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Backlog {
    pub visible: u64,
    pub in_flight: u64,
}

/// A pool as `GET /v1/pools` shows it and as one reconcile left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolView {
    pub name: String,
    /// Executors the backlog calls for: min(max_tasks, max(min_warm, ceil(backlog / jobs_per_task))).
    pub desired: u32,
    /// Tasks running (ECS RUNNING, or live local processes).
    pub running: u32,
    /// Tasks placed but not running yet, and launches not listed yet.
    pub pending: u32,
    /// Running executors with nothing to do (by their heartbeat).
    pub idle: u32,
    pub busy: u32,
    pub loading_model: u32,
    pub backlog: Backlog,
    pub min_warm: u32,
    pub max_tasks: u32,
    pub jobs_per_task: u32,
    pub idle_timeout_s: u64,
    /// Executors this reconcile started (0 for a read-only view).
    pub launched: u32,
    /// Since when a launched executor has been awaited (RFC 3339), null when none is.
    pub launching_since: Option<String>,
    /// The latest launch failure, while launches keep failing.
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// No launch is tried before this (RFC 3339).
    pub backoff_until: Option<String>,
}

/// `GET /v1/pools`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}

/// The dispatcher over its ports. Built by [`crate::root::Root::dispatcher`].
#[derive(Clone)]
pub struct Dispatcher {
    pub pools: Pools,
    pub queues: Queues,
    pub store: Arc<dyn PoolStore>,
    pub launcher: Arc<dyn Launcher>,
    pub clock: Arc<dyn Clock>,
}

/// What a dispatcher reads of a pool before deciding.
struct Snapshot {
    depth: QueueDepth,
    tasks: Vec<ExecutorTask>,
    executors: Vec<ExecutorRecord>,
    state: Option<PoolState>,
}

impl Dispatcher {
    /// Reconciles every pool; one pool's failure does not stop the others.
    pub async fn reconcile_all(&self) -> Vec<(String, Result<PoolView, DispatchError>)> {
        let mut out = Vec::new();
        for name in self.pools.names() {
            let r = self.reconcile(&name).await;
            if let Err(e) = &r {
                tracing::error!(pool = %name, error = %e, "reconcile failed");
            }
            out.push((name, r));
        }
        out
    }

    /// The pools as they are, without launching anything (`GET /v1/pools`).
    pub async fn views(&self) -> Result<PoolList, DispatchError> {
        let mut pools = Vec::new();
        for cfg in self.pools.iter() {
            // One pool that cannot be read (a pool with no ECS settings, a throttled call)
            // shows its error; the others are still shown.
            match self.snapshot(cfg).await {
                Ok(snap) => pools.push(self.view(cfg, &snap, 0, self.clock.now())),
                Err(e) => {
                    tracing::warn!(pool = %cfg.name, error = %e, "cannot read the pool");
                    let empty =
                        Snapshot { depth: QueueDepth::default(), tasks: vec![], executors: vec![], state: None };
                    let mut view = self.view(cfg, &empty, 0, self.clock.now());
                    view.last_error =
                        Some("cannot read the pool's state right now (the API's log has the cause)".into());
                    pools.push(view);
                }
            }
        }
        Ok(PoolList { pools })
    }

    fn config(&self, pool: &str) -> Result<&PoolConfig, DispatchError> {
        self.pools.get(pool).ok_or_else(|| DispatchError::UnknownPool(pool.into()))
    }

    async fn snapshot(&self, cfg: &PoolConfig) -> Result<Snapshot, DispatchError> {
        let depth = self.queues.for_pool(&cfg.name).depth().await?;
        let tasks = self.launcher.list(cfg).await?;
        let executors = self.store.executors(&cfg.name).await?;
        let state = self.store.pool_state(&cfg.name).await?;
        Ok(Snapshot { depth, tasks, executors, state })
    }

    /// One reconcile of one pool: launch what the backlog calls for, within the budget.
    pub async fn reconcile(&self, pool: &str) -> Result<PoolView, DispatchError> {
        let cfg = self.config(pool)?;
        const ROUNDS: u32 = 5;
        for _ in 0..ROUNDS {
            let snap = self.snapshot(cfg).await?;
            let now = self.clock.now();
            let expected = snap.state.as_ref().map(|s| s.version);
            let mut next = snap.state.clone().unwrap_or_else(|| PoolState::empty(pool));
            let counted = count(&snap.tasks, &mut next, now);
            let desired = cfg.desired(snap.depth.visible + snap.depth.in_flight);
            let need = desired.saturating_sub(counted.total());
            let backing_off = next.backoff_until.is_some_and(|t| t > now);
            if counted.pending == 0 && counted.unlisted == 0 {
                next.launching_since = None;
            }
            if need == 0 || backing_off {
                if Some(&next) != snap.state.as_ref() && (snap.state.is_some() || next != PoolState::empty(pool)) {
                    next.version = expected.unwrap_or(0) + 1;
                    next.updated_at = now;
                    // Housekeeping only: losing this race is harmless.
                    let _ = self.store.put_pool_state(&next, expected).await;
                }
                return Ok(self.view(cfg, &Snapshot { state: Some(next), ..snap }, 0, now));
            }
            // Reserve the launch before making it.
            let token = crate::job::JobId::generate(now).to_string();
            next.launches.push(LaunchRecord {
                token: token.clone(),
                at: now,
                count: need,
                task_ids: vec![],
                settled: false,
            });
            next.launching_since.get_or_insert(now);
            next.version = expected.unwrap_or(0) + 1;
            next.updated_at = now;
            match self.store.put_pool_state(&next, expected).await {
                Ok(()) => {}
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
            let (ids, failure) = self.launch(cfg, need).await;
            tracing::info!(
                pool,
                desired,
                counted = counted.total(),
                need,
                launched = ids.len(),
                ?failure,
                "reconciled"
            );
            let state = self.settle(pool, &token, &ids, failure).await?;
            let launched = ids.len() as u32;
            return Ok(self.view(cfg, &Snapshot { state: Some(state), ..snap }, launched, self.clock.now()));
        }
        Err(DispatchError::Contended(ROUNDS))
    }

    /// Starts `need` tasks in calls of at most ten; stops at the first failing call.
    async fn launch(&self, cfg: &PoolConfig, need: u32) -> (Vec<String>, Option<String>) {
        let mut ids = Vec::new();
        let mut left = need;
        while left > 0 {
            let n = left.min(MAX_PER_CALL);
            match self.launcher.launch(cfg, n).await {
                Ok(l) => {
                    let short = l.task_ids.len() < n as usize;
                    ids.extend(l.task_ids);
                    if short {
                        let why =
                            if l.failures.is_empty() { "fewer tasks started".into() } else { l.failures.join("; ") };
                        return (ids, Some(why));
                    }
                }
                Err(e) => return (ids, Some(e.to_string())),
            }
            left -= n;
        }
        (ids, None)
    }

    /// Replaces the reservation with what was launched, recording a failure and its backoff.
    async fn settle(
        &self,
        pool: &str,
        token: &str,
        ids: &[String],
        failure: Option<String>,
    ) -> Result<PoolState, DispatchError> {
        for _ in 0..10 {
            let now = self.clock.now();
            let current = self.store.pool_state(pool).await?;
            let expected = current.as_ref().map(|s| s.version);
            let mut next = current.unwrap_or_else(|| PoolState::empty(pool));
            next.launches.retain(|l| l.token != token);
            if !ids.is_empty() {
                next.launches.push(LaunchRecord {
                    token: token.into(),
                    at: now,
                    count: ids.len() as u32,
                    task_ids: ids.to_vec(),
                    settled: true,
                });
            }
            match &failure {
                Some(why) => {
                    next.failures += 1;
                    // The pool record is shown to tenants (GET /v1/pools, queue_state): the
                    // cause in words, without ARNs or account ids; the log has it whole.
                    next.last_error = Some(crate::error::redact(why));
                    next.last_error_at = Some(now);
                    let backoff = (BASE_BACKOFF_MS << (next.failures - 1).min(10)).min(MAX_BACKOFF_MS);
                    next.backoff_until = Some(now + backoff);
                    tracing::warn!(pool, error = %why, failures = next.failures, backoff_ms = backoff, "launch failed");
                }
                None => {
                    next.failures = 0;
                    next.last_error = None;
                    next.backoff_until = None;
                }
            }
            if next.launches.is_empty() {
                next.launching_since = None;
            }
            next.version = expected.unwrap_or(0) + 1;
            next.updated_at = now;
            match self.store.put_pool_state(&next, expected).await {
                Ok(()) => return Ok(next),
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(DispatchError::Contended(10))
    }

    fn view(&self, cfg: &PoolConfig, snap: &Snapshot, launched: u32, now: Millis) -> PoolView {
        let mut state = snap.state.clone().unwrap_or_else(|| PoolState::empty(&cfg.name));
        let counted = count(&snap.tasks, &mut state, now);
        let live: Vec<&ExecutorRecord> = snap.executors.iter().filter(|e| e.is_live(now)).collect();
        let by = |a: ExecutorActivity| live.iter().filter(|e| e.activity == a).count() as u32;
        PoolView {
            name: cfg.name.clone(),
            desired: cfg.desired(snap.depth.visible + snap.depth.in_flight),
            running: counted.running,
            pending: counted.pending + counted.unlisted,
            idle: by(ExecutorActivity::Idle),
            busy: by(ExecutorActivity::Busy),
            loading_model: by(ExecutorActivity::LoadingModel),
            backlog: Backlog { visible: snap.depth.visible, in_flight: snap.depth.in_flight },
            min_warm: cfg.min_warm,
            max_tasks: cfg.max_tasks,
            jobs_per_task: cfg.jobs_per_task(),
            idle_timeout_s: cfg.idle_timeout_s,
            launched,
            launching_since: state.launching_since.map(crate::job::rfc3339),
            last_error: if state.failures > 0 { state.last_error.clone() } else { None },
            consecutive_failures: state.failures,
            backoff_until: state.backoff_until.filter(|t| *t > now).map(crate::job::rfc3339),
        }
    }
}

impl PoolState {
    /// The record of a pool nothing was written for.
    pub fn empty(pool: &str) -> Self {
        PoolState { pool: pool.into(), ..Default::default() }
    }
}

/// The executors a pool has, by where they are.
#[derive(Debug, Clone, Copy, Default)]
struct Counted {
    running: u32,
    pending: u32,
    /// Launched (or being launched) but not listed yet.
    unlisted: u32,
}

impl Counted {
    fn total(&self) -> u32 {
        self.running + self.pending + self.unlisted
    }
}

/// Counts the listed tasks and the recent launches not listed yet, and forgets launches
/// that are listed or too old to matter.
fn count(tasks: &[ExecutorTask], state: &mut PoolState, now: Millis) -> Counted {
    let listed: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    let mut c = Counted::default();
    for t in tasks {
        match t.state {
            TaskState::Running => c.running += 1,
            TaskState::Pending => c.pending += 1,
        }
    }
    state.launches.retain(|l| now.saturating_sub(l.at) < LAUNCH_MEMORY_MS);
    for l in &mut state.launches {
        if l.settled {
            l.task_ids.retain(|id| !listed.contains(id.as_str()));
            c.unlisted += l.task_ids.len() as u32;
        } else {
            c.unlisted += l.count;
        }
    }
    // A settled launch whose tasks are all listed is counted by the list from now on.
    state.launches.retain(|l| !l.settled || !l.task_ids.is_empty());
    c
}

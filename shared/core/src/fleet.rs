//! Ports of the executor fleet: the launcher (ECS RunTask, or local processes under
//! `ferry dev`) and the pool store (the dispatcher's launch budget and the executors'
//! heartbeats). Adapters: `ferry-aws` (ECS, DynamoDB) and `ferry-local` (in-process), held
//! to the same behaviour by the conformance suite.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::job::Millis;
use crate::pool::PoolConfig;
use crate::ports::StoreError;

/// Where a launched executor task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Placed but not yet running (ECS PROVISIONING, PENDING, ACTIVATING).
    Pending,
    Running,
}

/// One executor task the launcher knows about (not stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorTask {
    /// The ECS task ARN, or the local process's executor id. Executors use it as their
    /// executor id, so the job record names the task to stop.
    pub id: String,
    pub state: TaskState,
}

/// What one launch call did. ECS may start some tasks and report failures for others.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Launched {
    pub task_ids: Vec<String>,
    /// Why the rest were not started (ECS `failures[].reason`).
    pub failures: Vec<String>,
}

/// Why the launcher could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// No capacity to place the task (no instance in the GPU Auto Scaling group yet,
    /// Fargate capacity unavailable): retried with backoff.
    #[error("no capacity: {0}")]
    NoCapacity(String),
    #[error("throttled: {0}")]
    Throttled(String),
    /// The pool is configured in a way the launcher cannot use.
    #[error("misconfigured: {0}")]
    Misconfigured(String),
    #[error("launch failed: {0}")]
    Failed(String),
}

/// Starts, lists and stops a pool's executor tasks.
#[async_trait]
pub trait Launcher: Send + Sync {
    /// Starts up to `count` executors (the caller keeps `count` within ECS's 10 per call).
    async fn launch(&self, pool: &PoolConfig, count: u32) -> Result<Launched, LaunchError>;
    /// The pool's tasks that are pending or running.
    async fn list(&self, pool: &PoolConfig) -> Result<Vec<ExecutorTask>, LaunchError>;
    /// Stops a task (ECS StopTask, or SIGKILL locally). Unknown or stopped tasks are not
    /// an error.
    async fn stop(&self, pool: &PoolConfig, task_id: &str, reason: &str) -> Result<(), LaunchError>;
}

/// The launcher of processes that launch nothing (executors, the `ws` Lambda, tests of
/// other things): no tasks; launching or stopping one is an error.
pub struct NoLauncher;

#[async_trait]
impl Launcher for NoLauncher {
    async fn launch(&self, _: &PoolConfig, _: u32) -> Result<Launched, LaunchError> {
        Err(LaunchError::Misconfigured("this process launches no executors".into()))
    }
    async fn list(&self, _: &PoolConfig) -> Result<Vec<ExecutorTask>, LaunchError> {
        Ok(vec![])
    }
    async fn stop(&self, _: &PoolConfig, _: &str, _: &str) -> Result<(), LaunchError> {
        Err(LaunchError::Misconfigured("this process stops no executors".into()))
    }
}

/// One launch the dispatcher reserved (and then made), so a task that ECS does not list yet
/// is still counted and a concurrent dispatcher does not launch it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRecord {
    /// Tells this dispatcher's reservation from a concurrent one's.
    pub token: String,
    pub at: Millis,
    /// How many tasks were reserved (before RunTask answered) or started (after).
    pub count: u32,
    /// The started tasks not listed by the launcher yet (once `settled`).
    #[serde(default)]
    pub task_ids: Vec<String>,
    /// False while RunTask has not answered: then `count` tasks are counted as launching.
    #[serde(default)]
    pub settled: bool,
}

/// The dispatcher's record of a pool: its launch budget and launch failures. Written with a
/// compare-and-set on `version`, so two dispatchers never spend the same budget twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PoolState {
    pub pool: String,
    /// Starts at 1 when first written; each write adds one.
    pub version: u64,
    /// Recent launches (pruned once ECS lists their tasks or they are older than a few minutes).
    #[serde(default)]
    pub launches: Vec<LaunchRecord>,
    /// Consecutive failed launches; 0 after a success.
    #[serde(default)]
    pub failures: u32,
    pub last_error: Option<String>,
    pub last_error_at: Option<Millis>,
    /// No launch is tried before this (exponential backoff after failures).
    pub backoff_until: Option<Millis>,
    /// Since when the pool has been waiting for a launched executor to come up.
    pub launching_since: Option<Millis>,
    pub updated_at: Millis,
}

/// What an executor is doing, as it last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorActivity {
    Idle,
    LoadingModel,
    Busy,
}

/// An executor's heartbeat: written when it starts, when its activity changes and every
/// [`HEARTBEAT_MS`]; deleted when it exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorRecord {
    pub id: String,
    pub pool: String,
    pub activity: ExecutorActivity,
    /// Since when it has been doing that.
    pub since: Millis,
    /// The model being loaded or run, if any.
    pub model: Option<String>,
    pub running_jobs: u32,
    pub started_at: Millis,
    pub seen_at: Millis,
}

/// How often executors write their heartbeat.
pub const HEARTBEAT_MS: u64 = 10_000;

impl ExecutorRecord {
    /// Whether the heartbeat is recent enough to trust (three missed beats and it is not).
    pub fn is_live(&self, now: Millis) -> bool {
        now.saturating_sub(self.seen_at) < 3 * HEARTBEAT_MS
    }
}

/// The dispatcher's pool records and the executors' heartbeats.
#[async_trait]
pub trait PoolStore: Send + Sync {
    async fn pool_state(&self, pool: &str) -> Result<Option<PoolState>, StoreError>;

    /// Writes `state` if the stored version is `expected` (None: no record yet). The caller
    /// sets `state.version` to `expected + 1`. On a mismatch nothing is written and the result
    /// is `ConditionFailed { current: None }`.
    async fn put_pool_state(&self, state: &PoolState, expected: Option<u64>) -> Result<(), StoreError>;

    /// Records (or replaces) an executor's heartbeat.
    async fn put_executor(&self, record: &ExecutorRecord) -> Result<(), StoreError>;

    /// A pool's executor records, stale ones included (callers check [`ExecutorRecord::is_live`]).
    async fn executors(&self, pool: &str) -> Result<Vec<ExecutorRecord>, StoreError>;

    /// Removes an executor's record; unknown ids are not an error.
    async fn delete_executor(&self, id: &str) -> Result<(), StoreError>;
}

//! The fleet ports in memory: the pool store (the dispatcher's compare-and-set record and
//! the executors' heartbeats, as `DynamoJobStore` keeps them) and a launcher that only
//! records what it was asked, for tests of the dispatcher and the watchdog.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ferry_core::fleet::{
    ExecutorRecord, ExecutorTask, LaunchError, Launched, Launcher, PoolState, PoolStore, TaskState,
};
use ferry_core::pool::PoolConfig;
use ferry_core::ports::StoreError;

use crate::lock;

/// Pool records and executor heartbeats in memory.
#[derive(Debug, Default)]
pub struct MemoryPoolStore {
    inner: Mutex<(BTreeMap<String, PoolState>, BTreeMap<String, ExecutorRecord>)>,
}

impl MemoryPoolStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PoolStore for MemoryPoolStore {
    async fn pool_state(&self, pool: &str) -> Result<Option<PoolState>, StoreError> {
        Ok(lock(&self.inner).0.get(pool).cloned())
    }

    async fn put_pool_state(&self, state: &PoolState, expected: Option<u64>) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        if inner.0.get(&state.pool).map(|s| s.version) != expected {
            return Err(StoreError::ConditionFailed { current: None });
        }
        inner.0.insert(state.pool.clone(), state.clone());
        Ok(())
    }

    async fn put_executor(&self, record: &ExecutorRecord) -> Result<(), StoreError> {
        lock(&self.inner).1.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn executors(&self, pool: &str) -> Result<Vec<ExecutorRecord>, StoreError> {
        Ok(lock(&self.inner).1.values().filter(|e| e.pool == pool).cloned().collect())
    }

    async fn delete_executor(&self, id: &str) -> Result<(), StoreError> {
        lock(&self.inner).1.remove(id);
        Ok(())
    }
}

/// A launcher whose tasks are entries in a list: `launch` adds pending tasks (up to
/// `capacity`, the rest reported as failures), `stop` removes them. Tests move tasks to
/// running, end them, or make launches fail.
#[derive(Debug, Default)]
pub struct MemoryLauncher {
    inner: Mutex<LauncherState>,
}

#[derive(Debug, Default)]
struct LauncherState {
    /// pool -> tasks
    tasks: BTreeMap<String, Vec<ExecutorTask>>,
    next: u64,
    /// Tasks that may still be placed; None is unlimited.
    capacity: Option<u32>,
    /// Every launch call: (pool, count asked).
    calls: Vec<(String, u32)>,
    stopped: Vec<(String, String)>,
    fail_with: Option<LaunchError>,
}

impl MemoryLauncher {
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `n` more tasks will be placed; the rest fail with "RESOURCE:GPU".
    pub fn set_capacity(&self, n: Option<u32>) {
        lock(&self.inner).capacity = n;
    }

    /// Every launch call fails with `e` until cleared.
    pub fn fail_with(&self, e: Option<LaunchError>) {
        lock(&self.inner).fail_with = e;
    }

    /// The pool's current tasks.
    pub fn tasks(&self, pool: &str) -> Vec<ExecutorTask> {
        lock(&self.inner).tasks.get(pool).cloned().unwrap_or_default()
    }

    /// Marks every pending task of the pool running.
    pub fn start_all(&self, pool: &str) {
        if let Some(ts) = lock(&self.inner).tasks.get_mut(pool) {
            ts.iter_mut().for_each(|t| t.state = TaskState::Running);
        }
    }

    /// Removes a task as if it exited.
    pub fn end(&self, pool: &str, id: &str) {
        if let Some(ts) = lock(&self.inner).tasks.get_mut(pool) {
            ts.retain(|t| t.id != id);
        }
    }

    /// Tasks started in total, across calls.
    pub fn launched(&self) -> u32 {
        lock(&self.inner).next as u32
    }

    pub fn calls(&self) -> Vec<(String, u32)> {
        lock(&self.inner).calls.clone()
    }

    /// (pool, task id) of every stop.
    pub fn stopped(&self) -> Vec<(String, String)> {
        lock(&self.inner).stopped.clone()
    }
}

#[async_trait]
impl Launcher for MemoryLauncher {
    async fn launch(&self, pool: &PoolConfig, count: u32) -> Result<Launched, LaunchError> {
        let mut s = lock(&self.inner);
        s.calls.push((pool.name.clone(), count));
        if let Some(e) = &s.fail_with {
            return Err(e.clone());
        }
        let mut out = Launched::default();
        for _ in 0..count {
            if s.capacity == Some(0) {
                out.failures.push("RESOURCE:GPU".into());
                continue;
            }
            if let Some(c) = s.capacity.as_mut() {
                *c -= 1;
            }
            s.next += 1;
            let id = format!("task-{}-{}", pool.name, s.next);
            s.tasks
                .entry(pool.name.clone())
                .or_default()
                .push(ExecutorTask { id: id.clone(), state: TaskState::Pending });
            out.task_ids.push(id);
        }
        Ok(out)
    }

    async fn list(&self, pool: &PoolConfig) -> Result<Vec<ExecutorTask>, LaunchError> {
        Ok(self.tasks(&pool.name))
    }

    async fn stop(&self, pool: &PoolConfig, task_id: &str, _reason: &str) -> Result<(), LaunchError> {
        let mut s = lock(&self.inner);
        s.stopped.push((pool.name.clone(), task_id.to_string()));
        if let Some(ts) = s.tasks.get_mut(&pool.name) {
            ts.retain(|t| t.id != task_id);
        }
        Ok(())
    }
}

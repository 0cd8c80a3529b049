//! `ferry dev`'s launcher: each executor the dispatcher asks for is a real `ferry-executor`
//! process (the binary beside `ferry`, else `ferry executor`), started with the pool's
//! environment, exiting by itself after its idle timeout. The same reconcile logic as on
//! AWS decides how many run; this only replaces ECS RunTask, ListTasks and StopTask.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use async_trait::async_trait;
use ferry_core::fleet::{ExecutorTask, LaunchError, Launched, Launcher, TaskState};
use ferry_core::pool::PoolConfig;
use tokio::process::{Child, Command};

/// One running executor process.
struct Proc {
    id: String,
    child: Child,
}

/// Starts executor processes; kills what is left of them when dropped.
pub struct ProcessLauncher {
    /// The program and the arguments before the executor's own (`ferry executor`).
    program: (PathBuf, Vec<String>),
    /// Environment for every executor (stack URL and token, catalog, Management endpoint).
    env: Vec<(String, String)>,
    /// Per-pool environment (the AWS backend's queue URL for each pool).
    pool_env: BTreeMap<String, Vec<(String, String)>>,
    /// Where each executor's log goes (`<id>.log`).
    log_dir: PathBuf,
    procs: Mutex<BTreeMap<String, Vec<Proc>>>,
}

impl ProcessLauncher {
    pub fn new(program: (PathBuf, Vec<String>), env: Vec<(String, String)>, log_dir: PathBuf) -> Self {
        ProcessLauncher { program, env, pool_env: BTreeMap::new(), log_dir, procs: Mutex::new(BTreeMap::new()) }
    }

    /// Adds environment for one pool's executors.
    pub fn with_pool_env(mut self, pool: &str, env: Vec<(String, String)>) -> Self {
        self.pool_env.insert(pool.to_string(), env);
        self
    }

    /// The executor program: `FERRY_EXECUTOR_BIN`, else `ferry-executor` beside this
    /// binary, else this binary's `executor` subcommand (same code, always present).
    pub fn find_program() -> (PathBuf, Vec<String>) {
        if let Some(bin) = std::env::var_os("FERRY_EXECUTOR_BIN") {
            return (PathBuf::from(bin), vec![]);
        }
        let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ferry"));
        let beside = me.with_file_name("ferry-executor");
        if beside.is_file() {
            return (beside, vec![]);
        }
        (me, vec!["executor".into()])
    }

    /// SIGTERM to every executor (they release their jobs), then SIGKILL to those still
    /// running after `grace`.
    pub async fn terminate_all(&self, grace: std::time::Duration) {
        let pids: Vec<u32> = {
            let mut procs = self.procs.lock().unwrap();
            reap(&mut procs);
            procs.values().flatten().filter_map(|p| p.child.id()).collect()
        };
        if pids.is_empty() {
            return;
        }
        for pid in &pids {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            let done = {
                let mut procs = self.procs.lock().unwrap();
                reap(&mut procs);
                procs.values().all(|l| l.is_empty())
            };
            if done {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for list in self.procs.lock().unwrap().values_mut() {
            for p in list.iter_mut() {
                let _ = p.child.start_kill();
            }
        }
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Process ids of the running executors of `pool` (for tests that kill them).
    pub fn pids(&self, pool: &str) -> Vec<(String, u32)> {
        let mut procs = self.procs.lock().unwrap();
        reap(&mut procs);
        procs
            .get(pool)
            .map(|ps| ps.iter().filter_map(|p| Some((p.id.clone(), p.child.id()?))).collect())
            .unwrap_or_default()
    }
}

/// Forgets processes that exited.
fn reap(procs: &mut BTreeMap<String, Vec<Proc>>) {
    for list in procs.values_mut() {
        list.retain_mut(|p| match p.child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                tracing::info!(executor = %p.id, %status, "executor exited");
                false
            }
            Err(_) => false,
        });
    }
}

#[async_trait]
impl Launcher for ProcessLauncher {
    async fn launch(&self, pool: &PoolConfig, count: u32) -> Result<Launched, LaunchError> {
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| LaunchError::Failed(format!("creating {}: {e}", self.log_dir.display())))?;
        let mut out = Launched::default();
        for _ in 0..count {
            let id = format!("local-{}-{}", pool.name, ulid::Ulid::new().to_string().to_ascii_lowercase());
            let log_path = self.log_dir.join(format!("{id}.log"));
            let log = std::fs::File::create(&log_path)
                .map_err(|e| LaunchError::Failed(format!("creating {}: {e}", log_path.display())))?;
            let log_err = log.try_clone().map_err(|e| LaunchError::Failed(e.to_string()))?;
            let mut cmd = Command::new(&self.program.0);
            cmd.args(&self.program.1)
                .envs(self.env.iter().cloned())
                .envs(self.pool_env.get(&pool.name).into_iter().flatten().cloned())
                .env("FERRY_POOL", &pool.name)
                .env("FERRY_EXECUTOR_ID", &id)
                .env("FERRY_IDLE_TIMEOUT_S", pool.idle_timeout_s.to_string())
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .kill_on_drop(true);
            match cmd.spawn() {
                Ok(child) => {
                    tracing::info!(executor = %id, pool = %pool.name, log = %log_path.display(), "executor started");
                    self.procs
                        .lock()
                        .unwrap()
                        .entry(pool.name.clone())
                        .or_default()
                        .push(Proc { id: id.clone(), child });
                    out.task_ids.push(id);
                }
                Err(e) => out.failures.push(format!("{}: {e}", self.program.0.display())),
            }
        }
        Ok(out)
    }

    async fn list(&self, pool: &PoolConfig) -> Result<Vec<ExecutorTask>, LaunchError> {
        let mut procs = self.procs.lock().unwrap();
        reap(&mut procs);
        Ok(procs
            .get(&pool.name)
            .map(|ps| ps.iter().map(|p| ExecutorTask { id: p.id.clone(), state: TaskState::Running }).collect())
            .unwrap_or_default())
    }

    async fn stop(&self, pool: &PoolConfig, task_id: &str, reason: &str) -> Result<(), LaunchError> {
        let mut procs = self.procs.lock().unwrap();
        if let Some(list) = procs.get_mut(&pool.name)
            && let Some(p) = list.iter_mut().find(|p| p.id == task_id)
        {
            tracing::warn!(executor = %task_id, reason, "stopping executor");
            let _ = p.child.start_kill();
        }
        Ok(())
    }
}

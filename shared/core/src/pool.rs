//! Executor pools: how many executors each pool may run and how they are launched. The
//! pool configuration is data (`FERRY_POOLS` inline JSON or `FERRY_POOLS_FILE`), read by
//! the dispatcher, the API (for `GET /v1/pools`) and `ferry cost`. Pools named by the
//! catalog but absent from the configuration get [`PoolConfig::named`]'s defaults.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::catalog::Catalog;

/// One capacity provider of a pool's strategy (ECS `capacityProviderStrategy` item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacityProvider {
    /// `FARGATE`, `FARGATE_SPOT`, or the name of an EC2 Auto Scaling group provider.
    pub name: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub base: u32,
}

fn one() -> u32 {
    1
}

/// How the ECS launcher starts a pool's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EcsLaunch {
    pub cluster: String,
    /// Family, `family:revision` or ARN.
    pub task_definition: String,
    /// The executor's container name in the task definition (for env overrides).
    #[serde(default = "default_container")]
    pub container: String,
    #[serde(default)]
    pub capacity_providers: Vec<CapacityProvider>,
    /// awsvpc networking (Fargate): subnets and security groups.
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub assign_public_ip: bool,
}

fn default_container() -> String {
    "executor".into()
}

/// A pool of executors serving the catalog's models of that pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The name models use in the catalog (`pool`), e.g. `cpu` or `gpu`.
    pub name: String,
    /// Executors kept running even with an empty queue. Default 0 (scale to zero).
    #[serde(default)]
    pub min_warm: u32,
    /// The most executors the pool may run. Default 4.
    #[serde(default = "default_max_tasks")]
    pub max_tasks: u32,
    /// Queued-or-running jobs one executor is expected to take (its concurrency). Default:
    /// the engine's capacity for the pool's models (their catalog `max_batch_sequences`,
    /// else 64 for models placed on CUDA and 32 otherwise; see [`Pools::with_catalog`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs_per_task: Option<u32>,
    /// How long an executor with nothing to do waits before it exits. Default 300.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: u64,
    /// The pool's SQS queue (AWS); else the default `FERRY_QUEUE_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
    /// Its dead-letter queue, read by the watchdog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlq_url: Option<String>,
    /// How to launch executors on ECS (AWS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<EcsLaunch>,
    /// On-demand price of one executor per hour (USD), for `ferry cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_price: Option<f64>,
    /// Seconds from launch to a ready executor (boot, image pull, model load), for `ferry cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_s: Option<f64>,
}

/// Jobs per executor when neither the pool nor its models say: the CPU engine's default
/// batch (`--max-batch-sequences`).
pub const DEFAULT_JOBS_PER_TASK: u32 = 32;

fn default_max_tasks() -> u32 {
    4
}
fn default_idle_timeout() -> u64 {
    300
}

impl PoolConfig {
    /// A pool with every default.
    pub fn named(name: impl Into<String>) -> Self {
        PoolConfig {
            name: name.into(),
            min_warm: 0,
            max_tasks: default_max_tasks(),
            jobs_per_task: None,
            idle_timeout_s: default_idle_timeout(),
            queue_url: None,
            dlq_url: None,
            ecs: None,
            hourly_price: None,
            cold_start_s: None,
        }
    }

    /// Jobs one executor takes: `jobs_per_task`, else [`DEFAULT_JOBS_PER_TASK`].
    pub fn jobs_per_task(&self) -> u32 {
        self.jobs_per_task.unwrap_or(DEFAULT_JOBS_PER_TASK).max(1)
    }

    /// The executor count the backlog calls for (KEDA's rule, bounded by min warm and max).
    pub fn desired(&self, backlog: u64) -> u32 {
        let per = self.jobs_per_task() as u64;
        let wanted = backlog.div_ceil(per).min(u32::MAX as u64) as u32;
        wanted.max(self.min_warm).min(self.max_tasks)
    }
}

/// Why a pool configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid pools JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("pool {pool:?}: {reason}")]
    Invalid { pool: String, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolsFile {
    pools: Vec<PoolConfig>,
}

/// Every pool, by name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pools(BTreeMap<String, PoolConfig>);

impl Pools {
    /// Parses `{"pools": [...]}` (or a bare array) and checks each pool.
    pub fn from_json(text: &str) -> Result<Self, PoolError> {
        let list = match serde_json::from_str::<PoolsFile>(text) {
            Ok(f) => f.pools,
            Err(e) => serde_json::from_str::<Vec<PoolConfig>>(text).map_err(|_| e)?,
        };
        Self::from_list(list)
    }

    pub fn from_list(list: Vec<PoolConfig>) -> Result<Self, PoolError> {
        let mut map = BTreeMap::new();
        for p in list {
            let invalid = |reason: &str| PoolError::Invalid { pool: p.name.clone(), reason: reason.into() };
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 32
                && p.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(invalid("names are 1 to 32 letters, digits, '-' or '_'"));
            }
            if p.max_tasks == 0 || p.jobs_per_task == Some(0) {
                return Err(invalid("max_tasks and jobs_per_task must be at least 1"));
            }
            if p.min_warm > p.max_tasks {
                return Err(invalid("min_warm is larger than max_tasks"));
            }
            if p.hourly_price.is_some_and(|v| !(v.is_finite() && v >= 0.0))
                || p.cold_start_s.is_some_and(|v| !(v.is_finite() && v >= 0.0))
            {
                return Err(invalid("hourly_price and cold_start_s must be non-negative numbers"));
            }
            if let Some(ecs) = &p.ecs
                && (ecs.cluster.is_empty() || ecs.task_definition.is_empty())
            {
                return Err(invalid("ecs.cluster and ecs.task_definition are required"));
            }
            if map.contains_key(&p.name) {
                return Err(invalid("appears twice"));
            }
            map.insert(p.name.clone(), p);
        }
        Ok(Pools(map))
    }

    pub fn from_file(path: &Path) -> Result<Self, PoolError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PoolError::Io { path: path.display().to_string(), source })?;
        Self::from_json(&text)
    }

    /// `FERRY_POOLS` (inline JSON) or `FERRY_POOLS_FILE`; empty when neither is set.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, PoolError> {
        if let Some(text) = get("FERRY_POOLS").filter(|t| !t.trim().is_empty()) {
            return Self::from_json(&text);
        }
        match get("FERRY_POOLS_FILE").filter(|t| !t.trim().is_empty()) {
            Some(path) => Self::from_file(Path::new(&path)),
            None => Ok(Pools::default()),
        }
    }

    /// Adds a default pool for every catalog pool not configured, and gives every pool
    /// whose `jobs_per_task` is unset the capacity of its executors' engines: the largest
    /// among its models of their `max_batch_sequences`, else 64 for a model placed on CUDA
    /// and 32 otherwise (the executor's defaults).
    pub fn with_catalog(mut self, catalog: &Catalog) -> Self {
        for m in &catalog.models {
            self.0.entry(m.pool.clone()).or_insert_with(|| PoolConfig::named(&m.pool));
        }
        for pool in self.0.values_mut() {
            if pool.jobs_per_task.is_none() {
                let capacity = catalog
                    .models
                    .iter()
                    .filter(|m| m.pool == pool.name)
                    .map(|m| {
                        if m.task == crate::job::Task::Handler {
                            return m.concurrency.unwrap_or(1);
                        }
                        let cuda = m.device.as_deref().is_some_and(|d| d.starts_with("cuda"));
                        m.max_batch_sequences.unwrap_or(if cuda { 64 } else { DEFAULT_JOBS_PER_TASK })
                    })
                    .max();
                pool.jobs_per_task = capacity;
            }
        }
        self
    }

    pub fn get(&self, name: &str) -> Option<&PoolConfig> {
        self.0.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PoolConfig> {
        self.0.values()
    }

    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Changes every pool (for example `ferry dev --idle-timeout`).
    pub fn map(mut self, f: impl Fn(&mut PoolConfig)) -> Self {
        self.0.values_mut().for_each(f);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_follows_backlog_within_bounds() {
        let p = PoolConfig { min_warm: 1, max_tasks: 5, jobs_per_task: Some(2), ..PoolConfig::named("gpu") };
        assert_eq!(p.desired(0), 1);
        assert_eq!(p.desired(3), 2);
        assert_eq!(p.desired(4), 2);
        assert_eq!(p.desired(5), 3);
        assert_eq!(p.desired(1000), 5);
        assert_eq!(PoolConfig::named("cpu").desired(0), 0);
    }

    #[test]
    fn parses_and_validates() {
        let pools = Pools::from_json(
            r#"{"pools":[{"name":"gpu","max_tasks":2,"ecs":{"cluster":"c","task_definition":"t",
            "capacity_providers":[{"name":"gpu-asg"}]}}]}"#,
        )
        .unwrap();
        let gpu = pools.get("gpu").unwrap();
        assert_eq!(gpu.ecs.as_ref().unwrap().capacity_providers[0].weight, 1);
        assert_eq!(gpu.idle_timeout_s, 300);
        for bad in [
            r#"[{"name":"a","min_warm":3,"max_tasks":2}]"#,
            r#"[{"name":"a b"}]"#,
            r#"[{"name":"a"},{"name":"a"}]"#,
            r#"[{"name":"a","jobs_per_task":0}]"#,
            r#"[{"name":"a","colour":1}]"#,
        ] {
            assert!(Pools::from_json(bad).is_err(), "{bad}");
        }
    }
}

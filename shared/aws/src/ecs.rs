//! ECS adapter for the `Launcher` port: the dispatcher starts executor tasks with RunTask,
//! counts them with ListTasks + DescribeTasks and stops stuck ones with StopTask.
//!
//! A pool's tasks are found again by `startedBy` (`ferry-<pool>`), which ListTasks can
//! filter on server-side; `group` (`ferry:<pool>`) and the `ferry:pool` tag label the same
//! thing for people reading the console and the bill. The executor learns its pool, idle
//! timeout and queue from environment overrides on its container, so one task definition
//! can serve several pools.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_ecs::Client;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, CapacityProviderStrategyItem, ContainerOverride, DesiredStatus, Failure,
    KeyValuePair, NetworkConfiguration, PropagateTags, Tag, TaskOverride,
};
use ferry_core::fleet::{ExecutorTask, LaunchError, Launched, Launcher, TaskState};
use ferry_core::pool::{EcsLaunch, PoolConfig};
use sha2::{Digest, Sha256};

/// RunTask starts at most ten tasks per call.
const MAX_PER_CALL: u32 = 10;
/// DescribeTasks takes at most 100 tasks, and ListTasks returns at most 100 per page.
const PAGE: usize = 100;
/// ECS limits: `startedBy` is up to 36 characters, a stop reason up to 255.
const MAX_STARTED_BY: usize = 36;
const MAX_REASON: usize = 255;
const STARTED_BY_PREFIX: &str = "ferry-";
/// The tag that names a task's pool (cost allocation, console filters).
pub const POOL_TAG: &str = "ferry:pool";

/// Error codes meaning "slow down".
const THROTTLE_CODES: [&str; 4] =
    ["ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"];
/// Error codes meaning the request itself (or the pool behind it) is wrong: retrying will
/// not help until someone fixes the configuration or the permissions.
const MISCONFIGURED_CODES: [&str; 7] = [
    "ClientException",
    "InvalidParameterException",
    "ClusterNotFoundException",
    "AccessDeniedException",
    "PlatformTaskDefinitionIncompatibilityException",
    "PlatformUnknownException",
    "UnsupportedFeatureException",
];
/// Phrases (lowercase) of ECS answers that mean "nowhere to place the task right now":
/// placement failures (`RESOURCE:GPU`), Fargate shortages, an Auto Scaling group at zero.
const CAPACITY_PHRASES: [&str; 4] =
    ["resource:", "capacity is unavailable", "insufficient capacity", "no container instances were found"];

/// Starts, lists and stops a pool's executors as ECS tasks.
#[derive(Debug, Clone)]
pub struct EcsLauncher {
    client: Client,
    /// Launcher-wide environment for every executor (table name, events URL, log level):
    /// settings that do not vary by pool and should not need a task definition revision.
    env: Vec<(String, String)>,
}

impl EcsLauncher {
    pub fn new(client: Client) -> Self {
        EcsLauncher { client, env: Vec::new() }
    }

    /// Adds environment overrides for every launched executor. The pool's own variables
    /// (`FERRY_POOL`, `FERRY_IDLE_TIMEOUT_S`, `FERRY_QUEUE_URL`) win over these on a clash,
    /// since they are what makes an executor belong to its pool.
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    /// The container environment for a pool's executors, sorted by name and without
    /// duplicates (ECS does not say which of two same-named entries wins).
    fn environment(&self, pool: &PoolConfig) -> Vec<KeyValuePair> {
        let mut env: BTreeMap<&str, String> = self.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        env.insert("FERRY_POOL", pool.name.clone());
        env.insert("FERRY_IDLE_TIMEOUT_S", pool.idle_timeout_s.to_string());
        if let Some(url) = &pool.queue_url {
            env.insert("FERRY_QUEUE_URL", url.clone());
        }
        env.into_iter().map(|(k, v)| KeyValuePair::builder().name(k).value(v).build()).collect()
    }
}

/// The `startedBy` value that marks a pool's tasks. Names too long for ECS's 36
/// characters keep a prefix and get a hash of the whole name, so two long names that
/// share a prefix still list apart.
pub fn started_by(pool: &str) -> String {
    let plain = format!("{STARTED_BY_PREFIX}{pool}");
    if plain.len() <= MAX_STARTED_BY {
        return plain;
    }
    let hash = hex::encode(Sha256::digest(pool.as_bytes()));
    let keep = MAX_STARTED_BY - STARTED_BY_PREFIX.len() - 1 - 8;
    // Pool names are ASCII (validated), but slice on a char boundary regardless.
    let prefix: String = pool.chars().take(keep).collect();
    format!("{STARTED_BY_PREFIX}{prefix}-{}", &hash[..8])
}

/// The task `group` of a pool's tasks.
pub fn group(pool: &str) -> String {
    format!("ferry:{pool}")
}

fn ecs_of(pool: &PoolConfig) -> Result<&EcsLaunch, LaunchError> {
    pool.ecs.as_ref().ok_or_else(|| LaunchError::Misconfigured(format!("pool {} has no ecs section", pool.name)))
}

/// Sorts an ECS error into the port's kinds, from its code and its full message.
fn classify(code: Option<&str>, message: String) -> LaunchError {
    let code = code.unwrap_or_default();
    let lower = message.to_ascii_lowercase();
    if THROTTLE_CODES.contains(&code) {
        LaunchError::Throttled(message)
    } else if CAPACITY_PHRASES.iter().any(|p| lower.contains(p)) {
        // Checked before the configuration codes: ECS reports an empty cluster as an
        // InvalidParameterException, yet it heals once the Auto Scaling group scales out.
        LaunchError::NoCapacity(message)
    } else if MISCONFIGURED_CODES.contains(&code) || code.starts_with("Invalid") {
        LaunchError::Misconfigured(message)
    } else {
        LaunchError::Failed(message)
    }
}

fn launch_err<E, R>(operation: &str, cluster: &str, err: SdkError<E, R>) -> LaunchError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = format!("ECS {operation} on cluster {cluster}: {}", DisplayErrorContext(&err));
    let e = classify(err.code(), message);
    tracing::warn!(operation, cluster, error = %e, "ECS call failed");
    e
}

fn build_err(what: &str, err: aws_smithy_types::error::operation::BuildError) -> LaunchError {
    LaunchError::Misconfigured(format!("ECS {what} could not be built: {err}"))
}

/// `arn: reason (detail)`, as the port reports failures.
fn describe_failure(f: &Failure) -> String {
    let mut s = match (f.arn(), f.reason()) {
        (Some(arn), Some(reason)) => format!("{arn}: {reason}"),
        (None, Some(reason)) => reason.to_string(),
        (Some(arn), None) => format!("{arn}: unknown reason"),
        (None, None) => "unknown reason".to_string(),
    };
    if let Some(detail) = f.detail().filter(|d| !d.is_empty()) {
        s.push_str(&format!(" ({detail})"));
    }
    s
}

/// The port's state for an ECS `lastStatus`; None for tasks on their way out.
fn task_state(last_status: &str) -> Option<TaskState> {
    match last_status {
        "PROVISIONING" | "PENDING" | "ACTIVATING" => Some(TaskState::Pending),
        "RUNNING" => Some(TaskState::Running),
        _ => None,
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

/// Whether a StopTask error says the task does not exist (any more).
fn is_not_found(code: Option<&str>, message: Option<&str>) -> bool {
    let message = message.unwrap_or_default().to_ascii_lowercase();
    code == Some("InvalidParameterException") && (message.contains("not found") || message.contains("not exist"))
}

#[async_trait]
impl Launcher for EcsLauncher {
    async fn launch(&self, pool: &PoolConfig, count: u32) -> Result<Launched, LaunchError> {
        let ecs = ecs_of(pool)?;
        if count == 0 {
            return Ok(Launched::default());
        }
        if count > MAX_PER_CALL {
            tracing::warn!(pool = %pool.name, count, "more tasks asked than RunTask starts; starting {MAX_PER_CALL}");
        }
        let count = count.min(MAX_PER_CALL);

        let container = ContainerOverride::builder().name(&ecs.container).set_environment(Some(self.environment(pool)));
        let mut req = self
            .client
            .run_task()
            .cluster(&ecs.cluster)
            .task_definition(&ecs.task_definition)
            .count(count as i32)
            .started_by(started_by(&pool.name))
            .group(group(&pool.name))
            .tags(Tag::builder().key(POOL_TAG).value(&pool.name).build())
            // Cost-allocation tags set on the task definition follow onto each task.
            .propagate_tags(PropagateTags::TaskDefinition)
            .overrides(TaskOverride::builder().container_overrides(container.build()).build());
        // With no strategy and no launch type, the cluster's default strategy applies.
        for cp in &ecs.capacity_providers {
            let item = CapacityProviderStrategyItem::builder()
                .capacity_provider(&cp.name)
                .weight(cp.weight.min(i32::MAX as u32) as i32)
                .base(cp.base.min(i32::MAX as u32) as i32)
                .build()
                .map_err(|e| build_err("capacity provider strategy", e))?;
            req = req.capacity_provider_strategy(item);
        }
        // Only awsvpc task definitions (Fargate) take a network configuration; bridge and
        // host networking on EC2 reject one.
        if !ecs.subnets.is_empty() {
            let vpc = AwsVpcConfiguration::builder()
                .set_subnets(Some(ecs.subnets.clone()))
                .set_security_groups((!ecs.security_groups.is_empty()).then(|| ecs.security_groups.clone()))
                .assign_public_ip(if ecs.assign_public_ip { AssignPublicIp::Enabled } else { AssignPublicIp::Disabled })
                .build()
                .map_err(|e| build_err("network configuration", e))?;
            req = req.network_configuration(NetworkConfiguration::builder().awsvpc_configuration(vpc).build());
        }

        let out = req.send().await.map_err(|e| launch_err("RunTask", &ecs.cluster, e))?;
        let launched = Launched {
            task_ids: out.tasks().iter().filter_map(|t| t.task_arn().map(str::to_string)).collect(),
            failures: out.failures().iter().map(describe_failure).collect(),
        };
        tracing::info!(
            pool = %pool.name,
            cluster = %ecs.cluster,
            asked = count,
            started = launched.task_ids.len(),
            failures = ?launched.failures,
            "ECS RunTask"
        );
        Ok(launched)
    }

    async fn list(&self, pool: &PoolConfig) -> Result<Vec<ExecutorTask>, LaunchError> {
        let ecs = ecs_of(pool)?;
        // Desired status RUNNING covers every task not yet told to stop, pending ones too.
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_tasks()
                .cluster(&ecs.cluster)
                .started_by(started_by(&pool.name))
                .desired_status(DesiredStatus::Running)
                .max_results(PAGE as i32)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| launch_err("ListTasks", &ecs.cluster, e))?;
            arns.extend(page.task_arns().iter().cloned());
            match page.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_string()),
                _ => break,
            }
        }

        // ListTasks says nothing of progress: DescribeTasks tells pending from running and
        // drops tasks already shutting down (desired RUNNING but last status STOPPING).
        let mut tasks = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(PAGE) {
            let out = self
                .client
                .describe_tasks()
                .cluster(&ecs.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| launch_err("DescribeTasks", &ecs.cluster, e))?;
            for t in out.tasks() {
                if let (Some(arn), Some(state)) = (t.task_arn(), t.last_status().and_then(task_state)) {
                    tasks.push(ExecutorTask { id: arn.to_string(), state });
                }
            }
        }
        Ok(tasks)
    }

    async fn stop(&self, pool: &PoolConfig, task_id: &str, reason: &str) -> Result<(), LaunchError> {
        let ecs = ecs_of(pool)?;
        // Look first: a task ECS does not know (DescribeTasks reports it MISSING) or one
        // already stopped needs no StopTask, and so never trips over how StopTask words
        // "not found".
        let out = self
            .client
            .describe_tasks()
            .cluster(&ecs.cluster)
            .tasks(task_id)
            .send()
            .await
            .map_err(|e| launch_err("DescribeTasks", &ecs.cluster, e))?;
        let live =
            out.tasks().iter().any(|t| t.last_status() != Some("STOPPED") && t.desired_status() != Some("STOPPED"));
        if !live {
            tracing::debug!(pool = %pool.name, task_id, "task unknown or already stopping: nothing to stop");
            return Ok(());
        }
        let result = self
            .client
            .stop_task()
            .cluster(&ecs.cluster)
            .task(task_id)
            .reason(truncate(reason, MAX_REASON))
            .send()
            .await;
        match result {
            Ok(_) => {
                tracing::info!(pool = %pool.name, task_id, reason, "ECS StopTask");
                Ok(())
            }
            // Gone between the two calls.
            Err(e) if is_not_found(e.code(), e.message()) => Ok(()),
            Err(e) => Err(launch_err("StopTask", &ecs.cluster, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_by_fits_ecs_and_keeps_long_names_apart() {
        assert_eq!(started_by("gpu"), "ferry-gpu");
        let a = started_by(&format!("{}-a", "x".repeat(30)));
        let b = started_by(&format!("{}-b", "x".repeat(30)));
        assert!(a.len() <= MAX_STARTED_BY && b.len() <= MAX_STARTED_BY, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.starts_with("ferry-xxxx"));
        assert_eq!(started_by(&"y".repeat(30)).len(), 36, "exactly 36 fits unchanged");
    }

    #[test]
    fn errors_are_sorted_by_code_and_message() {
        let c = |code: &str, msg: &str| classify(Some(code), msg.to_string());
        assert!(matches!(c("ThrottlingException", "Rate exceeded"), LaunchError::Throttled(_)));
        assert!(matches!(
            c("InvalidParameterException", "No Container Instances were found in your cluster."),
            LaunchError::NoCapacity(_)
        ));
        assert!(matches!(c("", "RESOURCE:GPU"), LaunchError::NoCapacity(_)));
        assert!(matches!(c("ClusterNotFoundException", "Cluster not found."), LaunchError::Misconfigured(_)));
        assert!(matches!(
            c("InvalidParameterException", "The capacity provider strategy is not valid"),
            LaunchError::Misconfigured(_)
        ));
        assert!(matches!(c("ServerException", "internal"), LaunchError::Failed(_)));
        assert!(matches!(classify(None, "dispatch failure".into()), LaunchError::Failed(_)));
    }

    #[test]
    fn task_states_and_stop_helpers() {
        assert_eq!(task_state("PROVISIONING"), Some(TaskState::Pending));
        assert_eq!(task_state("ACTIVATING"), Some(TaskState::Pending));
        assert_eq!(task_state("RUNNING"), Some(TaskState::Running));
        for gone in ["DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED"] {
            assert_eq!(task_state(gone), None);
        }
        assert!(is_not_found(Some("InvalidParameterException"), Some("The referenced task was not found.")));
        assert!(!is_not_found(Some("InvalidParameterException"), Some("Invalid id")));
        assert_eq!(truncate(&"é".repeat(200), MAX_REASON).len(), 254);
        assert_eq!(truncate("short", MAX_REASON), "short");
    }
}

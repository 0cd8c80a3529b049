//! ECS on moto, for tests of the ECS launcher and of the dispatcher over it: clusters,
//! capacity providers, container instances and task definitions, built per test under
//! unique names so tests can share one moto.
//!
//! moto needs two things the SDK calls alone cannot give it: an EC2 instance to register
//! as a container instance (created with a bare EC2 Query call, to spare the build an EC2
//! SDK), and tasks that stay RUNNING when described (moto's state manager otherwise moves
//! a task one step toward STOPPED on every DescribeTasks). [`moto`] sets the second up.

use std::future::Future;
use std::time::Duration;

use aws_sdk_ecs::types::{
    AutoScalingGroupProvider, CapacityProviderStrategyItem, Compatibility, ContainerDefinition,
    ManagedTerminationProtection, NetworkMode, ResourceRequirement, ResourceType, Task, TaskField,
};

use crate::backends::unique_name;

/// A whole test, moto calls included; moto answers these in well under a second each.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// The container every test task definition names (and pools override the env of).
pub const CONTAINER: &str = "executor";

/// The process's moto, with clients for ECS and for raw calls.
pub struct EcsMoto {
    pub endpoint: String,
    pub sdk: ferry_aws::SdkConfig,
    pub ecs: aws_sdk_ecs::Client,
    pub http: reqwest::Client,
}

/// The process's moto with tasks held in their state, or None when moto is not installed.
pub async fn moto() -> Option<EcsMoto> {
    let server = crate::moto::shared()?;
    let sdk = ferry_aws::sdk_config_for_endpoint(&server.endpoint).await;
    let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().expect("http client");
    // Global to this moto (every test of this process), and idempotent.
    let transition = serde_json::json!({
        "model_name": "ecs::task",
        "transition": {"progression": "manual", "times": 1_000_000},
    });
    let resp = http
        .post(format!("{}/moto-api/state-manager/set-transition", server.endpoint))
        .json(&transition)
        .send()
        .await
        .expect("moto set-transition");
    assert!(resp.status().is_success(), "set-transition: {}", resp.status());
    Some(EcsMoto { endpoint: server.endpoint.clone(), ecs: aws_sdk_ecs::Client::new(&sdk), sdk, http })
}

/// Runs `test`, failing it after [`TEST_TIMEOUT`].
pub async fn within<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out")
}

/// One cluster with a GPU pool's and a CPU pool's ECS pieces: an EC2 capacity provider with
/// one registered g5.xlarge instance (GPU) and Fargate (CPU), a task definition for each,
/// and the default VPC's network for awsvpc tasks.
pub struct TwoPoolCluster {
    pub cluster: String,
    /// The EC2 capacity provider of the GPU pool.
    pub provider: String,
    pub gpu_family: String,
    pub cpu_family: String,
    pub subnet: String,
    pub security_group: String,
}

impl EcsMoto {
    /// Builds a [`TwoPoolCluster`] with fresh names.
    pub async fn two_pool_cluster(&self) -> TwoPoolCluster {
        let cluster = crate::backends::unique_name();
        let provider = self.ec2_capacity_provider().await;
        self.cluster(&cluster, &[&provider, "FARGATE"]).await;
        self.container_instance(&cluster, "g5.xlarge").await;
        let (gpu_family, cpu_family) = (crate::backends::unique_name(), crate::backends::unique_name());
        self.gpu_task_definition(&gpu_family).await;
        self.fargate_task_definition(&cpu_family).await;
        let (subnet, security_group) = self.default_network().await;
        TwoPoolCluster { cluster, provider, gpu_family, cpu_family, subnet, security_group }
    }

    /// An unsigned EC2 Query API call (moto does not check signatures, only that the
    /// Authorization header names the service). Returns the XML answer.
    pub async fn ec2(&self, query: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/", self.endpoint))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x",
            )
            .body(format!("{query}&Version=2016-11-15"))
            .send()
            .await
            .expect("EC2 query");
        let status = resp.status();
        let body = resp.text().await.expect("EC2 answer");
        assert!(status.is_success(), "EC2 {query}: {status} {body}");
        body
    }

    /// DescribeTasks with tags.
    pub async fn describe(&self, cluster: &str, arns: &[String]) -> Vec<Task> {
        let out = self
            .ecs
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(arns.to_vec()))
            .include(TaskField::Tags)
            .send()
            .await
            .expect("DescribeTasks");
        out.tasks().to_vec()
    }

    /// A subnet and a security group of moto's default VPC (awsvpc tasks create an ENI
    /// there, so the subnet must exist).
    pub async fn default_network(&self) -> (String, String) {
        let subnet = xml_value(&self.ec2("Action=DescribeSubnets").await, "subnetId");
        let sg = xml_value(&self.ec2("Action=DescribeSecurityGroups").await, "groupId");
        (subnet, sg)
    }

    /// A new EC2 capacity provider (on an Auto Scaling group moto never looks up); its name.
    pub async fn ec2_capacity_provider(&self) -> String {
        let provider = unique_name();
        let asg = AutoScalingGroupProvider::builder()
            .auto_scaling_group_arn(format!(
                "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:00000000-0000-0000-0000-000000000000:autoScalingGroupName/{provider}"
            ))
            .managed_termination_protection(ManagedTerminationProtection::Disabled)
            .build()
            .expect("ASG provider");
        self.ecs
            .create_capacity_provider()
            .name(&provider)
            .auto_scaling_group_provider(asg)
            .send()
            .await
            .expect("CreateCapacityProvider");
        provider
    }

    /// A cluster with `providers`, the first one its default strategy.
    pub async fn cluster(&self, name: &str, providers: &[&str]) {
        let mut req = self.ecs.create_cluster().cluster_name(name);
        for p in providers {
            req = req.capacity_providers(*p);
        }
        if let Some(first) = providers.first() {
            req = req.default_capacity_provider_strategy(strategy(first, 1, 0));
        }
        req.send().await.expect("CreateCluster");
    }

    /// Starts an EC2 instance of `instance_type` and registers it with `cluster`: tasks on
    /// an EC2 capacity provider need one. moto's container instance has 4096 CPU units.
    pub async fn container_instance(&self, cluster: &str, instance_type: &str) -> String {
        let run = self
            .ec2(&format!(
                "Action=RunInstances&ImageId=ami-12345678&MinCount=1&MaxCount=1&InstanceType={instance_type}"
            ))
            .await;
        let instance_id = xml_value(&run, "instanceId");
        let identity = serde_json::json!({ "instanceId": instance_id }).to_string();
        let out = self
            .ecs
            .register_container_instance()
            .cluster(cluster)
            .instance_identity_document(identity)
            .send()
            .await
            .expect("RegisterContainerInstance");
        out.container_instance().and_then(|c| c.container_instance_arn()).expect("container instance ARN").to_string()
    }

    /// An EC2 task definition whose executor asks for one GPU and 1024 CPU units.
    pub async fn gpu_task_definition(&self, family: &str) {
        let gpu = ResourceRequirement::builder().r#type(ResourceType::Gpu).value("1").build().expect("GPU requirement");
        let executor = ContainerDefinition::builder()
            .name(CONTAINER)
            .image("ferry/executor:gpu")
            .cpu(1024)
            .memory(1024)
            .resource_requirements(gpu)
            .build();
        self.ecs
            .register_task_definition()
            .family(family)
            .requires_compatibilities(Compatibility::Ec2)
            .container_definitions(executor)
            .send()
            .await
            .expect("RegisterTaskDefinition (gpu)");
    }

    /// A Fargate (awsvpc) task definition of 0.25 vCPU and 512 MiB.
    pub async fn fargate_task_definition(&self, family: &str) {
        let executor = ContainerDefinition::builder().name(CONTAINER).image("ferry/executor:test").memory(512).build();
        self.ecs
            .register_task_definition()
            .family(family)
            .network_mode(NetworkMode::Awsvpc)
            .requires_compatibilities(Compatibility::Fargate)
            .cpu("256")
            .memory("512")
            .container_definitions(executor)
            .send()
            .await
            .expect("RegisterTaskDefinition (fargate)");
    }
}

/// The text of the first `<tag>` in an XML document.
pub fn xml_value(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = xml.find(&open).unwrap_or_else(|| panic!("no <{tag}> in {xml}")) + open.len();
    let end = xml[start..].find(&format!("</{tag}>")).expect("closing tag") + start;
    xml[start..end].to_string()
}

pub fn strategy(name: &str, weight: i32, base: i32) -> CapacityProviderStrategyItem {
    CapacityProviderStrategyItem::builder().capacity_provider(name).weight(weight).base(base).build().unwrap()
}

/// The environment overrides of a task's executor container, in order.
pub fn env_of(task: &Task) -> Vec<(String, String)> {
    let overrides = task.overrides().expect("overrides");
    let container =
        overrides.container_overrides().iter().find(|c| c.name() == Some(CONTAINER)).expect("executor override");
    container
        .environment()
        .iter()
        .map(|kv| (kv.name().unwrap_or_default().to_string(), kv.value().unwrap_or_default().to_string()))
        .collect()
}

/// The value of `name` in a task's executor overrides.
pub fn env_var(task: &Task, name: &str) -> Option<String> {
    env_of(task).into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

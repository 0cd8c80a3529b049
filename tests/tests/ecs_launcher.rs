//! The ECS adapter of the `Launcher` port ([`ferry_aws::EcsLauncher`]) against moto: a
//! Fargate pool, a GPU pool on an EC2 capacity provider, and the errors the dispatcher
//! has to tell apart. Each test builds its own cluster, so they share one moto safely.
//!
//! moto needs two things the SDK calls alone cannot give it: an EC2 instance to register
//! as a container instance (created with a bare EC2 Query call, to spare the build an EC2
//! SDK), and tasks that stay RUNNING when described (moto's state manager otherwise moves
//! a task one step toward STOPPED on every DescribeTasks).

use std::collections::BTreeSet;

use aws_sdk_ecs::types::{
    AutoScalingGroupProvider, Compatibility, ContainerDefinition, ManagedTerminationProtection, NetworkMode,
    ResourceRequirement, ResourceType,
};
use ferry_aws::EcsLauncher;
use ferry_core::fleet::{LaunchError, Launcher, TaskState};
use ferry_core::pool::{CapacityProvider, EcsLaunch, PoolConfig};
use ferry_tests::backends::unique_name;
use ferry_tests::ecs::{env_of, moto, strategy, within, xml_value};

fn ids(tasks: &[ferry_core::fleet::ExecutorTask]) -> BTreeSet<String> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

#[tokio::test]
async fn fargate_pool_launches_lists_and_stops() {
    let Some(moto) = moto().await else { return };
    within(async {
        let cluster = unique_name();
        let family = unique_name();
        moto.ecs
            .create_cluster()
            .cluster_name(&cluster)
            .capacity_providers("FARGATE")
            .capacity_providers("FARGATE_SPOT")
            .send()
            .await
            .unwrap();
        let executor = ContainerDefinition::builder().name("executor").image("ferry/executor:test").memory(512).build();
        moto.ecs
            .register_task_definition()
            .family(&family)
            .network_mode(NetworkMode::Awsvpc)
            .requires_compatibilities(Compatibility::Fargate)
            .cpu("256")
            .memory("512")
            .container_definitions(executor)
            .send()
            .await
            .unwrap();
        // moto's awsvpc tasks create an ENI, so the subnet must exist there (its default VPC).
        let subnet = xml_value(&moto.ec2("Action=DescribeSubnets").await, "subnetId");
        let sg = xml_value(&moto.ec2("Action=DescribeSecurityGroups").await, "groupId");

        let pool = PoolConfig {
            idle_timeout_s: 120,
            queue_url: Some("http://sqs.local/123456789012/cpu".into()),
            ecs: Some(EcsLaunch {
                cluster: cluster.clone(),
                task_definition: family.clone(),
                container: "executor".into(),
                capacity_providers: vec![
                    CapacityProvider { name: "FARGATE".into(), weight: 1, base: 1 },
                    CapacityProvider { name: "FARGATE_SPOT".into(), weight: 3, base: 0 },
                ],
                subnets: vec![subnet.clone()],
                security_groups: vec![sg],
                assign_public_ip: false,
            }),
            ..PoolConfig::named("cpu")
        };
        let launcher = EcsLauncher::new(moto.ecs.clone())
            .with_env(vec![("FERRY_TABLE".into(), "jobs".into()), ("FERRY_POOL".into(), "not-this".into())]);

        let launched = launcher.launch(&pool, 3).await.expect("launch");
        assert_eq!(launched.task_ids.len(), 3, "{launched:?}");
        assert!(launched.failures.is_empty(), "{launched:?}");
        assert!(launched.task_ids.iter().all(|id| id.starts_with("arn:aws:ecs:")), "{launched:?}");

        let listed = launcher.list(&pool).await.expect("list");
        assert_eq!(ids(&listed), launched.task_ids.iter().cloned().collect());
        assert!(listed.iter().all(|t| t.state == TaskState::Running), "{listed:?}");

        for task in moto.describe(&cluster, &launched.task_ids).await {
            assert_eq!(task.started_by(), Some("ferry-cpu"));
            assert_eq!(task.group(), Some("ferry:cpu"));
            let provider = task.capacity_provider_name();
            assert!(matches!(provider, Some("FARGATE" | "FARGATE_SPOT")), "{provider:?}");
            assert!(task.tags().iter().any(|t| t.key() == Some("ferry:pool") && t.value() == Some("cpu")));
            let env = env_of(&task);
            let expected = [
                ("FERRY_IDLE_TIMEOUT_S", "120"),
                ("FERRY_POOL", "cpu"),
                ("FERRY_QUEUE_URL", "http://sqs.local/123456789012/cpu"),
                ("FERRY_TABLE", "jobs"),
            ];
            let expected: Vec<_> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(env, expected, "the pool's own variables win over the extra env");
            let subnet_detail =
                task.attachments().iter().flat_map(|a| a.details()).find(|d| d.name() == Some("subnetId"));
            assert_eq!(subnet_detail.and_then(|d| d.value()), Some(subnet.as_str()));
        }

        let stopped = &launched.task_ids[0];
        launcher.stop(&pool, stopped, &"idle ".repeat(100)).await.expect("stop");
        let listed = launcher.list(&pool).await.expect("list after stop");
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(!ids(&listed).contains(stopped));
        let reason = moto.describe(&cluster, std::slice::from_ref(stopped)).await[0].stopped_reason().map(str::len);
        assert_eq!(reason, Some(255), "the reason is cut to ECS's limit");

        launcher.stop(&pool, stopped, "again").await.expect("stopping a stopped task is fine");
        let unknown = format!("arn:aws:ecs:us-east-1:123456789012:task/{cluster}/0123456789abcdef0123456789abcdef");
        launcher.stop(&pool, &unknown, "never ran").await.expect("stopping an unknown task is fine");
        assert_eq!(launcher.list(&pool).await.unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn gpu_pool_on_an_ec2_capacity_provider() {
    let Some(moto) = moto().await else { return };
    within(async {
        let cluster = unique_name();
        let family = unique_name();
        let provider = unique_name();
        // moto does not look the Auto Scaling group up, so a well-formed ARN is enough.
        let asg = AutoScalingGroupProvider::builder()
            .auto_scaling_group_arn(format!(
                "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:00000000-0000-0000-0000-000000000000:autoScalingGroupName/{provider}"
            ))
            .managed_termination_protection(ManagedTerminationProtection::Disabled)
            .build()
            .unwrap();
        moto.ecs.create_capacity_provider().name(&provider).auto_scaling_group_provider(asg).send().await.unwrap();
        moto.ecs
            .create_cluster()
            .cluster_name(&cluster)
            .capacity_providers(&provider)
            .default_capacity_provider_strategy(strategy(&provider, 1, 0))
            .send()
            .await
            .unwrap();
        // Tasks on an EC2 provider need a container instance, which needs an EC2 instance.
        let run = moto.ec2("Action=RunInstances&ImageId=ami-12345678&MinCount=1&MaxCount=1&InstanceType=g5.xlarge").await;
        let instance_id = xml_value(&run, "instanceId");
        let identity = serde_json::json!({ "instanceId": instance_id }).to_string();
        moto.ecs.register_container_instance().cluster(&cluster).instance_identity_document(identity).send().await.unwrap();
        let gpu = ResourceRequirement::builder().r#type(ResourceType::Gpu).value("1").build().unwrap();
        // moto's container instance has 4096 CPU units: room for exactly four of these.
        let executor = ContainerDefinition::builder()
            .name("executor")
            .image("ferry/executor:gpu")
            .cpu(1024)
            .memory(1024)
            .resource_requirements(gpu)
            .build();
        moto.ecs
            .register_task_definition()
            .family(&family)
            .requires_compatibilities(Compatibility::Ec2)
            .container_definitions(executor)
            .send()
            .await
            .unwrap();

        let ecs = EcsLaunch {
            cluster: cluster.clone(),
            task_definition: family.clone(),
            capacity_providers: vec![CapacityProvider { name: provider.clone(), weight: 1, base: 0 }],
            container: "executor".into(),
            ..EcsLaunch::default()
        };
        let gpu_pool = PoolConfig { ecs: Some(ecs.clone()), ..PoolConfig::named("gpu") };
        // A name too long for a plain `ferry-<name>` startedBy (36 characters at most).
        let other_pool = PoolConfig { ecs: Some(ecs.clone()), ..PoolConfig::named("gpu-batch-with-a-very-long-name1") };
        // No strategy of its own: the cluster's default applies.
        let default_pool = PoolConfig {
            ecs: Some(EcsLaunch { capacity_providers: vec![], ..ecs.clone() }),
            ..PoolConfig::named("gpu-default")
        };
        let launcher = EcsLauncher::new(moto.ecs.clone());

        let gpu = launcher.launch(&gpu_pool, 2).await.expect("launch gpu");
        assert_eq!(gpu.task_ids.len(), 2, "{gpu:?}");
        let other = launcher.launch(&other_pool, 1).await.expect("launch other");
        assert_eq!(other.task_ids.len(), 1, "{other:?}");
        let default = launcher.launch(&default_pool, 1).await.expect("launch with the cluster default");
        assert_eq!(default.task_ids.len(), 1, "{default:?}");

        let all: Vec<String> = [&gpu.task_ids, &other.task_ids, &default.task_ids].into_iter().flatten().cloned().collect();
        for task in moto.describe(&cluster, &all).await {
            assert_eq!(task.capacity_provider_name(), Some(provider.as_str()));
            assert!(task.container_instance_arn().is_some(), "placed on the registered instance");
            assert!(task.started_by().is_some_and(|s| s.len() <= 36), "{:?}", task.started_by());
        }

        assert_eq!(ids(&launcher.list(&gpu_pool).await.unwrap()), gpu.task_ids.iter().cloned().collect());
        assert_eq!(ids(&launcher.list(&other_pool).await.unwrap()), other.task_ids.iter().cloned().collect());
        assert_eq!(ids(&launcher.list(&default_pool).await.unwrap()), default.task_ids.iter().cloned().collect());

        launcher.stop(&other_pool, &other.task_ids[0], "scale in").await.unwrap();
        assert!(launcher.list(&other_pool).await.unwrap().is_empty());
        assert_eq!(launcher.list(&gpu_pool).await.unwrap().len(), 2, "another pool's stop leaves these alone");
    })
    .await;
}

#[tokio::test]
async fn launch_errors_are_typed() {
    let Some(moto) = moto().await else { return };
    within(async {
        let launcher = EcsLauncher::new(moto.ecs.clone());
        let missing = unique_name();
        let ecs = EcsLaunch {
            cluster: missing.clone(),
            task_definition: "ferry-executor".into(),
            container: "executor".into(),
            ..EcsLaunch::default()
        };
        let pool = PoolConfig { ecs: Some(ecs.clone()), ..PoolConfig::named("cpu") };
        match launcher.launch(&pool, 1).await {
            Err(LaunchError::Misconfigured(m)) => assert!(m.contains(&missing), "{m}"),
            other => panic!("a missing cluster is a configuration error: {other:?}"),
        }
        assert!(matches!(launcher.list(&pool).await, Err(LaunchError::Misconfigured(_))));
        assert!(matches!(
            launcher.stop(&pool, "arn:aws:ecs:us-east-1:123456789012:task/x/y", "r").await,
            Err(LaunchError::Misconfigured(_))
        ));

        // An existing cluster, but no such task definition.
        let cluster = unique_name();
        moto.ecs.create_cluster().cluster_name(&cluster).capacity_providers("FARGATE").send().await.unwrap();
        let no_family = PoolConfig { ecs: Some(EcsLaunch { cluster, ..ecs }), ..PoolConfig::named("cpu") };
        assert!(matches!(launcher.launch(&no_family, 1).await, Err(LaunchError::Misconfigured(_))));
        assert_eq!(launcher.launch(&no_family, 0).await, Ok(Default::default()), "nothing asked, nothing called");

        let bare = PoolConfig::named("bare");
        for result in [
            launcher.launch(&bare, 1).await.map(drop),
            launcher.list(&bare).await.map(drop),
            launcher.stop(&bare, "t", "r").await,
        ] {
            match result {
                Err(LaunchError::Misconfigured(m)) => assert_eq!(m, "pool bare has no ecs section"),
                other => panic!("a pool without ecs cannot launch: {other:?}"),
            }
        }
    })
    .await;
}

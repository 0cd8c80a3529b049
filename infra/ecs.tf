# The ECS cluster the dispatcher launches executors on (docs/SCALING.md): no services, only
# tasks started by RunTask (startedBy ferry-<pool>) that exit by themselves after their
# idle timeout. Capacity: FARGATE / FARGATE_SPOT for the cpu pool, and an EC2 capacity
# provider over the GPU Auto Scaling group (gpu_asg.tf) for the gpu pool, which ECS
# managed scaling grows from 0 when gpu tasks wait and shrinks back when they are gone.
#
# Both task definitions run the container `executor` (the name FERRY_POOLS gives the
# dispatcher for its environment overrides) with a read-only root filesystem; /models
# (model cache) and /tmp are writable volumes. The images (executor/Dockerfile.*, see
# executor/DOCKER.md) run as uid 10001 and declare `VOLUME /models` owned by it, which is
# what makes ECS give a Fargate bind mount that owner; on the GPU instances /models is a
# host directory their user data creates. The executor itself writes only to /models.
# stopTimeout 30 s > FERRY_GRACE_PERIOD_S 25 s: on SIGTERM (scale-in, Spot, StopTask) the
# executor, PID 1, releases running jobs before the kill.

resource "aws_ecs_cluster" "this" {
  name = local.cluster_name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  name = "${var.name}-gpu-asg"

  auto_scaling_group_provider {
    auto_scaling_group_arn = aws_autoscaling_group.gpu.arn

    # ECS protects instances with running tasks from scale-in, and drains them first.
    managed_termination_protection = "ENABLED"
    managed_draining               = "ENABLED"

    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = 100 # no spare instance: scale to zero
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = var.gpu_max_instances
      instance_warmup_period    = 300
    }
  }
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE", "FARGATE_SPOT", aws_ecs_capacity_provider.gpu.name]

  # Only used when a RunTask names no strategy; FERRY_POOLS always names one.
  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
    base              = 0
  }
}

locals {
  pool_image_tags = merge(
    { cpu = var.cpu_image_tag, gpu = var.gpu_image_tag },
    { for p, h in var.handler_pools : p => h.image_tag },
  )

  # The container, as both pools run it; the gpu one adds its GPU and sizes.
  executor_container = { for p in local.pool_names : p => {
    name                   = "executor"
    image                  = "${aws_ecr_repository.executor[p].repository_url}:${local.pool_image_tags[p]}"
    essential              = true
    environment            = [for k, v in local.executor_env[p] : { name = k, value = v }]
    stopTimeout            = 30
    readonlyRootFilesystem = true
    # An init process as PID 1 reaps what a job handler's killed process group leaves behind
    # (the executor would otherwise be PID 1, and orphans would stay zombies).
    linuxParameters = { initProcessEnabled = true }
    mountPoints = [
      { sourceVolume = "models", containerPath = "/models", readOnly = false },
      { sourceVolume = "tmp", containerPath = "/tmp", readOnly = false },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.executor[p].name
        awslogs-region        = var.region
        awslogs-stream-prefix = "executor"
      }
    }
  } }
}

# cpu pool: Fargate, X86_64 by default (var.cpu_architecture).
resource "aws_ecs_task_definition" "executor_cpu" {
  family                   = local.task_families["cpu"]
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.cpu_task_cpu)
  memory                   = tostring(var.cpu_task_memory_mib)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.executor.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # Task storage (encrypted by Fargate) holds both volumes; models are copied from S3 on
  # an executor's first job and live as long as the task.
  ephemeral_storage {
    size_in_gib = var.cpu_ephemeral_storage_gib
  }

  volume {
    name = "models"
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([local.executor_container["cpu"]])
}

# gpu pool: EC2 (Fargate has no GPUs), one GPU per task.
resource "aws_ecs_task_definition" "executor_gpu" {
  family                   = local.task_families["gpu"]
  requires_compatibilities = ["EC2"]
  network_mode             = "awsvpc"
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.executor.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  # The model cache is a directory on the instance (created by its user data), so the next
  # task on a warm instance finds the model already downloaded. /tmp is per task.
  volume {
    name      = "models"
    host_path = "/var/lib/ferry/models"
  }

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([merge(local.executor_container["gpu"], {
    cpu                  = var.gpu_task_cpu
    memory               = var.gpu_task_memory_mib
    resourceRequirements = [{ type = "GPU", value = "1" }]
  })])
}

# A handler pool (var.handler_pools): the executor with the user's program in it, on Fargate
# like the cpu pool, or on the GPU instances like the gpu pool when `gpu = true`.
resource "aws_ecs_task_definition" "handler" {
  for_each = var.handler_pools

  family                   = local.task_families[each.key]
  requires_compatibilities = [each.value.gpu ? "EC2" : "FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.gpu ? null : tostring(each.value.task_cpu)
  memory                   = each.value.gpu ? null : tostring(each.value.task_memory_mib)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.executor.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = each.value.gpu ? "X86_64" : var.cpu_architecture
  }

  dynamic "ephemeral_storage" {
    for_each = each.value.gpu ? [] : [each.value.ephemeral_storage_gib]
    content {
      size_in_gib = ephemeral_storage.value
    }
  }

  volume {
    name      = "models"
    host_path = each.value.gpu ? "/var/lib/ferry/models" : null
  }

  volume {
    name = "tmp"
  }

  # On the GPU instances the container is sized and given its GPU, as the gpu pool's is; on
  # Fargate the task is sized (above) and these stay unset.
  container_definitions = jsonencode([merge(local.executor_container[each.key], {
    cpu                  = each.value.gpu ? var.gpu_task_cpu : null
    memory               = each.value.gpu ? var.gpu_task_memory_mib : null
    resourceRequirements = each.value.gpu ? [{ type = "GPU", value = "1" }] : null
  })])
}

check "gpu_capacity" {
  assert {
    condition     = sum(concat([var.pools.gpu.max_tasks], [for h in values(var.handler_pools) : h.max_tasks if h.gpu])) <= var.gpu_max_instances
    error_message = "pools.gpu.max_tasks and the gpu handler pools' max_tasks add up to more than gpu_max_instances (${var.gpu_max_instances}): with one GPU per task and one GPU per ${var.gpu_instance_type}, the extra tasks would wait for capacity that never comes."
  }
}

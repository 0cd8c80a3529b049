# Names, and the configuration the code reads from its environment, assembled in one place
# so that the Lambdas and the executor task definitions cannot drift apart. What each
# variable means: README.md's configuration table and docs/SCALING.md.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  tags = merge({ Project = "ferry", Deployment = var.name }, var.tags)

  table_name   = "${var.name}-jobs"
  cluster_name = var.name
  # The model pools, then the handler pools (var.handler_pools), in one list: every per-pool
  # resource (repository, queues, log group, alarms, task definition, IAM) iterates it.
  pool_names = concat(["cpu", "gpu"], sort(keys(var.handler_pools)))
  ws_stage   = "live"

  # The ECS task definition families; FERRY_POOLS names them without a revision, so
  # RunTask always starts the latest ACTIVE one.
  task_families = { for p in local.pool_names : p => "${var.name}-executor-${p}" }

  # The WebSocket API's Management endpoint: where replies and progress events are posted.
  ws_management_endpoint = "https://${aws_apigatewayv2_api.ws.id}.execute-api.${var.region}.amazonaws.com/${local.ws_stage}"

  # Executors reach that endpoint only through the NAT gateway (it is public, and no VPC
  # endpoint serves a Regional API; see README.md "Networking"). Without NAT they are not
  # given it: they then mark their events `fanout = "stream"`, and the dispatcher Lambda
  # pushes them from the table's stream (lambda.tf's second stream filter).
  executor_ws_env = var.enable_nat_gateway ? { FERRY_WS_MANAGEMENT_ENDPOINT = local.ws_management_endpoint } : {}

  lambda_zip_dir = startswith(var.lambda_zip_dir, "/") ? var.lambda_zip_dir : "${path.module}/${var.lambda_zip_dir}"

  # The catalog, minified (Lambda environments are limited to 4 KB in all).
  models_json = jsonencode(jsondecode(var.models_catalog_json))

  # Fargate Spot has no ARM64 capacity. No `base`: RunTask applies a strategy to each call,
  # and the dispatcher usually launches one task per call, so a base of 1 on FARGATE would
  # put nearly every executor on-demand. Interrupted Spot executors get SIGTERM and release
  # their jobs within the grace period; another executor picks them up.
  cpu_capacity_providers = var.cpu_use_spot && var.cpu_architecture == "X86_64" ? [
    { name = "FARGATE_SPOT", weight = 3, base = 0 },
    { name = "FARGATE", weight = 1, base = 0 },
    ] : [
    { name = "FARGATE", weight = 1, base = 0 },
  ]

  gpu_capacity_providers = [{ name = aws_ecs_capacity_provider.gpu.name, weight = 1, base = 0 }]

  pool_capacity_providers = merge(
    { cpu = local.cpu_capacity_providers, gpu = local.gpu_capacity_providers },
    { for p, h in var.handler_pools : p => h.gpu ? local.gpu_capacity_providers : local.cpu_capacity_providers },
  )

  # Each pool's scaling and pricing, model pools and handler pools alike.
  pool_settings = merge({ cpu = var.pools.cpu, gpu = var.pools.gpu }, var.handler_pools)

  # The registered task definition family of each pool.
  pool_task_definitions = merge(
    { cpu = aws_ecs_task_definition.executor_cpu.family, gpu = aws_ecs_task_definition.executor_gpu.family },
    { for p, _ in var.handler_pools : p => aws_ecs_task_definition.handler[p].family },
  )

  # FERRY_POOLS, exactly the shape ferry_core::pool::PoolConfig reads (unknown fields are
  # refused there, so nothing else goes in).
  pools_json = jsonencode({
    pools = [for p in local.pool_names : {
      name           = p
      min_warm       = local.pool_settings[p].min_warm
      max_tasks      = local.pool_settings[p].max_tasks
      jobs_per_task  = local.pool_settings[p].jobs_per_task
      idle_timeout_s = local.pool_settings[p].idle_timeout_s
      queue_url      = aws_sqs_queue.work[p].url
      dlq_url        = aws_sqs_queue.dlq[p].url
      ecs = {
        cluster            = aws_ecs_cluster.this.name
        task_definition    = local.pool_task_definitions[p]
        container          = "executor"
        capacity_providers = local.pool_capacity_providers[p]
        subnets            = aws_subnet.private[*].id
        security_groups    = [aws_security_group.tasks.id]
        assign_public_ip   = false
      }
      hourly_price = local.pool_settings[p].hourly_price
      cold_start_s = local.pool_settings[p].cold_start_s
    }]
  })

  # Lambda environments: exactly what each binary reads (functions/*/src/main.rs).
  api_env = {
    FERRY_TABLE                  = aws_dynamodb_table.jobs.name
    FERRY_QUEUE_URL              = aws_sqs_queue.work["cpu"].url
    FERRY_DLQ_URL                = aws_sqs_queue.dlq["cpu"].url
    FERRY_MODELS                 = local.models_json
    FERRY_POOLS                  = local.pools_json
    FERRY_WS_MANAGEMENT_ENDPOINT = local.ws_management_endpoint
    FERRY_RESULTS_BUCKET         = aws_s3_bucket.results.bucket
    FERRY_WEBHOOK_QUEUE_URL      = aws_sqs_queue.webhooks.url
    FERRY_WEBHOOK_KEY_ID         = aws_kms_key.main.arn
    RUST_LOG                     = var.rust_log
  }

  # The api Lambda's second function, behind its Function URL (lambda.tf): the same
  # environment, answering in response-streaming mode.
  api_stream_env = merge(local.api_env, {
    FERRY_API_INVOKE_MODE = "RESPONSE_STREAM"
  })

  ws_env = {
    FERRY_TABLE                  = aws_dynamodb_table.jobs.name
    FERRY_WS_MANAGEMENT_ENDPOINT = local.ws_management_endpoint
    RUST_LOG                     = var.rust_log
  }

  dispatcher_env = {
    FERRY_TABLE                  = aws_dynamodb_table.jobs.name
    FERRY_QUEUE_URL              = aws_sqs_queue.work["cpu"].url
    FERRY_DLQ_URL                = aws_sqs_queue.dlq["cpu"].url
    FERRY_MODELS                 = local.models_json
    FERRY_POOLS                  = local.pools_json
    FERRY_WS_MANAGEMENT_ENDPOINT = local.ws_management_endpoint
    FERRY_CANCEL_GRACE_S         = tostring(var.cancel_grace_s)
    FERRY_WEBHOOK_QUEUE_URL      = aws_sqs_queue.webhooks.url
    RUST_LOG                     = var.rust_log
  }

  # The webhooks Lambda: the deliveries it reads and records, the queue it sets each
  # message's retry delay on, the results bucket whose output URLs it signs in the job
  # views it posts, and the key the tenants' signing secrets are sealed with.
  webhooks_env = {
    FERRY_TABLE             = aws_dynamodb_table.jobs.name
    FERRY_WEBHOOK_QUEUE_URL = aws_sqs_queue.webhooks.url
    FERRY_RESULTS_BUCKET    = aws_s3_bucket.results.bucket
    FERRY_WEBHOOK_KEY_ID    = aws_kms_key.main.arn
    RUST_LOG                = var.rust_log
  }

  # Executor environments (executor/README.md's flags), one literal map per pool so each is
  # readable as it is. AWS_REGION is set because the ECS agent on EC2 does not set it
  # (Fargate does) and the GPU instances block the tasks' access to instance metadata, where
  # the SDK would otherwise look the region up. FERRY_WS_MANAGEMENT_ENDPOINT is added with
  # NAT only (executor_ws_env above).
  executor_env_base = {
    cpu = {
      AWS_REGION                 = var.region
      FERRY_TABLE                = aws_dynamodb_table.jobs.name
      FERRY_QUEUE_URL            = aws_sqs_queue.work["cpu"].url
      FERRY_RESULTS_BUCKET       = aws_s3_bucket.results.bucket
      FERRY_API_URL              = aws_apigatewayv2_api.http.api_endpoint
      FERRY_POOL                 = "cpu"
      FERRY_DEVICE               = "cpu"
      FERRY_MODELS               = local.models_json
      FERRY_CONCURRENCY          = tostring(var.pools.cpu.jobs_per_task)
      FERRY_IDLE_TIMEOUT_S       = tostring(var.pools.cpu.idle_timeout_s)
      FERRY_GRACE_PERIOD_S       = "25"
      FERRY_LEASE_S              = "60"
      FERRY_VISIBILITY_TIMEOUT_S = "120"
      FERRY_MODEL_CACHE          = "/models"
      RUST_LOG                   = var.rust_log
    }
    gpu = {
      AWS_REGION                 = var.region
      FERRY_TABLE                = aws_dynamodb_table.jobs.name
      FERRY_QUEUE_URL            = aws_sqs_queue.work["gpu"].url
      FERRY_RESULTS_BUCKET       = aws_s3_bucket.results.bucket
      FERRY_API_URL              = aws_apigatewayv2_api.http.api_endpoint
      FERRY_POOL                 = "gpu"
      FERRY_DEVICE               = "cuda"
      FERRY_MODELS               = local.models_json
      FERRY_CONCURRENCY          = tostring(var.pools.gpu.jobs_per_task)
      FERRY_IDLE_TIMEOUT_S       = tostring(var.pools.gpu.idle_timeout_s)
      FERRY_GRACE_PERIOD_S       = "25"
      FERRY_LEASE_S              = "60"
      FERRY_VISIBILITY_TIMEOUT_S = "120"
      FERRY_MODEL_CACHE          = "/models"
      RUST_LOG                   = var.rust_log
    }
  }
  # A handler pool's executors: the same settings, for their own queue and pool.
  handler_env = { for p, h in var.handler_pools : p => merge(local.executor_env_base[h.gpu ? "gpu" : "cpu"], {
    FERRY_QUEUE_URL      = aws_sqs_queue.work[p].url
    FERRY_POOL           = p
    FERRY_CONCURRENCY    = tostring(h.jobs_per_task)
    FERRY_IDLE_TIMEOUT_S = tostring(h.idle_timeout_s)
  }) }
  executor_env = { for p, env in merge(local.executor_env_base, local.handler_env) : p => merge(env, local.executor_ws_env) }
}

# `terraform test` (after `terraform init`): plans and applies against a mocked AWS
# provider, so it needs no credentials and creates nothing. It checks the contract with
# the code (what the Lambdas and executors are told), the networking choices, and that
# bad inputs are refused. The fixtures are placeholders for the Lambda zips.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_availability_zones" {
    defaults = { names = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1e"] }
  }
  mock_data "aws_ec2_instance_type_offerings" {
    defaults = { locations = ["us-east-1e", "us-east-1c", "us-east-1b"] }
  }
  mock_data "aws_ssm_parameter" {
    defaults = { insecure_value = "ami-0123456789abcdef0" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_resource "aws_sqs_queue" {
    defaults = { url = "https://sqs.us-east-1.amazonaws.com/123456789012/q", arn = "arn:aws:sqs:us-east-1:123456789012:q" }
  }
  mock_resource "aws_apigatewayv2_api" {
    defaults = { id = "abc123", execution_arn = "arn:aws:execute-api:us-east-1:123456789012:abc123", api_endpoint = "https://abc123.execute-api.us-east-1.amazonaws.com" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/r" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:us-east-1:123456789012:log-group:g" }
  }
  mock_resource "aws_iam_instance_profile" {
    defaults = { arn = "arn:aws:iam::123456789012:instance-profile/p" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:cluster/ferry" }
  }
  mock_resource "aws_sns_topic" {
    defaults = { arn = "arn:aws:sns:us-east-1:123456789012:t" }
  }
  mock_resource "aws_autoscaling_group" {
    defaults = { arn = "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:x:autoScalingGroupName/g" }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { arn = "arn:aws:s3:::b" }
  }
  mock_resource "aws_ecr_repository" {
    defaults = { arn = "arn:aws:ecr:us-east-1:123456789012:repository/r" }
  }
  mock_resource "aws_cloudwatch_event_rule" {
    defaults = { arn = "arn:aws:events:us-east-1:123456789012:rule/r" }
  }
  mock_resource "aws_ecs_capacity_provider" {
    defaults = { arn = "arn:aws:ecs:us-east-1:123456789012:capacity-provider/c" }
  }
  mock_resource "aws_lambda_function" {
    defaults = { arn = "arn:aws:lambda:us-east-1:123456789012:function:f", invoke_arn = "arn:aws:apigateway:us-east-1:lambda:path/2015-03-31/functions/arn:aws:lambda:us-east-1:123456789012:function:f/invocations" }
  }
  mock_resource "aws_dynamodb_table" {
    defaults = { arn = "arn:aws:dynamodb:us-east-1:123456789012:table/ferry-jobs", stream_arn = "arn:aws:dynamodb:us-east-1:123456789012:table/ferry-jobs/stream/2026" }
  }
  mock_resource "aws_launch_template" {
    defaults = { id = "lt-0123456789abcdef0" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:us-east-1:123456789012:key/k" }
  }
}

variables {
  lambda_zip_dir = "tests/fixtures"
}

run "defaults" {
  command = apply

  assert {
    condition     = jsonencode(local.azs) == jsonencode(["us-east-1b", "us-east-1c"])
    error_message = "The first two zones (by name) that offer the GPU type: ${jsonencode(local.azs)}"
  }
  assert {
    condition     = length(aws_vpc_endpoint.interface) == 8 && length(aws_nat_gateway.this) == 0 && length(aws_subnet.public) == 0
    error_message = "Default: eight interface endpoints, no NAT, no public subnets."
  }
  assert {
    condition     = !contains(keys(local.executor_env["gpu"]), "FERRY_WS_MANAGEMENT_ENDPOINT")
    error_message = "Without NAT the executors cannot reach the Management API and must not be given it."
  }
  assert {
    condition = jsonencode(sort(keys(aws_lambda_function.this["api"].environment[0].variables))) == jsonencode(sort([
      "FERRY_TABLE", "FERRY_QUEUE_URL", "FERRY_DLQ_URL", "FERRY_MODELS", "FERRY_POOLS", "FERRY_WS_MANAGEMENT_ENDPOINT", "FERRY_RESULTS_BUCKET", "FERRY_WEBHOOK_QUEUE_URL", "FERRY_WEBHOOK_KEY_ID", "RUST_LOG",
    ]))
    error_message = "api Lambda environment"
  }
  assert {
    condition = (aws_lambda_function.this["api_stream"].environment[0].variables["FERRY_API_INVOKE_MODE"] == "RESPONSE_STREAM"
      && aws_lambda_function_url.api_stream.invoke_mode == "RESPONSE_STREAM"
    && aws_lambda_function.this["api_stream"].timeout == 900)
    error_message = "The Function URL's function streams its responses for up to 15 minutes."
  }
  assert {
    condition     = jsonencode(sort(keys(aws_lambda_function.this["ws"].environment[0].variables))) == jsonencode(sort(["FERRY_TABLE", "FERRY_WS_MANAGEMENT_ENDPOINT", "RUST_LOG"]))
    error_message = "ws Lambda environment"
  }
  assert {
    condition = (aws_lambda_function.this["dispatcher"].environment[0].variables["FERRY_CANCEL_GRACE_S"] == "30"
    && contains(keys(aws_lambda_function.this["dispatcher"].environment[0].variables), "FERRY_WEBHOOK_QUEUE_URL"))
    error_message = "dispatcher environment"
  }
  assert {
    condition     = jsonencode(sort(keys(aws_lambda_function.this["webhooks"].environment[0].variables))) == jsonencode(sort(["FERRY_TABLE", "FERRY_WEBHOOK_QUEUE_URL", "FERRY_RESULTS_BUCKET", "FERRY_WEBHOOK_KEY_ID", "RUST_LOG"]))
    error_message = "webhooks Lambda environment"
  }
  assert {
    condition = (aws_lambda_event_source_mapping.webhooks.batch_size == 10
      && aws_lambda_event_source_mapping.webhooks.scaling_config[0].maximum_concurrency == 20
      && contains(aws_lambda_event_source_mapping.webhooks.function_response_types, "ReportBatchItemFailures")
      && aws_sqs_queue.webhooks.visibility_timeout_seconds >= aws_lambda_function.this["webhooks"].timeout
    && jsondecode(aws_sqs_queue.webhooks.redrive_policy).maxReceiveCount == 16)
    error_message = "The webhooks queue feeds the webhooks Lambda ten at a time, reporting failed items, and dead-letters after 16 receives."
  }
  assert {
    condition = jsonencode([for p in jsondecode(local.pools_json).pools : sort(keys(p))]) == jsonencode([for p in ["cpu", "gpu"] : sort([
      "name", "min_warm", "max_tasks", "jobs_per_task", "idle_timeout_s", "queue_url", "dlq_url", "ecs", "hourly_price", "cold_start_s",
    ])])
    error_message = "FERRY_POOLS has exactly the fields ferry_core::pool::PoolConfig reads: ${local.pools_json}"
  }
  assert {
    condition     = jsondecode(local.pools_json).pools[1].ecs.capacity_providers[0].name == "ferry-gpu-asg" && jsondecode(local.pools_json).pools[0].ecs.capacity_providers[0].name == "FARGATE_SPOT"
    error_message = "Capacity provider strategies: ${local.pools_json}"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.executor_gpu.container_definitions)[0].resourceRequirements[0].type == "GPU" && jsondecode(aws_ecs_task_definition.executor_gpu.container_definitions)[0].name == "executor"
    error_message = "The gpu executor container asks for a GPU and is named executor."
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.executor_cpu.container_definitions)[0].stopTimeout == 30 && jsondecode(aws_ecs_task_definition.executor_cpu.container_definitions)[0].readonlyRootFilesystem
    error_message = "stopTimeout 30 (grace 25) and a read-only root filesystem."
  }
  assert {
    condition     = aws_autoscaling_group.gpu.min_size == 0 && aws_autoscaling_group.gpu.desired_capacity == 0 && aws_autoscaling_group.gpu.protect_from_scale_in
    error_message = "The GPU group rests at zero, protected from scale-in."
  }
}

run "nat_arm_jwt_alarms" {
  command = apply

  variables {
    enable_nat_gateway  = true
    interface_endpoints = []
    cpu_architecture    = "ARM64"
    jwt_issuer          = "https://issuer.example.com"
    jwt_audience        = ["x"]
    alarm_email         = "oncall@example.com"
    enable_flow_logs    = true
  }

  assert {
    condition     = local.executor_env["gpu"]["FERRY_WS_MANAGEMENT_ENDPOINT"] == "https://abc123.execute-api.us-east-1.amazonaws.com/live"
    error_message = "With NAT the executors push progress to the Management API."
  }
  assert {
    condition     = length(aws_nat_gateway.this) == 1 && length(aws_subnet.public) == 2
    error_message = "NAT: one gateway, two public subnets."
  }
  assert {
    condition     = jsonencode(local.cpu_capacity_providers) == jsonencode([{ name = "FARGATE", weight = 1, base = 0 }])
    error_message = "ARM64 has no Fargate Spot."
  }
  assert {
    condition     = aws_apigatewayv2_route.http["GET /v1/jobs"].authorization_type == "JWT" && aws_apigatewayv2_route.http["GET /healthz"].authorization_type == "NONE"
    error_message = "The JWT authorizer guards /v1 routes only."
  }
  assert {
    condition     = length(aws_sns_topic.alarms) == 1 && length(aws_cloudwatch_metric_alarm.dlq_not_empty["gpu"].alarm_actions) == 1
    error_message = "Alarms notify the topic."
  }
}

run "no_nat_needs_endpoints" {
  command = plan
  variables {
    interface_endpoints = ["sqs"]
  }
  expect_failures = [aws_vpc.this]
}

run "catalog_over_lambda_env_limit" {
  command = plan
  variables {
    models_catalog_json = jsonencode({ models = [for i in range(60) : { id = "model-number-${i}", task = "text-generation", pool = "gpu", s3_uri = "s3://bucket/models/model-number-${i}" }] })
  }
  expect_failures = [aws_lambda_function.this]
}

run "reserved_name" {
  command = plan
  variables {
    name = "ecs-thing"
  }
  expect_failures = [var.name]
}

run "unknown_pool_in_catalog" {
  command = plan
  variables {
    models_catalog_json = "{\"models\":[{\"id\":\"m\",\"task\":\"text-generation\",\"pool\":\"tpu\"}]}"
  }
  expect_failures = [var.models_catalog_json]
}

run "bad_retention" {
  command = plan
  variables {
    log_retention_days = 31
  }
  expect_failures = [var.log_retention_days]
}

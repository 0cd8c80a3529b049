# What clients, the CLI and the next steps of docs/DEPLOY.md need.

output "http_api_url" {
  description = "Base URL of the HTTP API (ferry --url, FERRY_URL)."
  value       = aws_apigatewayv2_api.http.api_endpoint
}

output "openai_stream_base_url" {
  description = "OpenAI clients' base_url for streaming and long calls: the api Lambda's Function URL in response-streaming mode (docs/OPENAI.md)."
  value       = "${trimsuffix(aws_lambda_function_url.api_stream.function_url, "/")}/openai/v1"
}

output "function_url" {
  description = "The api Lambda's Function URL (the whole API, streaming, up to 15 minutes a call)."
  value       = aws_lambda_function_url.api_stream.function_url
}

output "websocket_url" {
  description = "WebSocket API URL (ferry watch --ws-url, FERRY_WS_URL)."
  value       = aws_apigatewayv2_stage.ws.invoke_url
}

output "websocket_management_endpoint" {
  description = "The WebSocket API's Management endpoint (FERRY_WS_MANAGEMENT_ENDPOINT)."
  value       = local.ws_management_endpoint
}

output "table_name" {
  description = "The jobs table (FERRY_TABLE, for `ferry aws create-key`)."
  value       = aws_dynamodb_table.jobs.name
}

output "work_queue_urls" {
  description = "Work queue URL per pool."
  value       = { for p in local.pool_names : p => aws_sqs_queue.work[p].url }
}

output "dead_letter_queue_urls" {
  description = "Dead-letter queue URL per pool."
  value       = { for p in local.pool_names : p => aws_sqs_queue.dlq[p].url }
}

output "webhook_queue_url" {
  description = "The webhooks queue (FERRY_WEBHOOK_QUEUE_URL): deliveries the webhooks Lambda sends."
  value       = aws_sqs_queue.webhooks.url
}

output "webhook_dead_letter_queue_url" {
  description = "The webhooks queue's dead-letter queue: deliveries whose retries ran out."
  value       = aws_sqs_queue.webhooks_dlq.url
}

output "cluster_name" {
  description = "The ECS cluster executors run in."
  value       = aws_ecs_cluster.this.name
}

output "ecr_repository_urls" {
  description = "Executor image repository per pool (push IMAGE:TAG here)."
  value       = { for p in local.pool_names : p => aws_ecr_repository.executor[p].repository_url }
}

output "models_bucket" {
  description = "The models bucket (catalog entries use s3_uri = s3://BUCKET/models/NAME)."
  value       = aws_s3_bucket.models.bucket
}

output "gpu_autoscaling_group" {
  description = "The GPU Auto Scaling group (rests at 0 instances)."
  value       = aws_autoscaling_group.gpu.name
}

output "lambda_function_names" {
  description = "The api, api_stream, ws, dispatcher and webhooks functions."
  value       = { for k, f in aws_lambda_function.this : k => f.function_name }
}

output "kms_key_arn" {
  description = "The deployment's customer managed key (table, logs, models bucket, alarm topic)."
  value       = aws_kms_key.main.arn
}

output "executor_push_progress" {
  description = "Whether executors push live progress to WebSocket clients (needs enable_nat_gateway)."
  value       = var.enable_nat_gateway
}

output "availability_zones" {
  description = "The two AZs in use; copy them into availability_zones to pin them (an automatic pick can change when AWS offers gpu_instance_type in more zones)."
  value       = local.azs
}

output "results_bucket" {
  description = "The results bucket: job inputs and outputs over 64 KiB (inputs/, outputs/), expired after results_expire_days."
  value       = aws_s3_bucket.results.bucket
}

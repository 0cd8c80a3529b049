# The Lambdas (functions/*): Rust binaries on provided.al2023, arm64, from the zips
# `cargo lambda build --profile lambda-release --arm64 --output-format zip --bin api --bin ws --bin dispatcher --bin webhooks`
# writes to target/lambda/<bin>/bootstrap.zip.
#
# - api: every HTTP API route (apigw_http.tf). 29 s: API Gateway cuts HTTP integrations at
#   30 s, and `Prefer: wait` is capped at 25 s (FERRY_MAX_WAIT_S).
# - api_stream: the same binary and routes behind a Lambda Function URL in response-streaming
#   mode (FERRY_API_INVOKE_MODE=RESPONSE_STREAM): the OpenAI-compatible routes' server-sent
#   events as they are written, for up to Lambda's 15 minutes (docs/OPENAI.md). API
#   Gateway's HTTP API can do neither: it buffers responses and stops at 30 s.
# - ws: every WebSocket route (apigw_ws.tf); replies are posted to the connection.
# - dispatcher: the jobs table's stream (new queued jobs: launch within seconds) and a
#   one-minute schedule (every pool, plus the watchdog). Level-triggered, so safe to run
#   concurrently, and a dropped stream batch costs at most a minute.
# - webhooks: delivers webhooks from the webhooks queue (sqs.tf), ten messages a batch,
#   reporting the failed ones (ReportBatchItemFailures) so only they come back; a failed
#   delivery's retry delay is the message's own visibility (ChangeMessageVisibility, up to
#   12 h). At most 20 at once (the mapping's maximum concurrency), so a burst of deliveries
#   cannot take the account's whole concurrency from the other functions.
#
# Not in the VPC: they call only public AWS endpoints (DynamoDB, SQS, ECS, the Management
# API); inside the VPC they would need the NAT gateway or more endpoints.

locals {
  lambdas = {
    api        = { bin = "api", memory = var.api_memory_mb, timeout = 29, env = local.api_env }
    api_stream = { bin = "api", memory = var.api_memory_mb, timeout = 900, env = local.api_stream_env }
    ws         = { bin = "ws", memory = var.ws_memory_mb, timeout = 10, env = local.ws_env }
    dispatcher = { bin = "dispatcher", memory = var.dispatcher_memory_mb, timeout = 60, env = local.dispatcher_env }
    webhooks   = { bin = "webhooks", memory = var.webhooks_memory_mb, timeout = 60, env = local.webhooks_env }
  }
}

resource "aws_cloudwatch_log_group" "lambda" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days, so an idle deployment stays cheap); set 365 or more where your policy requires a year.
  for_each = local.lambdas

  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_117:Deliberately outside the VPC: the functions call only public AWS APIs, including the WebSocket Management API, which no VPC endpoint reaches; in a VPC they would need a NAT gateway.
  #checkov:skip=CKV_AWS_116:No DLQ: api and ws are invoked synchronously (the caller gets the error), the dispatcher is level-triggered, so a failed scheduled run is simply redone by the next one a minute later, and webhooks is fed by the webhooks queue, whose own DLQ keeps what it fails to deliver.
  #checkov:skip=CKV_AWS_173:The environment holds no secrets (table name, queue URLs, the model catalog, pool settings); Lambda encrypts it at rest with its AWS managed key.
  #checkov:skip=CKV_AWS_272:The zips are built by the operator with cargo lambda; there is no AWS Signer profile to verify them against.
  for_each = local.lambdas

  function_name    = "${var.name}-${each.key}"
  role             = aws_iam_role.lambda[each.key].arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = ["arm64"]
  filename         = "${local.lambda_zip_dir}/${each.value.bin}/bootstrap.zip"
  source_code_hash = filebase64sha256("${local.lambda_zip_dir}/${each.value.bin}/bootstrap.zip")
  memory_size      = each.value.memory
  timeout          = each.value.timeout

  reserved_concurrent_executions = each.key == "dispatcher" ? var.dispatcher_reserved_concurrency : -1

  environment {
    variables = each.value.env
  }

  # The binaries log JSON lines themselves (ferry_core::telemetry); Text keeps them as
  # they are, so metric filters like `{ $.fields.message = "launch failed" }` match.
  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.lambda[each.key].name
  }

  tracing_config {
    mode = var.enable_xray ? "Active" : "PassThrough"
  }

  lifecycle {
    precondition {
      condition     = length(jsonencode(each.value.env)) < 4000
      error_message = "The ${each.key} Lambda's environment is over Lambda's 4 KB limit: shorten models_catalog_json (minified, it is FERRY_MODELS)."
    }
  }

  depends_on = [aws_iam_role_policy.lambda]
}

# ---------------------------------------------------------------------------- Function URL

# The streaming door to the API. Its auth type is NONE for the same reason the HTTP API has
# no authorizer: every route but /healthz and /openapi.json checks the Ferry API key in code
# (ferry_core::auth), and OpenAI clients send it as `Authorization: Bearer`, which IAM auth
# (SigV4) would replace. Throttling is the code's per-tenant rate limit, as behind the HTTP
# API; reserved concurrency is not set, like the api function's.
resource "aws_lambda_function_url" "api_stream" {
  #checkov:skip=CKV_AWS_258:Authentication is the Ferry API key, checked in code on every route (as behind the HTTP API, which has no authorizer either); OpenAI clients cannot sign SigV4.
  function_name      = aws_lambda_function.this["api_stream"].function_name
  authorization_type = "NONE"
  invoke_mode        = "RESPONSE_STREAM"
}

# Since October 2025 a Function URL needs both permissions: lambda:InvokeFunctionUrl for
# the URL's auth type, and lambda:InvokeFunction limited to calls through a Function URL
# (`invoked_via_function_url`, in recent 6.x releases of the provider: `terraform init -upgrade`).
resource "aws_lambda_permission" "api_stream_url" {
  #checkov:skip=CKV_AWS_301:A public Function URL is the point (OpenAI clients on the internet, as the HTTP API); limited to the URL's NONE auth type, and every route checks the Ferry API key in code.
  statement_id           = "AllowFunctionUrl"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.this["api_stream"].function_name
  principal              = "*"
  function_url_auth_type = "NONE"
}

resource "aws_lambda_permission" "api_stream_invoke" {
  #checkov:skip=CKV_AWS_301:Only through the Function URL (invoked_via_function_url), which AWS requires beside InvokeFunctionUrl; the API key is checked in code.
  statement_id             = "AllowInvokeThroughFunctionUrl"
  action                   = "lambda:InvokeFunction"
  function_name            = aws_lambda_function.this["api_stream"].function_name
  principal                = "*"
  invoked_via_function_url = true
}

# ---------------------------------------------------------------------------- dispatcher triggers

# Two kinds of INSERT reach the function (the filters are evaluated by Lambda, so other
# writes to the table cost no invocation): new jobs (their pool is reconciled at once; jobs
# queued again by the watchdog or a retry are MODIFYs, which the one-minute schedule picks
# up), and progress events that executors marked `fanout = "stream"` because they cannot
# reach the Management API (no NAT): the dispatcher pushes those to the subscribers. And
# every write of a job that has a webhook (its `webhook` attribute), INSERT or MODIFY:
# the dispatcher compares the old and new images and queues the deliveries the change
# calls for (started, output, completed) on the webhooks queue.
resource "aws_lambda_event_source_mapping" "dispatcher_stream" {
  event_source_arn                   = aws_dynamodb_table.jobs.stream_arn
  function_name                      = aws_lambda_function.this["dispatcher"].arn
  starting_position                  = "LATEST"
  batch_size                         = 100
  maximum_batching_window_in_seconds = 1

  # Dispatch is level-triggered (a dropped batch costs at most a minute), but queuing a
  # webhook delivery is not: the handler fails the batch when it cannot queue one, and it is
  # retried, halved each time to isolate a bad record, for up to an hour before it is
  # dropped rather than left blocking newer records for the stream's 24 h.
  maximum_retry_attempts         = 10
  maximum_record_age_in_seconds  = 3600
  bisect_batch_on_function_error = true

  filter_criteria {
    filter {
      pattern = jsonencode({
        eventName = ["INSERT"]
        dynamodb  = { NewImage = { pk = { S = [{ prefix = "job#" }] } } }
      })
    }
    filter {
      pattern = jsonencode({
        eventName = ["INSERT"]
        dynamodb  = { NewImage = { pk = { S = [{ prefix = "evt#" }] }, fanout = { S = ["stream"] } } }
      })
    }
    filter {
      pattern = jsonencode({
        eventName = ["INSERT", "MODIFY"]
        dynamodb  = { NewImage = { pk = { S = [{ prefix = "job#" }] }, webhook = { S = [{ exists = true }] } } }
      })
    }
  }

  depends_on = [aws_iam_role_policy.lambda]
}

resource "aws_cloudwatch_event_rule" "dispatcher_schedule" {
  name                = "${var.name}-dispatcher"
  description         = "Ferry: reconcile every pool and run the watchdog"
  schedule_expression = "rate(1 minute)"
}

resource "aws_cloudwatch_event_target" "dispatcher_schedule" {
  rule = aws_cloudwatch_event_rule.dispatcher_schedule.name
  arn  = aws_lambda_function.this["dispatcher"].arn

  retry_policy {
    maximum_retry_attempts       = 0 # the next minute's run does the same work
    maximum_event_age_in_seconds = 60
  }
}

# Asynchronous invocations (the schedule) are not retried by Lambda either.
resource "aws_lambda_function_event_invoke_config" "dispatcher" {
  function_name                = aws_lambda_function.this["dispatcher"].function_name
  maximum_retry_attempts       = 0
  maximum_event_age_in_seconds = 60
}

resource "aws_lambda_permission" "dispatcher_schedule" {
  statement_id  = "AllowEventBridgeSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this["dispatcher"].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.dispatcher_schedule.arn
}

# ---------------------------------------------------------------------------- webhooks trigger

# The webhooks queue feeds the webhooks function. The function reports which messages of a
# batch failed (ReportBatchItemFailures): those come back after the visibility it set on
# each, the others are deleted; after 16 receives a message goes to the webhooks DLQ.
# The queue's visibility (60 s) is at least the function's timeout, as Lambda requires.
resource "aws_lambda_event_source_mapping" "webhooks" {
  event_source_arn                   = aws_sqs_queue.webhooks.arn
  function_name                      = aws_lambda_function.this["webhooks"].arn
  batch_size                         = 10
  maximum_batching_window_in_seconds = 1
  function_response_types            = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = 20
  }

  depends_on = [aws_iam_role_policy.lambda]
}

# The three Lambdas (functions/*): Rust binaries on provided.al2023, arm64, from the zips
# `cargo lambda build --profile lambda-release --arm64 --output-format zip --bin api --bin ws --bin dispatcher`
# writes to target/lambda/<bin>/bootstrap.zip.
#
# - api: every HTTP API route (apigw_http.tf). 29 s: API Gateway cuts HTTP integrations at
#   30 s, and `Prefer: wait` is capped at 25 s (FERRY_MAX_WAIT_S).
# - ws: every WebSocket route (apigw_ws.tf); replies are posted to the connection.
# - dispatcher: the jobs table's stream (new queued jobs: launch within seconds) and a
#   one-minute schedule (every pool, plus the watchdog). Level-triggered, so safe to run
#   concurrently, and a dropped stream batch costs at most a minute.
#
# Not in the VPC: they call only public AWS endpoints (DynamoDB, SQS, ECS, the Management
# API); inside the VPC they would need the NAT gateway or more endpoints.

locals {
  lambdas = {
    api        = { memory = var.api_memory_mb, timeout = 29, env = local.api_env }
    ws         = { memory = var.ws_memory_mb, timeout = 10, env = local.ws_env }
    dispatcher = { memory = var.dispatcher_memory_mb, timeout = 60, env = local.dispatcher_env }
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
  #checkov:skip=CKV_AWS_116:No DLQ: api and ws are invoked synchronously (the caller gets the error), and the dispatcher is level-triggered, so a failed scheduled run is simply redone by the next one a minute later.
  #checkov:skip=CKV_AWS_173:The environment holds no secrets (table name, queue URLs, the model catalog, pool settings); Lambda encrypts it at rest with its AWS managed key.
  #checkov:skip=CKV_AWS_272:The zips are built by the operator with cargo lambda; there is no AWS Signer profile to verify them against.
  for_each = local.lambdas

  function_name    = "${var.name}-${each.key}"
  role             = aws_iam_role.lambda[each.key].arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = ["arm64"]
  filename         = "${local.lambda_zip_dir}/${each.key}/bootstrap.zip"
  source_code_hash = filebase64sha256("${local.lambda_zip_dir}/${each.key}/bootstrap.zip")
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

# ---------------------------------------------------------------------------- dispatcher triggers

# Two kinds of INSERT reach the function (the filters are evaluated by Lambda, so other
# writes to the table cost no invocation): new jobs (their pool is reconciled at once; jobs
# queued again by the watchdog or a retry are MODIFYs, which the one-minute schedule picks
# up), and progress events that executors marked `fanout = "stream"` because they cannot
# reach the Management API (no NAT): the dispatcher pushes those to the subscribers.
resource "aws_lambda_event_source_mapping" "dispatcher_stream" {
  event_source_arn                   = aws_dynamodb_table.jobs.stream_arn
  function_name                      = aws_lambda_function.this["dispatcher"].arn
  starting_position                  = "LATEST"
  batch_size                         = 100
  maximum_batching_window_in_seconds = 1

  # Level-triggered: a batch that keeps failing is better dropped than retried for the
  # stream's 24 h, blocking newer records behind it.
  maximum_retry_attempts        = 2
  maximum_record_age_in_seconds = 300

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

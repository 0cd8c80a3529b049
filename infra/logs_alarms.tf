# Executor log groups, and the alarms that say a deployment needs a look:
#
#   NAME-POOL-dlq-not-empty        a job's message was dead-lettered (5 receives, no finish)
#   NAME-webhooks-dlq-not-empty    a webhook delivery was dead-lettered (16 receives: its
#                                  retries ran out, or the webhooks Lambda kept failing)
#   NAME-POOL-queue-stuck          the oldest queued message is older than the threshold
#                                  (no executor is taking work: launches failing, quota,
#                                  image pull errors; see docs/DEPLOY.md "Troubleshooting")
#   NAME-dispatcher-errors         the dispatcher Lambda itself failed
#   NAME-launch-failures           RunTask failed (no GPU capacity, throttling, a missing
#                                  task definition): the dispatcher's "launch failed" lines
#
# With alarm_email set they notify an SNS topic (encrypted with the deployment's key).
# Log groups of the Lambdas and APIs are next to them (lambda.tf, apigw_*.tf).

resource "aws_cloudwatch_log_group" "executor" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days, so an idle deployment stays cheap); set 365 or more where your policy requires a year.
  for_each = toset(local.pool_names)

  name              = "/ecs/${var.name}/executor-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_sns_topic" "alarms" {
  count = var.alarm_email == "" ? 0 : 1

  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.main.arn
}

resource "aws_sns_topic_subscription" "alarms_email" {
  count = var.alarm_email == "" ? 0 : 1

  topic_arn = aws_sns_topic.alarms[0].arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  alarm_actions = aws_sns_topic.alarms[*].arn
}

resource "aws_cloudwatch_metric_alarm" "dlq_not_empty" {
  for_each = toset(local.pool_names)

  alarm_name          = "${var.name}-${each.key}-dlq-not-empty"
  alarm_description   = "A ${each.key} job's message reached the dead-letter queue; the watchdog marks the job failed (dead_letter). Read the executor logs for that job."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq[each.key].name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "webhooks_dlq_not_empty" {
  alarm_name          = "${var.name}-webhooks-dlq-not-empty"
  alarm_description   = "A webhook delivery's message reached the webhooks dead-letter queue: its retries ran out or the webhooks Lambda kept failing on it. GET /v1/jobs/{id}/webhooks shows its attempts; read the webhooks Lambda's logs."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.webhooks_dlq.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "queue_stuck" {
  for_each = toset(local.pool_names)

  alarm_name          = "${var.name}-${each.key}-queue-stuck"
  alarm_description   = "The oldest ${each.key} job has waited over ${var.queue_age_alarm_threshold_s} s: no executor is taking work. GET /v1/pools shows last_error; queued jobs show queue_state.reason."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.work[each.key].name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = var.queue_age_alarm_threshold_s
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

resource "aws_cloudwatch_metric_alarm" "dispatcher_errors" {
  alarm_name          = "${var.name}-dispatcher-errors"
  alarm_description   = "The dispatcher Lambda failed (crash, timeout): executors may not launch and the watchdog may not run. See its log group."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.this["dispatcher"].function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# The dispatcher logs `tracing::warn!(pool, error, failures, backoff_ms, "launch failed")`
# as JSON ({"level":"WARN","fields":{"message":"launch failed","pool":...}}). No default
# value: the metric is published only when launches fail, so it costs nothing otherwise.
resource "aws_cloudwatch_log_metric_filter" "launch_failures" {
  name           = "${var.name}-launch-failures"
  log_group_name = aws_cloudwatch_log_group.lambda["dispatcher"].name
  pattern        = "{ $.fields.message = \"launch failed\" }"

  metric_transformation {
    name      = "LaunchFailures"
    namespace = "Ferry/${var.name}"
    value     = "1"
    unit      = "Count"
  }
}

resource "aws_cloudwatch_metric_alarm" "launch_failures" {
  alarm_name          = "${var.name}-launch-failures"
  alarm_description   = "ECS RunTask failed for a pool (no GPU capacity or quota, throttling, a missing task definition). `ferry pools` shows last_error and the backoff."
  namespace           = "Ferry/${var.name}"
  metric_name         = aws_cloudwatch_log_metric_filter.launch_failures.metric_transformation[0].name
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

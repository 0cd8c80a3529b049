# One work queue per pool, each with its own dead-letter queue, so a pool's backlog is its
# own (docs/SCALING.md). Messages carry a job id and attempt, never the input.
#
# - Visibility 120 s: an executor extends it at two thirds while a job runs
#   (FERRY_VISIBILITY_TIMEOUT_S), so a long job is never redelivered; a killed executor's
#   message comes back after at most 120 s.
# - After 5 receives without a delete, SQS moves the message to the DLQ, and the
#   dispatcher's watchdog marks its job failed (`dead_letter`) within a minute.
# - SQS-managed SSE (see kms.tf for why not the customer managed key).

resource "aws_sqs_queue" "dlq" {
  for_each = toset(local.pool_names)

  name                      = "${var.name}-work-${each.key}-dlq"
  message_retention_seconds = 1209600 # 14 days
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "work" {
  for_each = toset(local.pool_names)

  name                       = "${var.name}-work-${each.key}"
  visibility_timeout_seconds = 120
  message_retention_seconds  = 345600 # 4 days
  receive_wait_time_seconds  = 20     # long polling by default
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq[each.key].arn
    maxReceiveCount     = 5
  })
}

# Only the pool's own work queue may dead-letter into its DLQ.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  for_each = toset(local.pool_names)

  queue_url = aws_sqs_queue.dlq[each.key].id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.work[each.key].arn]
  })
}

# Webhook deliveries: one queue for the deployment, fed by the api (a redelivery) and the
# dispatcher (a job that finished), drained by the webhooks Lambda (lambda.tf). Messages
# carry a delivery's key, never the payload or the secret.
#
# - Visibility 60 s, the function's timeout: a batch that crashes comes back after a minute.
#   A delivery that failed is retried after the delay the function sets on its message
#   itself (ChangeMessageVisibility, up to SQS's 12 h).
# - After 16 receives SQS moves the message to the webhooks DLQ (the retries span about
#   28 h, so both queues keep messages for 14 days).
# - SQS-managed SSE, as the work queues.

resource "aws_sqs_queue" "webhooks_dlq" {
  name                      = "${var.name}-webhooks-dlq"
  message_retention_seconds = 1209600 # 14 days
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "webhooks" {
  name                       = "${var.name}-webhooks"
  visibility_timeout_seconds = 60
  message_retention_seconds  = 1209600 # 14 days: the retries span about 28 h
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.webhooks_dlq.arn
    maxReceiveCount     = 16 # ferry_core::deliver::MAX_RECEIVES: the eight tries and room to spare
  })
}

# Only the webhooks queue may dead-letter into its DLQ.
resource "aws_sqs_queue_redrive_allow_policy" "webhooks_dlq" {
  queue_url = aws_sqs_queue.webhooks_dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.webhooks.arn]
  })
}

# Refuse plain-HTTP access to every queue (the SDKs use HTTPS; this makes it a rule).
data "aws_iam_policy_document" "queue_tls_only" {
  for_each = merge(
    { for p in local.pool_names : "work-${p}" => aws_sqs_queue.work[p].arn },
    { for p in local.pool_names : "dlq-${p}" => aws_sqs_queue.dlq[p].arn },
    { "webhooks" = aws_sqs_queue.webhooks.arn, "webhooks-dlq" = aws_sqs_queue.webhooks_dlq.arn },
  )

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [each.value]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "tls_only" {
  for_each = merge(
    { for p in local.pool_names : "work-${p}" => aws_sqs_queue.work[p].id },
    { for p in local.pool_names : "dlq-${p}" => aws_sqs_queue.dlq[p].id },
    { "webhooks" = aws_sqs_queue.webhooks.id, "webhooks-dlq" = aws_sqs_queue.webhooks_dlq.id },
  )

  queue_url = each.value
  policy    = data.aws_iam_policy_document.queue_tls_only[each.key].json
}

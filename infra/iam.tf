# Roles, least privilege, one per component. Each role's permissions are one policy
# document, data.aws_iam_policy_document.<role>, listing exactly the calls its code makes
# (shared/aws/src: dynamo.rs, connections.rs, dynamo_fleet.rs, sqs.rs, ecs.rs,
# notifier.rs, s3.rs; executor/src/fetch.rs):
#
#   api         table, both work queues (send, depth), the webhooks queue (send: a
#               redelivery), ECS list/describe, Management API, results bucket (put
#               inputs/, get outputs/ for presigned URLs); the same for api_stream, the same
#               binary behind the Function URL (one document per function, differing only
#               in the log group)
#   ws          table, Management API
#   dispatcher  table + its stream, queues (send, depth; DLQs receive/delete; the webhooks
#               queue: send), ECS RunTask/List/Describe/Stop/Tag, PassRole to the executor
#               roles, Management API
#   webhooks    table (deliveries, their jobs, the tenants' secrets), the webhooks queue
#               (the event source mapping's receive/delete/depth; the retry delay is the
#               message's visibility), results bucket (get outputs/ for presigned URLs)
#   executor    table, work queues (the whole consumer side), models bucket, results bucket
#               (get inputs/, put outputs/), Management API
#   execution   ECR pull, executor log streams (ECS uses it to start the task)
#
# Each role's table statement is limited by dynamodb:LeadingKeys to the item kinds (the
# partition key's prefix: job#, evt#, idem#, apikey#, whsec#, whd#, whoff#, conn#, subs#, pool#,
# exec#; an index's for a query: tenant#, active#, executors#, whd#) its code reaches, so, for one, the executor
# cannot read or write API keys (apikey#) or idempotency bindings. tests/tests/infra_iam.rs
# records the keys each component's calls name and checks them against these lists.
#
# DynamoDB authorizes TransactWriteItems per item as PutItem/UpdateItem/DeleteItem/
# ConditionCheckItem (Ferry's transactions use only Put and Update items); there is no separate
# transaction action to grant. The table is
# encrypted with the deployment's key, which DynamoDB uses on the caller's behalf: each
# table role may use the key, but only through DynamoDB (kms:ViaService).

locals {
  table_resources      = [aws_dynamodb_table.jobs.arn, "${aws_dynamodb_table.jobs.arn}/index/*"]
  dynamodb_via         = "dynamodb.${var.region}.amazonaws.com"
  work_queue_arns      = [for p in local.pool_names : aws_sqs_queue.work[p].arn]
  dlq_arns             = [for p in local.pool_names : aws_sqs_queue.dlq[p].arn]
  webhooks_queue_arn   = aws_sqs_queue.webhooks.arn
  ws_connections_arn   = "${aws_apigatewayv2_api.ws.execution_arn}/${local.ws_stage}/POST/@connections/*"
  cluster_arn          = aws_ecs_cluster.this.arn
  cluster_task_arns    = "arn:${local.partition}:ecs:${var.region}:${local.account_id}:task/${local.cluster_name}/*"
  task_definition_arns = [for p in local.pool_names : "arn:${local.partition}:ecs:${var.region}:${local.account_id}:task-definition/${local.task_families[p]}:*"]
}

data "aws_iam_policy_document" "api" {
  for_each = toset(["api", "api_stream"])

  statement {
    sid       = "JobsTable"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query", "dynamodb:BatchGetItem"]
    resources = local.table_resources
    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["job#*", "idem#*", "evt#*", "apikey#*", "whsec#*", "whd#*", "whoff#*", "tenant#*", "pool#*", "executors#*", "conn#*", "subs#*"]
    }
  }
  statement {
    sid       = "JobsTableKeyThroughDynamoDB"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.dynamodb_via]
    }
  }
  statement {
    sid       = "EnqueueAndReadDepth"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
    resources = local.work_queue_arns
  }
  statement {
    sid       = "WebhookSecretsKey" # the tenants' signing secrets, sealed per tenant (shared/aws/src/kms.rs)
    actions   = ["kms:Encrypt", "kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:ferry:item"
      values   = ["whsec"]
    }
  }
  statement {
    sid       = "QueueWebhookDeliveries" # a redelivery
    actions   = ["sqs:SendMessage"]
    resources = [local.webhooks_queue_arn]
  }
  statement {
    sid       = "StoreLargeInputs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.results.arn}/inputs/*"]
  }
  statement {
    sid       = "ReadUploadedInputs" # POST /v1/inputs writes under inputs/ (above); a submit checks them, GET reads them
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.results.arn}/inputs/uploads/*"]
  }
  statement {
    sid       = "SignOutputUrls" # presigned GETs of outputs are authorized as this role's GetObject
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.results.arn}/outputs/*"]
  }
  statement {
    sid       = "ResultsKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
  statement {
    sid       = "PoolTasksForGetPools"
    actions   = ["ecs:ListTasks", "ecs:DescribeTasks"]
    resources = ["*"] # ListTasks has no narrower resource; the condition scopes both to the cluster
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [local.cluster_arn]
    }
  }
  statement {
    sid       = "PushToWebSocketConnections"
    actions   = ["execute-api:ManageConnections"]
    resources = [local.ws_connections_arn]
  }
  statement {
    sid       = "OwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda[each.key].arn}:*"]
  }
  dynamic "statement" {
    for_each = var.enable_xray ? [1] : []
    content {
      sid       = "XRay"
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      resources = ["*"] # X-Ray has no resource-level permissions
    }
  }
}

data "aws_iam_policy_document" "ws" {
  statement {
    sid       = "JobsTable" # connections and subscriptions are updates; replays read events in batches
    actions   = ["dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchGetItem"]
    resources = local.table_resources
    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["job#*", "evt#*", "apikey#*", "conn#*", "subs#*"]
    }
  }
  statement {
    sid       = "JobsTableKeyThroughDynamoDB"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.dynamodb_via]
    }
  }
  statement {
    sid       = "PushToWebSocketConnections"
    actions   = ["execute-api:ManageConnections"]
    resources = [local.ws_connections_arn]
  }
  statement {
    sid       = "OwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda["ws"].arn}:*"]
  }
  dynamic "statement" {
    for_each = var.enable_xray ? [1] : []
    content {
      sid       = "XRay"
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      resources = ["*"] # X-Ray has no resource-level permissions
    }
  }
}

data "aws_iam_policy_document" "dispatcher" {
  statement {
    sid       = "JobsTable"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query"]
    resources = local.table_resources
    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["job#*", "evt#*", "active#*", "pool#*", "executors#*", "conn#*", "subs#*", "whd#*"]
    }
  }
  statement {
    sid       = "JobsTableKeyThroughDynamoDB"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.dynamodb_via]
    }
  }
  statement {
    sid       = "JobsTableStream"
    actions   = ["dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:DescribeStream", "dynamodb:ListStreams"]
    resources = ["${aws_dynamodb_table.jobs.arn}/stream/*"]
  }
  statement {
    # Stream records are encrypted with the table's key. The Lambda poller's KMS calls are
    # not documented to carry a kms:ViaService value, so this one is scoped by key only:
    # the role can read nothing else encrypted under it (no S3, no log reads).
    sid       = "JobsTableStreamKey"
    actions   = ["kms:Decrypt", "kms:DescribeKey"]
    resources = [aws_kms_key.main.arn]
  }
  statement {
    sid       = "RequeueAndReadDepth"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
    resources = local.work_queue_arns
  }
  statement {
    sid       = "DrainDeadLetters"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage"]
    resources = local.dlq_arns
  }
  statement {
    sid       = "QueueWebhookDeliveries" # the deliveries a job's change calls for
    actions   = ["sqs:SendMessage"]
    resources = [local.webhooks_queue_arn]
  }
  statement {
    sid       = "LaunchExecutors"
    actions   = ["ecs:RunTask"]
    resources = local.task_definition_arns
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [local.cluster_arn]
    }
  }
  statement {
    sid       = "WatchAndStopExecutors"
    actions   = ["ecs:ListTasks", "ecs:DescribeTasks", "ecs:StopTask"]
    resources = ["*"] # ListTasks has no narrower resource; the condition scopes all three to the cluster
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [local.cluster_arn]
    }
  }
  statement {
    sid       = "TagTasksAtLaunch"
    actions   = ["ecs:TagResource"]
    resources = [local.cluster_task_arns]
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask"]
    }
  }
  statement {
    sid       = "PassExecutorRolesToEcs"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.executor.arn, aws_iam_role.execution.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
  statement {
    sid       = "PushToWebSocketConnections"
    actions   = ["execute-api:ManageConnections"]
    resources = [local.ws_connections_arn]
  }
  statement {
    sid       = "OwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda["dispatcher"].arn}:*"]
  }
  dynamic "statement" {
    for_each = var.enable_xray ? [1] : []
    content {
      sid       = "XRay"
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      resources = ["*"] # X-Ray has no resource-level permissions
    }
  }
}

# The webhooks Lambda: reads a delivery and its job, signs with the tenant's secrets,
# records the attempt, and notes an endpoint a 410 disabled. The queue's receive, delete
# and depth are the event source mapping's, made with this role; ChangeMessageVisibility
# is the function's own (a failed delivery's retry delay).
data "aws_iam_policy_document" "webhooks" {
  statement {
    sid       = "WebhookSecretsKey" # the tenants' signing secrets, sealed per tenant (shared/aws/src/kms.rs)
    actions   = ["kms:Encrypt", "kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:EncryptionContext:ferry:item"
      values   = ["whsec"]
    }
  }
  statement {
    sid       = "JobsTable" # a delivery (read, then its try recorded), its job, the tenant's secrets
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem"]
    resources = [aws_dynamodb_table.jobs.arn]
    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["job#*", "whd#*", "whoff#*", "whsec#*"]
    }
  }
  statement {
    sid       = "JobsTableKeyThroughDynamoDB"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.dynamodb_via]
    }
  }
  statement {
    sid = "ConsumeWebhookDeliveries"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
    ]
    resources = [local.webhooks_queue_arn]
  }
  statement {
    sid       = "SignOutputUrls" # presigned GETs of outputs are authorized as this role's GetObject
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.results.arn}/outputs/*"]
  }
  statement {
    sid       = "ResultsKeyThroughS3" # reading outputs only: no GenerateDataKey
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
  statement {
    sid       = "OwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda["webhooks"].arn}:*"]
  }
  dynamic "statement" {
    for_each = var.enable_xray ? [1] : []
    content {
      sid       = "XRay"
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      resources = ["*"] # X-Ray has no resource-level permissions
    }
  }
}

# The executor task role: what ferry-executor itself calls (both pools share it).
data "aws_iam_policy_document" "executor" {
  statement {
    sid       = "JobsTable" # DeleteItem: the heartbeat (exec#<id>) is deleted on exit, and gone connections
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    resources = local.table_resources
    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["job#*", "evt#*", "exec#*", "conn#*", "subs#*"]
    }
  }
  statement {
    sid       = "JobsTableKeyThroughDynamoDB"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = [local.dynamodb_via]
    }
  }
  statement {
    sid = "ConsumeWork" # SendMessage: a retried job is queued again by its executor
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:SendMessage",
    ]
    resources = local.work_queue_arns
  }
  statement {
    sid       = "ListModels"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.models.arn]
  }
  statement {
    sid       = "ReadModels"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.models.arn}/*"]
  }
  statement {
    sid       = "ReadLargeInputs"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.results.arn}/inputs/*"]
  }
  statement {
    sid       = "StoreLargeOutputs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.results.arn}/outputs/*"]
  }
  statement {
    sid       = "ModelsKeyThroughS3" # and the results bucket's: outputs are written encrypted
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
  statement {
    sid       = "PushProgressToWebSocketConnections"
    actions   = ["execute-api:ManageConnections"]
    resources = [local.ws_connections_arn]
  }
}

# The task execution role: what ECS needs to start an executor (Fargate, and the GPU
# instances' agent): pull its image, create its log stream.
data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions
  }
  statement {
    sid       = "PullExecutorImages"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = [for p in local.pool_names : aws_ecr_repository.executor[p].arn]
  }
  statement {
    sid       = "ExecutorLogStreams"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for p in local.pool_names : "${aws_cloudwatch_log_group.executor[p].arn}:*"]
  }
}

# VPC flow logs (only with enable_flow_logs).
data "aws_iam_policy_document" "flow_logs" {
  statement {
    sid       = "WriteFlowLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/vpc/${var.name}-flow-logs:*"]
  }
}

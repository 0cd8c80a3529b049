# The WebSocket API (docs/PROGRESS.md): clients connect with their API key
# (`Authorization: Bearer` or `?token=`), subscribe to jobs and receive their progress
# events. Every route goes to the ws Lambda; replies and events are posted back through
# the Management endpoint (https://{api-id}.execute-api.{region}.amazonaws.com/live),
# which the api and dispatcher Lambdas and, with NAT, the executors post to as well.
#
# $connect is answered by the Lambda itself (401 refuses the socket), so no API Gateway
# authorizer; the Lambda never posts from $connect (the connection is not open yet).

locals {
  ws_routes = ["$connect", "$disconnect", "$default", "subscribe", "unsubscribe", "ping"]
}

resource "aws_apigatewayv2_api" "ws" {
  name                       = "${var.name}-ws"
  description                = "Ferry WebSocket API (job progress)"
  protocol_type              = "WEBSOCKET"
  route_selection_expression = "$request.body.action"
}

resource "aws_apigatewayv2_integration" "ws" {
  api_id             = aws_apigatewayv2_api.ws.id
  integration_type   = "AWS_PROXY"
  integration_method = "POST"
  integration_uri    = aws_lambda_function.this["ws"].invoke_arn
}

resource "aws_apigatewayv2_route" "ws" {
  #checkov:skip=CKV_AWS_309:The ws Lambda authenticates $connect itself with a Ferry API key (refusing with 401 before the socket opens); later routes belong to an authenticated connection.
  for_each = toset(local.ws_routes)

  api_id             = aws_apigatewayv2_api.ws.id
  route_key          = each.key
  target             = "integrations/${aws_apigatewayv2_integration.ws.id}"
  authorization_type = "NONE"
}

resource "aws_cloudwatch_log_group" "ws_access" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days, so an idle deployment stays cheap); set 365 or more where your policy requires a year.
  name              = "/aws/apigateway/${var.name}-ws"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

# Created here, before the stage, so API Gateway's execution logs land in a group with a
# retention and this deployment's key instead of one it creates that never expires.
resource "aws_cloudwatch_log_group" "ws_execution" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days, so an idle deployment stays cheap); set 365 or more where your policy requires a year.
  name              = "API-Gateway-Execution-Logs_${aws_apigatewayv2_api.ws.id}/${local.ws_stage}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_apigatewayv2_stage" "ws" {
  #checkov:skip=CKV2_AWS_51:API Gateway offers mutual TLS only on custom domains of REST and HTTP APIs, not WebSocket APIs; clients authenticate with a Ferry API key on $connect.
  api_id      = aws_apigatewayv2_api.ws.id
  name        = local.ws_stage
  auto_deploy = true

  default_route_settings {
    throttling_burst_limit   = var.ws_throttling_burst_limit
    throttling_rate_limit    = var.ws_throttling_rate_limit
    logging_level            = var.ws_execution_log_level
    data_trace_enabled       = false # would log message bodies, i.e. job output
    detailed_metrics_enabled = false
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.ws_access.arn
    format = jsonencode({
      requestId        = "$context.requestId"
      ip               = "$context.identity.sourceIp"
      requestTime      = "$context.requestTime"
      eventType        = "$context.eventType"
      routeKey         = "$context.routeKey"
      status           = "$context.status"
      connectionId     = "$context.connectionId"
      messageDirection = "$context.messageDirection"
      integrationError = "$context.integrationErrorMessage"
      error            = "$context.error.message"
    })
  }

  depends_on = [aws_api_gateway_account.this, aws_cloudwatch_log_group.ws_execution]
}

resource "aws_lambda_permission" "ws_api" {
  statement_id  = "AllowWebSocketApi"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this["ws"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.ws.execution_arn}/*"
}

# ---------------------------------------------------------------------------- account setting

# WebSocket (and REST) stages log through a role set once per account and region; without
# it, creating a stage with logging fails ("CloudWatch Logs role ARN must be set in account
# settings"). Fresh accounts have none. It is shared by every API in the region, hence
# AWS's managed policy (logs on any API Gateway log group), not one scoped to ours.
data "aws_iam_policy_document" "apigateway_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["apigateway.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "apigateway_cloudwatch" {
  count = var.manage_apigateway_account ? 1 : 0

  name               = "${var.name}-apigateway-cloudwatch"
  assume_role_policy = data.aws_iam_policy_document.apigateway_assume.json
}

resource "aws_iam_role_policy_attachment" "apigateway_cloudwatch" {
  count = var.manage_apigateway_account ? 1 : 0

  role       = aws_iam_role.apigateway_cloudwatch[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs"
}

resource "aws_api_gateway_account" "this" {
  count = var.manage_apigateway_account ? 1 : 0

  cloudwatch_role_arn = aws_iam_role.apigateway_cloudwatch[0].arn

  depends_on = [aws_iam_role_policy_attachment.apigateway_cloudwatch]
}

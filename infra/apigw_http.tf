# The HTTP API (README.md "The HTTP API (v1)"): every route goes to the api Lambda, which
# does its own routing, authentication (API keys, `Authorization: Bearer`), validation and
# errors. The routes are still listed one by one so that API Gateway's metrics and access
# logs are per route, and so an optional JWT authorizer can guard the /v1 ones. `$default`
# sends everything else to the Lambda too, so unknown paths and wrong methods get the API's
# own JSON 404 and 405 (with `Allow`) rather than API Gateway's.

locals {
  http_routes = {
    "GET /healthz"              = { v1 = false }
    "GET /openapi.json"         = { v1 = false }
    "GET /v1/models"            = { v1 = true }
    "GET /v1/pools"             = { v1 = true }
    "POST /v1/jobs"             = { v1 = true }
    "GET /v1/jobs"              = { v1 = true }
    "GET /v1/jobs/{id}"         = { v1 = true }
    "POST /v1/jobs/{id}/cancel" = { v1 = true }
    "GET /v1/jobs/{id}/events"  = { v1 = true }
    "POST /v1/inputs"           = { v1 = true }
    "GET /v1/inputs/{id}"       = { v1 = true }
    "$default"                  = { v1 = false }
  }
  jwt_enabled = var.jwt_issuer != ""
}

resource "aws_apigatewayv2_api" "http" {
  name          = "${var.name}-http"
  description   = "Ferry HTTP API (jobs, models, pools)"
  protocol_type = "HTTP"
}

resource "aws_apigatewayv2_integration" "api" {
  api_id                 = aws_apigatewayv2_api.http.id
  integration_type       = "AWS_PROXY"
  integration_method     = "POST"
  integration_uri        = aws_lambda_function.this["api"].invoke_arn
  payload_format_version = "2.0" # the api Lambda reads payload v2 only
  timeout_milliseconds   = 30000
}

resource "aws_apigatewayv2_authorizer" "jwt" {
  count = local.jwt_enabled ? 1 : 0

  api_id           = aws_apigatewayv2_api.http.id
  name             = "${var.name}-jwt"
  authorizer_type  = "JWT"
  identity_sources = [var.jwt_identity_source]

  jwt_configuration {
    issuer   = var.jwt_issuer
    audience = var.jwt_audience
  }

  lifecycle {
    precondition {
      condition     = length(var.jwt_audience) > 0
      error_message = "jwt_audience must name at least one audience when jwt_issuer is set."
    }
  }
}

resource "aws_apigatewayv2_route" "http" {
  #checkov:skip=CKV_AWS_309:Authentication is the API's own: every /v1 route checks a Ferry API key in the Lambda (hashed keys in DynamoDB), /healthz and /openapi.json are public by design, and a JWT authorizer is added on /v1 when jwt_issuer is set.
  for_each = local.http_routes

  api_id    = aws_apigatewayv2_api.http.id
  route_key = each.key
  target    = "integrations/${aws_apigatewayv2_integration.api.id}"

  authorization_type = local.jwt_enabled && each.value.v1 ? "JWT" : "NONE"
  authorizer_id      = local.jwt_enabled && each.value.v1 ? aws_apigatewayv2_authorizer.jwt[0].id : null
}

resource "aws_cloudwatch_log_group" "http_access" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days, so an idle deployment stays cheap); set 365 or more where your policy requires a year.
  name              = "/aws/apigateway/${var.name}-http"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_apigatewayv2_stage" "http" {
  api_id      = aws_apigatewayv2_api.http.id
  name        = "$default"
  auto_deploy = true

  default_route_settings {
    throttling_burst_limit = var.http_throttling_burst_limit
    throttling_rate_limit  = var.http_throttling_rate_limit
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.http_access.arn
    format = jsonencode({
      requestId          = "$context.requestId"
      ip                 = "$context.identity.sourceIp"
      requestTime        = "$context.requestTime"
      httpMethod         = "$context.httpMethod"
      routeKey           = "$context.routeKey"
      path               = "$context.path"
      status             = "$context.status"
      protocol           = "$context.protocol"
      responseLength     = "$context.responseLength"
      responseLatency    = "$context.responseLatency"
      integrationLatency = "$context.integrationLatency"
      integrationStatus  = "$context.integrationStatus"
      integrationError   = "$context.integrationErrorMessage"
      authorizerError    = "$context.authorizer.error"
      userAgent          = "$context.identity.userAgent"
    })
  }
}

resource "aws_lambda_permission" "http_api" {
  statement_id  = "AllowHttpApi"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this["api"].function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.http.execution_arn}/*"
}

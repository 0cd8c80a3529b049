# Inputs. Everything has a default except what only you can know (nothing, for a first
# deployment: the defaults deploy the demo catalog on CPU). Pools, networking and alarms
# are below the basics. terraform.tfvars.example shows the ones people usually change.

# ---------------------------------------------------------------------------- basics

variable "name" {
  description = "Prefix of every resource name (table `NAME-jobs`, queues `NAME-work-POOL`, cluster `NAME`). Lowercase, 3-20 characters."
  type        = string
  default     = "ferry"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 lowercase letters, digits or '-', start with a letter and not end with '-' (it becomes part of S3 bucket and IAM role names)."
  }
  validation {
    # ECS refuses capacity provider names starting with these, and ours is NAME-gpu-asg.
    condition     = !can(regex("^(aws|ecs|fargate)", var.name))
    error_message = "name must not start with 'aws', 'ecs' or 'fargate' (ECS reserves those prefixes for capacity provider names)."
  }
}

variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like us-east-1 or eu-west-2."
  }
}

variable "tags" {
  description = "Extra tags for every resource (merged over Project and Deployment)."
  type        = map(string)
  default     = {}
}

variable "allow_destroy" {
  description = "Lets `terraform destroy` delete data: turns off the table's deletion protection, empties the models bucket and ECR repositories on delete, force-deletes the GPU Auto Scaling group. Set true, apply, then destroy."
  type        = bool
  default     = false
}

variable "log_retention_days" {
  description = "Retention of every log group (Lambdas, executors, API access logs)."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "rust_log" {
  description = "RUST_LOG for the Lambdas and executors (tracing EnvFilter syntax)."
  type        = string
  default     = "info"

  validation {
    condition     = length(trimspace(var.rust_log)) > 0
    error_message = "rust_log must not be empty (use \"info\")."
  }
}

variable "models_catalog_json" {
  description = "The model catalog (FERRY_MODELS) as JSON: {\"models\": [{\"id\", \"task\", \"pool\", \"s3_uri\"?, ...}]}. The default is the demo's tiny-llama, which has no weights on AWS: point entries at a model you uploaded to the models bucket (see docs/DEPLOY.md)."
  type        = string
  default     = "{\"models\":[{\"id\":\"tiny-llama\",\"task\":\"text-generation\",\"pool\":\"cpu\"}]}"

  validation {
    condition     = can(jsondecode(var.models_catalog_json).models[0].id)
    error_message = "models_catalog_json must be JSON of the form {\"models\": [{\"id\": ..., \"task\": ..., \"pool\": ...}, ...]} with at least one model."
  }
  validation {
    condition     = can([for m in jsondecode(var.models_catalog_json).models : m.id]) && alltrue([for m in try(jsondecode(var.models_catalog_json).models, []) : contains(["cpu", "gpu"], try(m.pool, "cpu"))])
    error_message = "Every model's pool must be \"cpu\" or \"gpu\" (the pools this configuration deploys)."
  }
}

# ---------------------------------------------------------------------------- Lambdas

variable "lambda_zip_dir" {
  description = "Where `cargo lambda build --profile lambda-release --arm64 --output-format zip` wrote the zips (DIR/api/bootstrap.zip, DIR/ws/..., DIR/dispatcher/...). Relative paths are relative to this directory (infra/)."
  type        = string
  default     = "../target/lambda"
}

variable "api_memory_mb" {
  description = "Memory of the api Lambda (more memory also means more CPU)."
  type        = number
  default     = 512

  validation {
    condition     = var.api_memory_mb >= 128 && var.api_memory_mb <= 10240
    error_message = "api_memory_mb must be between 128 and 10240."
  }
}

variable "ws_memory_mb" {
  description = "Memory of the ws Lambda."
  type        = number
  default     = 256

  validation {
    condition     = var.ws_memory_mb >= 128 && var.ws_memory_mb <= 10240
    error_message = "ws_memory_mb must be between 128 and 10240."
  }
}

variable "dispatcher_memory_mb" {
  description = "Memory of the dispatcher Lambda."
  type        = number
  default     = 256

  validation {
    condition     = var.dispatcher_memory_mb >= 128 && var.dispatcher_memory_mb <= 10240
    error_message = "dispatcher_memory_mb must be between 128 and 10240."
  }
}

variable "webhooks_memory_mb" {
  description = "Memory of the webhooks Lambda (it delivers webhooks from the webhooks queue)."
  type        = number
  default     = 256

  validation {
    condition     = var.webhooks_memory_mb >= 128 && var.webhooks_memory_mb <= 10240
    error_message = "webhooks_memory_mb must be between 128 and 10240."
  }
}

variable "dispatcher_reserved_concurrency" {
  description = "Reserved concurrency of the dispatcher; -1 reserves none (the default: new accounts often have a concurrency quota of 10, and any reservation there fails). The dispatcher is safe to run concurrently."
  type        = number
  default     = -1

  validation {
    condition     = var.dispatcher_reserved_concurrency >= -1 && floor(var.dispatcher_reserved_concurrency) == var.dispatcher_reserved_concurrency
    error_message = "dispatcher_reserved_concurrency must be -1 (none) or a whole number >= 0."
  }
}

variable "cancel_grace_s" {
  description = "FERRY_CANCEL_GRACE_S: how long a running job's cancel may go unacknowledged before the dispatcher stops its task."
  type        = number
  default     = 30

  validation {
    condition     = var.cancel_grace_s >= 1 && floor(var.cancel_grace_s) == var.cancel_grace_s
    error_message = "cancel_grace_s must be a whole number of seconds >= 1."
  }
}

variable "enable_xray" {
  description = "Active X-Ray tracing on the Lambdas (adds xray:PutTraceSegments to their roles)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------- API Gateway

variable "http_throttling_burst_limit" {
  description = "HTTP API default route throttling: burst (requests). The api Lambda also limits each tenant (FERRY_RATE_LIMIT_*)."
  type        = number
  default     = 200

  validation {
    condition     = var.http_throttling_burst_limit >= 1
    error_message = "http_throttling_burst_limit must be at least 1."
  }
}

variable "http_throttling_rate_limit" {
  description = "HTTP API default route throttling: steady rate (requests per second)."
  type        = number
  default     = 100

  validation {
    condition     = var.http_throttling_rate_limit > 0
    error_message = "http_throttling_rate_limit must be positive."
  }
}

variable "ws_throttling_burst_limit" {
  description = "WebSocket API stage throttling: burst (messages and connects)."
  type        = number
  default     = 100

  validation {
    condition     = var.ws_throttling_burst_limit >= 1
    error_message = "ws_throttling_burst_limit must be at least 1."
  }
}

variable "ws_throttling_rate_limit" {
  description = "WebSocket API stage throttling: steady rate (messages and connects per second)."
  type        = number
  default     = 50

  validation {
    condition     = var.ws_throttling_rate_limit > 0
    error_message = "ws_throttling_rate_limit must be positive."
  }
}

variable "ws_execution_log_level" {
  description = "WebSocket API execution logging (OFF, ERROR or INFO), to a log group this configuration creates with retention and encryption."
  type        = string
  default     = "ERROR"

  validation {
    condition     = contains(["OFF", "ERROR", "INFO"], var.ws_execution_log_level)
    error_message = "ws_execution_log_level must be OFF, ERROR or INFO."
  }
}

variable "manage_apigateway_account" {
  description = "Set the region's API Gateway account setting (the CloudWatch Logs role WebSocket stages need for logging). It is one setting per account and region: set false if something else already manages it."
  type        = bool
  default     = true
}

variable "jwt_issuer" {
  description = "Optional JWT authorizer on the /v1 routes (e.g. a Cognito user pool or Auth0 issuer URL). Empty: none. The API still checks its own API keys in `Authorization`."
  type        = string
  default     = ""

  validation {
    condition     = var.jwt_issuer == "" || can(regex("^https://", var.jwt_issuer))
    error_message = "jwt_issuer must be empty or an https:// issuer URL."
  }
}

variable "jwt_audience" {
  description = "Audiences the JWT authorizer accepts (required when jwt_issuer is set)."
  type        = list(string)
  default     = []
}

variable "jwt_identity_source" {
  description = "Where the JWT authorizer reads the token. Not `Authorization`: that header carries the Ferry API key."
  type        = string
  default     = "$request.header.X-Ferry-Jwt"

  validation {
    condition     = can(regex("^\\$request\\.header\\.[A-Za-z0-9-]+$", var.jwt_identity_source))
    error_message = "jwt_identity_source must be of the form $request.header.NAME."
  }
}

# ---------------------------------------------------------------------------- alarms

variable "alarm_email" {
  description = "Email address subscribed to the alarms' SNS topic (confirm the subscription mail). Empty: no topic; alarms still show in the console."
  type        = string
  default     = ""

  validation {
    condition     = var.alarm_email == "" || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alarm_email))
    error_message = "alarm_email must be empty or an email address."
  }
}

variable "queue_age_alarm_threshold_s" {
  description = "Alarm when a work queue's oldest message is older than this (seconds)."
  type        = number
  default     = 900

  validation {
    condition     = var.queue_age_alarm_threshold_s >= 60
    error_message = "queue_age_alarm_threshold_s must be at least 60."
  }
}

variable "models_bucket_access_log_bucket" {
  description = "Optional: an existing bucket to receive the models bucket's server access logs. Empty: no access logging."
  type        = string
  default     = ""
}

variable "results_expire_days" {
  description = "Days after which stored job outputs (over 64 KiB) are deleted; inputs two days later. Keep it at least the jobs' retention (FERRY_RETENTION_S, 7 days by default) plus one day, or views of old jobs point at deleted objects."
  type        = number
  default     = 8

  validation {
    condition     = var.results_expire_days >= 1
    error_message = "results_expire_days must be at least 1."
  }
}

variable "results_bucket_access_log_bucket" {
  description = "Optional: an existing bucket to receive the results bucket's server access logs (who fetched which output). Empty: no access logging."
  type        = string
  default     = ""
}

# The one jobs table (README.md "Architecture"): `job#<id>` items, idempotency bindings,
# hashed API keys, pool records and executor heartbeats, progress events, WebSocket
# connections and subscriptions, all keyed by `pk`.
#
# - gsi1: a tenant's jobs, newest first (gsi1pk = tenant#<tenant>, gsi1sk = ULID).
# - gsi2: the sparse index of non-terminal jobs the watchdog scans (gsi2pk = active#<status>);
#   finished jobs drop out of it.
# - ttl: finished jobs, their events and idempotency bindings expire (FERRY_RETENTION_S).
#   DynamoDB deletes within about two days; the code filters expired items on read.
# - The stream (new and old images) triggers the dispatcher on new queued jobs.

resource "aws_dynamodb_table" "jobs" {
  name                        = local.table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  deletion_protection_enabled = !var.allow_destroy

  stream_enabled   = true
  stream_view_type = "NEW_AND_OLD_IMAGES"

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "gsi1pk"
    type = "S"
  }

  attribute {
    name = "gsi1sk"
    type = "S"
  }

  attribute {
    name = "gsi2pk"
    type = "S"
  }

  attribute {
    name = "gsi2sk"
    type = "S"
  }

  global_secondary_index {
    name            = "gsi1"
    hash_key        = "gsi1pk"
    range_key       = "gsi1sk"
    projection_type = "ALL"
  }

  global_secondary_index {
    name            = "gsi2"
    hash_key        = "gsi2pk"
    range_key       = "gsi2sk"
    projection_type = "ALL"
  }

  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  # The deployment's customer managed key (kms.tf). The roles that read and write the
  # table are allowed to use it through DynamoDB only (iam.tf).
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.main.arn
  }
}

# One customer managed KMS key for the deployment's data at rest: the jobs table (job
# inputs and outputs, progress events, hashed API keys), every log group, the models
# bucket and the alarm topic. One key costs $1/month; it gives you the audit trail
# (CloudTrail shows every use), rotation, and the power to revoke access to all of it.
#
# Not on this key, on purpose:
# - SQS queues use SQS-managed SSE: messages carry only a job id and attempt, and a KMS
#   key there would add a KMS call (and permission) to every send and receive.
# - ECR repositories use the AWS managed aws/ecr key: images are code, not data.
# - GPU instance root volumes use the account's default EBS key (aws/ebs): a customer
#   managed key there needs grants for the Auto Scaling service-linked role.

resource "aws_kms_key" "main" {
  description             = "Ferry ${var.name}: jobs table, log groups, models bucket, alarm topic"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "main" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.main.key_id
}

# The key policy. Principals in this account use the key through their IAM policies (the
# first statement delegates to IAM, as AWS's default key policy does); the roles in iam.tf
# get only what DynamoDB and S3 need on their behalf, and the api and webhooks roles
# Encrypt/Decrypt under the `ferry:item = whsec` context (the tenants' sealed webhook secrets). Two services act on their own:
# CloudWatch Logs encrypts this deployment's log groups, and CloudWatch alarms publish to
# the encrypted SNS topic (an AWS managed SNS key would not let them).
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy's Resource is always "*" (the key itself); the root statement only delegates to IAM policies, as AWS's default key policy does.
  #checkov:skip=CKV_AWS_111:In a key policy "*" means this key only; the root statement delegates to IAM, and each role gets only the key uses it needs in iam.tf.
  #checkov:skip=CKV_AWS_356:A key policy cannot name a narrower resource than "*", which means the key it is attached to.
  statement {
    sid       = "DelegateToIam"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsForThisAccountsLogGroups"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }

  statement {
    sid       = "CloudWatchAlarmsPublishToTheEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }
  }
}

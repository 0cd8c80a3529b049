# The models bucket: Hugging Face model directories that executors copy into their model
# cache on first use (catalog entries with `s3_uri`, executor/README.md "Models").
#
#   aws s3 sync ./my-model s3://BUCKET/models/my-model/
#   catalog: {"id": "my-model", "task": "text-generation", "pool": "gpu",
#             "s3_uri": "s3://BUCKET/models/my-model"}
#
# Private, versioned (an overwritten weight file can be restored), encrypted with the
# deployment's key (bucket key on, so KMS is called per object, not per request), TLS only.
# Executors reach it through the S3 gateway endpoint, at no charge.

resource "aws_s3_bucket" "models" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice for the operator; model weights can be re-uploaded from their source.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events: executors list and copy the prefix when a model is first used.
  bucket        = "${var.name}-models-${local.account_id}-${var.region}"
  force_destroy = var.allow_destroy
}

resource "aws_s3_bucket_ownership_controls" "models" {
  bucket = aws_s3_bucket.models.id

  rule {
    object_ownership = "BucketOwnerEnforced" # no ACLs
  }
}

resource "aws_s3_bucket_public_access_block" "models" {
  bucket = aws_s3_bucket.models.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "models" {
  bucket = aws_s3_bucket.models.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "models" {
  bucket = aws_s3_bucket.models.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    bucket_key_enabled = true
  }
}

# Old versions of replaced files go after 30 days; abandoned multipart uploads (a sync of
# a large model interrupted) after 7.
resource "aws_s3_bucket_lifecycle_configuration" "models" {
  bucket = aws_s3_bucket.models.id

  rule {
    id     = "noncurrent-versions-and-incomplete-uploads"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = 30
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.models]
}

data "aws_iam_policy_document" "models_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.models.arn, "${aws_s3_bucket.models.arn}/*"]

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

resource "aws_s3_bucket_policy" "models" {
  bucket = aws_s3_bucket.models.id
  policy = data.aws_iam_policy_document.models_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.models]
}

resource "aws_s3_bucket_logging" "models" {
  count = var.models_bucket_access_log_bucket == "" ? 0 : 1

  bucket        = aws_s3_bucket.models.id
  target_bucket = var.models_bucket_access_log_bucket
  target_prefix = "s3-access/${aws_s3_bucket.models.id}/"
}

# The results bucket: job inputs and outputs too large for the job record (over 64 KiB:
# shared/core/src/objects.rs). The api Lambda writes large inputs (inputs/) and signs GET
# URLs to outputs; executors read inputs and write outputs (outputs/). Private, encrypted
# with the deployment's key, TLS only, not versioned (an object is written once), and
# expired by prefix after the jobs' retention: outputs var.results_expire_days after they
# are written (a finished job is kept FERRY_RETENTION_S, 7 days by default, after it ends),
# inputs two days later (a job may wait in the queue and run for a day before it ends).

resource "aws_s3_bucket" "results" {
  #checkov:skip=CKV_AWS_144:Results expire with their jobs; replicating them elsewhere would outlive the jobs that refer to them.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events: the job record refers to its objects.
  #checkov:skip=CKV_AWS_21:Objects are written once under keys derived from the job; versioning would only keep expired outputs longer.
  bucket        = "${var.name}-results-${local.account_id}-${var.region}"
  force_destroy = var.allow_destroy
}

resource "aws_s3_bucket_ownership_controls" "results" {
  bucket = aws_s3_bucket.results.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "results" {
  bucket = aws_s3_bucket.results.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "results" {
  bucket = aws_s3_bucket.results.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "results" {
  bucket = aws_s3_bucket.results.id

  rule {
    id     = "outputs-expire-with-their-jobs"
    status = "Enabled"
    filter {
      prefix = "outputs/"
    }
    expiration {
      days = var.results_expire_days
    }
  }

  rule {
    id     = "inputs-expire-with-their-jobs"
    status = "Enabled"
    filter {
      prefix = "inputs/"
    }
    expiration {
      days = var.results_expire_days + 2
    }
  }

  rule {
    id     = "incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "results_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.results.arn, "${aws_s3_bucket.results.arn}/*"]

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

resource "aws_s3_bucket_policy" "results" {
  bucket = aws_s3_bucket.results.id
  policy = data.aws_iam_policy_document.results_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.results]
}

resource "aws_s3_bucket_logging" "results" {
  count = var.results_bucket_access_log_bucket == "" ? 0 : 1

  bucket        = aws_s3_bucket.results.id
  target_bucket = var.results_bucket_access_log_bucket
  target_prefix = "s3-access/${aws_s3_bucket.results.id}/"
}

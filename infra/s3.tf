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

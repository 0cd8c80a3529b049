# Terraform and provider versions, the provider itself, and where state lives.
#
# State: by default Terraform keeps it in infra/terraform.tfstate on your machine. The state
# holds resource ids and the rendered Lambda environment (queue URLs, the model catalog): no
# secrets, since Ferry has none, but it is still the only record of what was created. For a
# deployment more than one person touches, keep it in S3 (uncomment the block below, then
# `terraform init -migrate-state`):
#
# - create the state bucket once, outside this configuration (versioning on, public access
#   blocked, SSE-KMS or SSE-S3), in the same account;
# - Terraform >= 1.10 locks with a lock file next to the state (`use_lockfile = true`), so
#   no DynamoDB lock table is needed any more;
# - one `key` per deployment (per `var.name` and region), e.g. "ferry/prod/us-east-1.tfstate".
#
# A backend block cannot use variables; pass per-environment values with
# `terraform init -backend-config=backend.hcl` instead of editing this file.

terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }

  # backend "s3" {
  #   bucket       = "my-terraform-state-123456789012"
  #   key          = "ferry/prod/us-east-1.tfstate"
  #   region       = "us-east-1"
  #   encrypt      = true
  #   use_lockfile = true # Terraform >= 1.10; older versions: dynamodb_table = "terraform-locks"
  # }
}

provider "aws" {
  region = var.region

  # Every resource that supports tags gets these (the GPU Auto Scaling group copies them to
  # its instances itself, see gpu_asg.tf).
  default_tags {
    tags = local.tags
  }
}

# The executor images: NAME-executor-cpu (built from executor/Dockerfile.cpu) and
# NAME-executor-gpu (executor/Dockerfile.gpu). Create these first, push, then apply the
# rest (docs/DEPLOY.md):
#
#   terraform apply -target=aws_ecr_repository.executor -target=aws_ecr_lifecycle_policy.executor
#
# - Immutable tags: a tag always means the same image, so a task definition revision
#   always runs what it was registered with, and GPU instances can use cached images
#   (ECS_IMAGE_PULL_BEHAVIOR=prefer-cached, see gpu_asg.tf). Push a new tag per build.
# - Basic scanning on push (free). Enhanced scanning (Amazon Inspector) is billed per image.
# - Encrypted with the AWS managed aws/ecr key (images are code; see kms.tf).
# - No repository policy: a repository is private to its account by default, and the
#   execution role and the GPU instances pull through their IAM policies (iam.tf).

resource "aws_ecr_repository" "executor" {
  for_each = toset(local.pool_names)

  name                 = "${var.name}-executor-${each.key}"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.allow_destroy

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS" # no kms_key: the AWS managed aws/ecr key
  }
}

# Keep the last 10 images of each repository; the running task definition's tag is one
# of them as long as fewer than 10 builds were pushed since (roll forward, not back 10).
resource "aws_ecr_lifecycle_policy" "executor" {
  for_each = toset(local.pool_names)

  repository = aws_ecr_repository.executor[each.key].name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the last 10 images"
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = 10
      }
      action = { type = "expire" }
    }]
  })
}

# IAM roles and trust policies, and the instance profile of the GPU instances. What each
# role may do is its policy document in iam.tf.

locals {
  lambda_policies = {
    api        = data.aws_iam_policy_document.api["api"].json
    api_stream = data.aws_iam_policy_document.api["api_stream"].json
    ws         = data.aws_iam_policy_document.ws.json
    dispatcher = data.aws_iam_policy_document.dispatcher.json
    webhooks   = data.aws_iam_policy_document.webhooks.json
  }
}

# ---------------------------------------------------------------------------- trust

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

# The executor task role: ECS tasks of this account only (confused-deputy protection, as
# ECS's task role documentation recommends).
data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${var.region}:${local.account_id}:*"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# The execution role is assumed by ECS itself (and the agent on the GPU instances) to start
# a task; its trust stays the plain one ECS documents.
data "aws_iam_policy_document" "ecs_execution_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# ---------------------------------------------------------------------------- Lambda roles

resource "aws_iam_role" "lambda" {
  for_each = local.lambda_policies

  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

resource "aws_iam_role_policy" "lambda" {
  for_each = local.lambda_policies

  name   = "${var.name}-${each.key}"
  role   = aws_iam_role.lambda[each.key].id
  policy = each.value
}


# ---------------------------------------------------------------------------- executor roles

resource "aws_iam_role" "executor" {
  name               = "${var.name}-executor-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy" "executor" {
  name   = "${var.name}-executor-task"
  role   = aws_iam_role.executor.id
  policy = data.aws_iam_policy_document.executor.json
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-executor-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_execution_assume.json
}

resource "aws_iam_role_policy" "execution" {
  name   = "${var.name}-executor-execution"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# ---------------------------------------------------------------------------- GPU instances

# The ECS agent on the GPU instances. AWS's managed AmazonEC2ContainerServiceforEC2Role,
# on purpose rather than a hand-written copy: it tracks the agent's API calls as AWS
# changes them (a missing one leaves instances unable to register, and the GPU pool
# silently without capacity), and it is what the ECS GPU AMI is tested with. It also
# grants ECR pulls and log writes on "*", which the agent uses when a task has no
# execution role; ours always has one. Tasks cannot borrow these credentials: the
# instances require IMDSv2 with a hop limit of 1 and the agent blocks instance metadata
# for awsvpc tasks (ECS_AWSVPC_BLOCK_IMDS, gpu_asg.tf).
resource "aws_iam_role" "gpu_instance" {
  name               = "${var.name}-gpu-instance"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy_attachment" "gpu_instance_ecs" {
  role       = aws_iam_role.gpu_instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_instance_profile" "gpu" {
  name = "${var.name}-gpu-instance"
  role = aws_iam_role.gpu_instance.name
}

# ---------------------------------------------------------------------------- flow logs

data "aws_iam_policy_document" "flow_logs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "flow_logs" {
  count = var.enable_flow_logs ? 1 : 0

  name               = "${var.name}-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_logs_assume.json
}

resource "aws_iam_role_policy" "flow_logs" {
  count = var.enable_flow_logs ? 1 : 0

  name   = "${var.name}-flow-logs"
  role   = aws_iam_role.flow_logs[0].id
  policy = data.aws_iam_policy_document.flow_logs.json
}

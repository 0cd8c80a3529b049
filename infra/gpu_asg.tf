# The GPU capacity: an Auto Scaling group at 0 instances that the ECS capacity provider
# (ecs.tf) scales when gpu executor tasks are waiting, in the private subnets.
#
# - AMI: the ECS GPU-optimized Amazon Linux 2023 image (NVIDIA driver, container toolkit,
#   ECS agent), from SSM at plan time; pin it with var.gpu_ami_id.
# - IMDSv2 only, hop limit 1, and ECS_AWSVPC_BLOCK_IMDS: tasks use their own role, never
#   the instance's.
# - Encrypted gp3 root volume: images and the /var/lib/ferry/models cache live on it.
# - ECS_IMAGE_PULL_BEHAVIOR=prefer-cached: tags are immutable (ecr.tf), so a warm instance
#   starts the next executor without asking the registry.
# - The group's desired capacity belongs to ECS managed scaling, not Terraform.

data "aws_ssm_parameter" "gpu_ami" {
  name = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
}

locals {
  gpu_ami_id = var.gpu_ami_id != "" ? var.gpu_ami_id : data.aws_ssm_parameter.gpu_ami.insecure_value

  gpu_user_data = <<-EOT
    #!/bin/bash
    set -euo pipefail
    cat >> /etc/ecs/ecs.config <<'EOF'
    ECS_CLUSTER=${local.cluster_name}
    ECS_ENABLE_GPU_SUPPORT=true
    ECS_AWSVPC_BLOCK_IMDS=true
    ECS_IMAGE_PULL_BEHAVIOR=prefer-cached
    ECS_CONTAINER_STOP_TIMEOUT=30s
    EOF
    # The executors' model cache (the task's /models volume). Sticky and world-writable
    # like /tmp, because the image's user id is not known here.
    install -d -m 0755 /var/lib/ferry && install -d -m 1777 /var/lib/ferry/models
  EOT
}

resource "aws_launch_template" "gpu" {
  name_prefix            = "${var.name}-gpu-"
  description            = "Ferry GPU container instances (ECS GPU AMI)"
  image_id               = local.gpu_ami_id
  instance_type          = var.gpu_instance_type
  update_default_version = true
  user_data              = base64encode(local.gpu_user_data)
  vpc_security_group_ids = [aws_security_group.gpu_instances.id]

  iam_instance_profile {
    arn = aws_iam_instance_profile.gpu.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda" # the AL2023 AMI's root device

    ebs {
      volume_size           = var.gpu_root_volume_gib
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true # 1-minute instance metrics, billed only while an instance runs
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-gpu" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.name}-gpu" })
  }
}

resource "aws_autoscaling_group" "gpu" {
  name                  = "${var.name}-gpu"
  min_size              = 0
  max_size              = var.gpu_max_instances
  desired_capacity      = 0
  vpc_zone_identifier   = aws_subnet.private[*].id
  protect_from_scale_in = true # required by managed termination protection (ecs.tf)
  health_check_type     = "EC2"
  force_delete          = var.allow_destroy

  launch_template {
    id      = aws_launch_template.gpu.id
    version = "$Latest"
  }

  # ECS adds this tag when the capacity provider takes the group over; declaring it keeps
  # Terraform from removing it again.
  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  # Provider default_tags do not reach Auto Scaling groups.
  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${var.name}-gpu" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

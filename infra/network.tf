# The VPC the executors (Fargate tasks and GPU instances) run in. The Lambdas are not in
# it: they only call public AWS APIs, and outside a VPC they need no ENIs, NAT or endpoints.
#
# Default (enable_nat_gateway = false): private subnets only, no route to the internet.
# Executors reach AWS through VPC endpoints: gateway endpoints for DynamoDB and S3 (free;
# S3 also serves ECR's image layers and the models bucket) and interface endpoints with
# private DNS for the rest (var.interface_endpoints). There is deliberately no execute-api
# endpoint: it serves only *private* REST APIs, and with private DNS on it would capture
# every *.execute-api hostname in the VPC, breaking calls to the (Regional) WebSocket
# API's Management endpoint. That endpoint is reached through the NAT gateway instead.

locals {
  # AZs that offer the GPU instance type (not every AZ has every G type).
  gpu_azs = sort(tolist(setintersection(
    toset(data.aws_availability_zones.available.names),
    toset(data.aws_ec2_instance_type_offerings.gpu.locations),
  )))
  azs = length(var.availability_zones) == 2 ? var.availability_zones : slice(local.gpu_azs, 0, min(2, length(local.gpu_azs)))

  # Without NAT these must exist for executors to start at all.
  required_endpoints = ["sqs", "ecr.api", "ecr.dkr", "logs", "ecs", "ecs-agent", "ecs-telemetry"]
}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Only the automatic pick reads this (the first two AZs, by name, that offer gpu_instance_type); set availability_zones to pin them, as terraform.tfvars.example suggests after the first apply.
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

data "aws_ec2_instance_type_offerings" "gpu" {
  location_type = "availability-zone"

  filter {
    name   = "instance-type"
    values = [var.gpu_instance_type]
  }
}

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true # both needed for interface endpoints' private DNS
  enable_dns_hostnames = true

  tags = { Name = var.name }

  lifecycle {
    precondition {
      condition     = length(local.azs) == 2
      error_message = "Need two availability zones offering ${var.gpu_instance_type} in ${var.region}; found ${length(local.gpu_azs)}. Set availability_zones or pick another gpu_instance_type."
    }
    precondition {
      condition     = var.enable_nat_gateway || length(setsubtract(local.required_endpoints, var.interface_endpoints)) == 0
      error_message = "Without a NAT gateway the executors need these interface endpoints: ${join(", ", local.required_endpoints)}. Add the missing ones to interface_endpoints or set enable_nat_gateway = true."
    }
  }
}

# Lock the default security group down: nothing uses it, and nothing should.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_subnet" "private" {
  count = 2

  vpc_id            = aws_vpc.this.id
  availability_zone = local.azs[count.index]
  cidr_block        = cidrsubnet(var.vpc_cidr, 4, count.index)

  tags = { Name = "${var.name}-private-${local.azs[count.index]}" }
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id
  tags   = { Name = "${var.name}-private" }
}

resource "aws_route_table_association" "private" {
  count = 2

  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# ---------------------------------------------------------------------------- endpoints

resource "aws_vpc_endpoint" "gateway" {
  for_each = toset(["dynamodb", "s3"])

  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]

  tags = { Name = "${var.name}-${each.key}" }
}

resource "aws_vpc_endpoint" "interface" {
  for_each = toset(var.interface_endpoints)

  vpc_id              = aws_vpc.this.id
  service_name        = "com.amazonaws.${var.region}.${each.key}"
  vpc_endpoint_type   = "Interface"
  private_dns_enabled = true
  subnet_ids          = aws_subnet.private[*].id
  security_group_ids  = [aws_security_group.endpoints.id]

  tags = { Name = "${var.name}-${each.key}" }
}

# ---------------------------------------------------------------------------- security groups

resource "aws_security_group" "endpoints" {
  name        = "${var.name}-endpoints"
  description = "Interface VPC endpoints: HTTPS from inside the VPC"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_ingress_rule" "endpoints_https" {
  security_group_id = aws_security_group.endpoints.id
  description       = "HTTPS from the VPC"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = var.vpc_cidr
}

# Executor tasks (Fargate and GPU, awsvpc): no inbound at all, HTTPS out only (AWS APIs via
# endpoints, the Management API via NAT). DNS goes to the VPC resolver, which security
# groups do not filter.
resource "aws_security_group" "tasks" {
  #checkov:skip=CKV2_AWS_5:Attached at launch time: the dispatcher passes it to RunTask from FERRY_POOLS (locals.tf), which checkov cannot follow.
  name        = "${var.name}-executor-tasks"
  description = "Ferry executor tasks: no inbound, HTTPS out"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_egress_rule" "tasks_https" {
  security_group_id = aws_security_group.tasks.id
  description       = "HTTPS to AWS APIs (VPC endpoints) and, with NAT, the WebSocket Management API"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# The GPU instances themselves (the ECS agent and Docker): same rule.
resource "aws_security_group" "gpu_instances" {
  name        = "${var.name}-gpu-instances"
  description = "Ferry GPU container instances: no inbound, HTTPS out"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_egress_rule" "gpu_instances_https" {
  security_group_id = aws_security_group.gpu_instances.id
  description       = "HTTPS to ECS, ECR, CloudWatch Logs (VPC endpoints) and S3"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# ---------------------------------------------------------------------------- optional NAT

# Public subnets exist only to hold the NAT gateway; nothing else runs in them.
resource "aws_internet_gateway" "this" {
  count = var.enable_nat_gateway ? 1 : 0

  vpc_id = aws_vpc.this.id
  tags   = { Name = var.name }
}

resource "aws_subnet" "public" {
  count = var.enable_nat_gateway ? 2 : 0

  vpc_id                  = aws_vpc.this.id
  availability_zone       = local.azs[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, 8, 200 + count.index)
  map_public_ip_on_launch = false

  tags = { Name = "${var.name}-public-${local.azs[count.index]}" }
}

resource "aws_route_table" "public" {
  count = var.enable_nat_gateway ? 1 : 0

  vpc_id = aws_vpc.this.id
  tags   = { Name = "${var.name}-public" }
}

resource "aws_route" "public_internet" {
  count = var.enable_nat_gateway ? 1 : 0

  route_table_id         = aws_route_table.public[0].id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this[0].id
}

resource "aws_route_table_association" "public" {
  count = var.enable_nat_gateway ? 2 : 0

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public[0].id
}

# One NAT gateway (not one per AZ): it is only on the path of progress pushes and the
# odd API call without an endpoint, so losing its AZ degrades live progress, no more.
resource "aws_eip" "nat" {
  count = var.enable_nat_gateway ? 1 : 0

  domain = "vpc"
  tags   = { Name = "${var.name}-nat" }
}

resource "aws_nat_gateway" "this" {
  count = var.enable_nat_gateway ? 1 : 0

  allocation_id = aws_eip.nat[0].id
  subnet_id     = aws_subnet.public[0].id
  tags          = { Name = var.name }

  depends_on = [aws_internet_gateway.this]
}

resource "aws_route" "private_nat" {
  count = var.enable_nat_gateway ? 1 : 0

  route_table_id         = aws_route_table.private.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[0].id
}

# ---------------------------------------------------------------------------- optional flow logs

resource "aws_cloudwatch_log_group" "flow_logs" {
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30 days, so an idle deployment stays cheap); set 365 or more where your policy requires a year.
  count = var.enable_flow_logs ? 1 : 0

  name              = "/aws/vpc/${var.name}-flow-logs"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.main.arn
}

resource "aws_flow_log" "this" {
  count = var.enable_flow_logs ? 1 : 0

  vpc_id               = aws_vpc.this.id
  traffic_type         = "ALL"
  log_destination_type = "cloud-watch-logs"
  log_destination      = aws_cloudwatch_log_group.flow_logs[0].arn
  iam_role_arn         = aws_iam_role.flow_logs[0].arn
}

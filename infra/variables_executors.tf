# Inputs for where and how executors run: the two pools (cpu on Fargate, gpu on an EC2
# GPU Auto Scaling group), their images and sizes, and the network they live in.

# ---------------------------------------------------------------------------- pools

variable "pools" {
  description = "Scaling of each pool (FERRY_POOLS, see docs/SCALING.md): executors kept warm, the most running, jobs per executor (its FERRY_CONCURRENCY), seconds idle before an executor exits, and the figures `ferry cost` and queued jobs' start estimates use (hourly_price in USD, cold_start_s)."
  type = object({
    cpu = optional(object({
      min_warm       = optional(number, 0)
      max_tasks      = optional(number, 4)
      jobs_per_task  = optional(number, 32) # the engine batches 32 sequences on CPU
      idle_timeout_s = optional(number, 120)
      hourly_price   = optional(number, 0.0988) # Fargate x86, 2 vCPU + 4 GB, us-east-1 on-demand
      cold_start_s   = optional(number, 60)
    }), {})
    gpu = optional(object({
      min_warm       = optional(number, 0)
      max_tasks      = optional(number, 2)
      jobs_per_task  = optional(number, 64) # and 64 on CUDA
      idle_timeout_s = optional(number, 300)
      hourly_price   = optional(number, 1.006) # g5.xlarge, us-east-1 on-demand
      cold_start_s   = optional(number, 300)
    }), {})
  })
  default = {}

  validation {
    condition = alltrue([for p in [var.pools.cpu, var.pools.gpu] :
      p.min_warm >= 0 && p.max_tasks >= 1 && p.jobs_per_task >= 1 && p.idle_timeout_s >= 1 && p.min_warm <= p.max_tasks &&
      floor(p.min_warm) == p.min_warm && floor(p.max_tasks) == p.max_tasks && floor(p.jobs_per_task) == p.jobs_per_task
    ])
    error_message = "Each pool needs whole numbers with 0 <= min_warm <= max_tasks, max_tasks >= 1, jobs_per_task >= 1 and idle_timeout_s >= 1."
  }
  validation {
    condition     = alltrue([for p in [var.pools.cpu, var.pools.gpu] : p.hourly_price >= 0 && p.cold_start_s >= 0])
    error_message = "hourly_price and cold_start_s must be non-negative."
  }
}

variable "handler_pools" {
  description = "Pools for your own job handlers (docs/HANDLERS.md), by name: each runs an image built FROM the executor image with your program in it (executor/Dockerfile.handler), pushed to its own NAME-executor-<pool> repository with image_tag. Fargate unless gpu = true (then the GPU Auto Scaling group's capacity, one GPU per task). A catalog entry runs there when its pool is the name. task_cpu, task_memory_mib and ephemeral_storage_gib size Fargate tasks; gpu pools use gpu_task_cpu and gpu_task_memory_mib."
  type = map(object({
    image_tag             = string
    gpu                   = optional(bool, false)
    min_warm              = optional(number, 0)
    max_tasks             = optional(number, 2)
    jobs_per_task         = optional(number, 1) # a handler's own `concurrency` is 1 by default
    idle_timeout_s        = optional(number, 120)
    hourly_price          = optional(number, 0.0494) # Fargate x86, 1 vCPU + 2 GB, us-east-1 on-demand
    cold_start_s          = optional(number, 60)
    task_cpu              = optional(number, 1024)
    task_memory_mib       = optional(number, 2048)
    ephemeral_storage_gib = optional(number, 21)
  }))
  default = {}

  validation {
    condition     = alltrue([for name, _ in var.handler_pools : can(regex("^[a-z][a-z0-9-]{0,23}$", name)) && !contains(["cpu", "gpu"], name)])
    error_message = "Handler pool names are 1 to 24 lowercase letters, digits or '-', starting with a letter, and neither cpu nor gpu (the model pools)."
  }
  validation {
    condition = alltrue([for p in values(var.handler_pools) :
      p.min_warm >= 0 && p.max_tasks >= 1 && p.jobs_per_task >= 1 && p.idle_timeout_s >= 1 && p.min_warm <= p.max_tasks &&
      floor(p.min_warm) == p.min_warm && floor(p.max_tasks) == p.max_tasks && floor(p.jobs_per_task) == p.jobs_per_task &&
      p.hourly_price >= 0 && p.cold_start_s >= 0
    ])
    error_message = "Each handler pool needs whole numbers with 0 <= min_warm <= max_tasks, max_tasks >= 1, jobs_per_task >= 1, idle_timeout_s >= 1, and non-negative hourly_price and cold_start_s."
  }
  validation {
    condition = alltrue([for p in values(var.handler_pools) :
      contains([256, 512, 1024, 2048, 4096, 8192, 16384], p.task_cpu) && p.task_memory_mib >= 512 && p.task_memory_mib <= 122880 &&
      p.ephemeral_storage_gib >= 21 && p.ephemeral_storage_gib <= 200
    ])
    error_message = "A handler pool's task_cpu must be a Fargate CPU size (256 to 16384), task_memory_mib 512 to 122880 and ephemeral_storage_gib 21 to 200."
  }
  validation {
    condition     = alltrue([for p in values(var.handler_pools) : length(p.image_tag) > 0])
    error_message = "Each handler pool needs the image_tag of its image in its NAME-executor-<pool> repository."
  }
}

# ---------------------------------------------------------------------------- images

variable "cpu_image_tag" {
  description = "Tag of the cpu executor image in the NAME-executor-cpu repository (tags are immutable: push a new tag per build, e.g. the git commit)."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.cpu_image_tag))
    error_message = "cpu_image_tag must be a valid image tag."
  }
}

variable "gpu_image_tag" {
  description = "Tag of the gpu executor image in the NAME-executor-gpu repository."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.gpu_image_tag))
    error_message = "gpu_image_tag must be a valid image tag."
  }
}

# ---------------------------------------------------------------------------- cpu pool (Fargate)

variable "cpu_architecture" {
  description = "CPU architecture of the Fargate executors: X86_64 (default: the same as the GPU image, and eligible for Fargate Spot) or ARM64 (Graviton, about 20% cheaper per hour, but no Fargate Spot, and the image must be built for arm64)."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "cpu_use_spot" {
  description = "Run cpu executors mostly on Fargate Spot (strategy FARGATE_SPOT weight 3, FARGATE weight 1; up to 70% cheaper). Interrupted executors release their jobs within the grace period. Ignored for ARM64 (Fargate Spot has no ARM64 capacity)."
  type        = bool
  default     = true
}

variable "cpu_task_cpu" {
  description = "Fargate task CPU units of a cpu executor (1024 = 1 vCPU)."
  type        = number
  default     = 2048

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.cpu_task_cpu)
    error_message = "cpu_task_cpu must be a Fargate CPU size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "cpu_task_memory_mib" {
  description = "Fargate task memory (MiB) of a cpu executor; must be a valid pairing with cpu_task_cpu."
  type        = number
  default     = 4096

  validation {
    condition     = var.cpu_task_memory_mib >= 512 && var.cpu_task_memory_mib <= 122880
    error_message = "cpu_task_memory_mib must be between 512 and 122880."
  }
}

variable "cpu_ephemeral_storage_gib" {
  description = "Fargate ephemeral storage (GiB) of a cpu executor: holds /models (models copied from S3) and /tmp."
  type        = number
  default     = 30

  validation {
    condition     = var.cpu_ephemeral_storage_gib >= 21 && var.cpu_ephemeral_storage_gib <= 200
    error_message = "cpu_ephemeral_storage_gib must be between 21 and 200."
  }
}

# ---------------------------------------------------------------------------- gpu pool (EC2)

variable "gpu_instance_type" {
  description = "Instance type of the GPU Auto Scaling group (one GPU per executor task)."
  type        = string
  default     = "g5.xlarge"

  validation {
    condition     = can(regex("^(g|gr|p)[0-9][a-z0-9]*\\.[0-9]*x?large$", var.gpu_instance_type))
    error_message = "gpu_instance_type must be a G or P family type such as g5.xlarge, g6.2xlarge or p4d.24xlarge."
  }
}

variable "gpu_max_instances" {
  description = "Most GPU instances the Auto Scaling group may run (it rests at 0). Your 'Running On-Demand G and VT instances' vCPU quota must cover this times the type's vCPUs."
  type        = number
  default     = 2

  validation {
    condition     = var.gpu_max_instances >= 1 && var.gpu_max_instances <= 100 && floor(var.gpu_max_instances) == var.gpu_max_instances
    error_message = "gpu_max_instances must be a whole number between 1 and 100."
  }
}

variable "gpu_task_cpu" {
  description = "CPU units reserved by a gpu executor task (g5.xlarge has 4096)."
  type        = number
  default     = 4096

  validation {
    condition     = var.gpu_task_cpu >= 256
    error_message = "gpu_task_cpu must be at least 256."
  }
}

variable "gpu_task_memory_mib" {
  description = "Memory (MiB) of a gpu executor task; must fit what the instance registers with ECS (a g5.xlarge registers about 15,400 MiB of its 16 GiB)."
  type        = number
  default     = 14336

  validation {
    condition     = var.gpu_task_memory_mib >= 512
    error_message = "gpu_task_memory_mib must be at least 512."
  }
}

variable "gpu_root_volume_gib" {
  description = "Encrypted gp3 root volume of each GPU instance: images and the /models cache live here."
  type        = number
  default     = 100

  validation {
    condition     = var.gpu_root_volume_gib >= 30 && var.gpu_root_volume_gib <= 16384
    error_message = "gpu_root_volume_gib must be between 30 and 16384."
  }
}

variable "gpu_ami_id" {
  description = "Pin the GPU instances' AMI. Empty: the current ECS GPU-optimized Amazon Linux 2023 AMI from SSM (/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id), which changes when AWS publishes a new one."
  type        = string
  default     = ""

  validation {
    condition     = var.gpu_ami_id == "" || can(regex("^ami-[0-9a-f]{8,17}$", var.gpu_ami_id))
    error_message = "gpu_ami_id must be empty or an AMI id (ami-...)."
  }
}

# ---------------------------------------------------------------------------- network

variable "vpc_cidr" {
  description = "CIDR of the VPC the executors and GPU instances run in (/16 to /20)."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be an IPv4 CIDR with a prefix between /16 and /20."
  }
}

variable "availability_zones" {
  description = "The two AZs to use. Empty: the first two (by name) that offer gpu_instance_type."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.availability_zones) == 0 || length(var.availability_zones) == 2
    error_message = "availability_zones must be empty or name exactly two zones."
  }
}

variable "enable_nat_gateway" {
  description = "Add an internet gateway, public subnets and one NAT gateway. Executors need it to push live progress to the WebSocket API's Management endpoint (a public endpoint no VPC endpoint reaches); without it they store progress and clients see it on (re)subscribe and over HTTP. About $33/month plus data."
  type        = bool
  default     = false
}

variable "interface_endpoints" {
  description = "Interface VPC endpoints (private DNS) to create, by service suffix. Each costs about $0.01/hour per AZ. Without NAT the executors need all of sqs, ecr.api, ecr.dkr, logs, and the GPU instances ecs, ecs-agent, ecs-telemetry."
  type        = list(string)
  default     = ["sqs", "ecr.api", "ecr.dkr", "logs", "secretsmanager", "ecs", "ecs-agent", "ecs-telemetry"]

  validation {
    condition     = alltrue([for s in var.interface_endpoints : contains(["sqs", "ecr.api", "ecr.dkr", "logs", "secretsmanager", "ecs", "ecs-agent", "ecs-telemetry", "sts", "ssm", "ssmmessages", "ec2messages", "monitoring"], s)])
    error_message = "interface_endpoints may contain: sqs, ecr.api, ecr.dkr, logs, secretsmanager, ecs, ecs-agent, ecs-telemetry, sts, ssm, ssmmessages, ec2messages, monitoring."
  }
}

variable "enable_flow_logs" {
  description = "VPC flow logs (all traffic) to a CloudWatch log group."
  type        = bool
  default     = false
}


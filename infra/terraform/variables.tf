# Inputs. Only project_id, domains and the two images have no default; see README.md and
# terraform.tfvars.example.

# ---- project and regions ------------------------------------------------------------------

variable "project_id" {
  description = "Google Cloud project that holds the whole deployment."
  type        = string
}

variable "primary_region" {
  description = "Region that serves by default and holds the writable Cloud SQL primary."
  type        = string
  default     = "europe-west1"
}

variable "secondary_region" {
  description = "Warm-standby region: Cloud Run at secondary_min_instances, Redis, and the cross-region read replica."
  type        = string
  default     = "europe-west4"

  validation {
    condition     = var.secondary_region != var.primary_region
    error_message = "secondary_region must differ from primary_region."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name (lowercase letters, digits, hyphens)."
  type        = string
  default     = "voketag"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}$", var.name_prefix))
    error_message = "name_prefix must be 2 to 19 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "labels" {
  description = "Extra labels put on every labelled resource."
  type        = map(string)
  default     = {}
}

variable "deletion_protection" {
  description = "Protect Cloud SQL and Cloud Run from `terraform destroy`. Turn off only for throw-away environments."
  type        = bool
  default     = true
}

# ---- network ------------------------------------------------------------------------------

variable "run_subnet_cidrs" {
  description = "Subnet per region key (primary, secondary) for Cloud Run Direct VPC egress; /26 or larger."
  type        = map(string)
  default = {
    primary   = "10.10.0.0/24"
    secondary = "10.20.0.0/24"
  }

  validation {
    condition     = alltrue([for k in ["primary", "secondary"] : can(cidrhost(var.run_subnet_cidrs[k], 0))])
    error_message = "run_subnet_cidrs needs valid CIDRs for both \"primary\" and \"secondary\"."
  }
}

# ---- Cloud Run ----------------------------------------------------------------------------

variable "scan_image" {
  description = "Container image of scan-service (docker/scan-service.Dockerfile), preferably by digest."
  type        = string
}

variable "factory_image" {
  description = "Container image of factory-service (docker/factory-service.Dockerfile); runs `serve` and `worker`."
  type        = string
}

variable "jobs_image" {
  description = "Image of the operator jobs (voketag-migrate, -audit-verify, -user, -dlq); null means factory_image. A release with a migration sets it to the new image first, runs voketag-migrate, then moves factory_image (README: Releases)."
  type        = string
  default     = null
}

variable "primary_min_instances" {
  description = "Warm instances per app (scan, factory, worker) in the primary region."
  type        = object({ scan = number, factory = number, worker = number })
  default     = { scan = 2, factory = 1, worker = 1 }
}

variable "secondary_min_instances" {
  description = "Warm instances per app in the secondary region. Above zero keeps failover inside the 5-minute RTO (no cold start, worker keeps consuming); zero makes the standby cheaper and slower."
  type        = object({ scan = number, factory = number, worker = number })
  default     = { scan = 1, factory = 1, worker = 1 }
}

variable "max_instances" {
  description = "Maximum instances per app, in each region."
  type        = object({ scan = number, factory = number, worker = number })
  default     = { scan = 50, factory = 10, worker = 5 }
}

variable "rust_log" {
  description = "RUST_LOG for every service."
  type        = string
  default     = "info"
}

variable "otlp_endpoint" {
  description = "OTEL_EXPORTER_OTLP_ENDPOINT (an OpenTelemetry collector); empty disables trace export."
  type        = string
  default     = ""
}

variable "trusted_proxies" {
  description = "TRUSTED_PROXIES: CIDRs whose X-Forwarded-For is believed. The defaults are Google's front ends and load balancers; run.tf adds the load balancer's own address."
  type        = list(string)
  default     = ["35.191.0.0/16", "130.211.0.0/22", "169.254.0.0/16"]
}

variable "cors_origins" {
  description = "CORS_ORIGINS of the factory (admin console origins); empty means no CORS."
  type        = list(string)
  default     = []

  validation {
    condition = alltrue([for o in var.cors_origins :
      (can(regex("^https?://[a-z0-9._-]+(:[1-9][0-9]{0,4})?$", o)) || can(regex("^https?://\\[[0-9a-f:.]+\\](:[1-9][0-9]{0,4})?$", o)))
      && try(tonumber(regex(":([0-9]+)$", o)[0]), 1) <= 65535
      && !can(regex("^https://.*:443$", o)) && !can(regex("^http://.*:80$", o))
    ])
    error_message = "cors_origins are exact origins such as https://admin.example.com: http or https, a lowercase host, an optional port (1 to 65535, not the scheme's default, no leading zero), no path or wildcard (the service refuses anything else at start-up)."
  }
}

variable "redis_key_prefix" {
  description = "REDIS_KEY_PREFIX of every service: change it (vt -> vt2) after a database restore, so idempotent results, caches and buckets of the old timeline are not used (DISASTER_RECOVERY.md section 7)."
  type        = string
  default     = "vt"

  validation {
    condition     = can(regex("^[A-Za-z0-9_:.-]{1,64}$", var.redis_key_prefix))
    error_message = "redis_key_prefix must be 1 to 64 characters of A-Z a-z 0-9 - _ : ."
  }
}

variable "redis_timeout_ms" {
  description = "REDIS_TIMEOUT_MS: hard timeout of every Redis call on a request path."
  type        = number
  default     = 50

  validation {
    condition     = var.redis_timeout_ms >= 1 && var.redis_timeout_ms <= 60000 && floor(var.redis_timeout_ms) == var.redis_timeout_ms
    error_message = "redis_timeout_ms must be a whole number from 1 to 60000."
  }
}

variable "rate_limit_ip_per_minute" {
  description = "RATE_LIMIT_IP_PER_MINUTE of the scan service."
  type        = number
  default     = 60

  validation {
    condition     = var.rate_limit_ip_per_minute >= 1 && var.rate_limit_ip_per_minute <= 10000000 && floor(var.rate_limit_ip_per_minute) == var.rate_limit_ip_per_minute
    error_message = "rate_limit_ip_per_minute must be a whole number from 1 to 10000000."
  }
}

variable "rate_limit_ip_burst" {
  description = "RATE_LIMIT_IP_BURST of the scan service."
  type        = number
  default     = 20

  validation {
    condition     = var.rate_limit_ip_burst >= 1 && var.rate_limit_ip_burst <= 10000000 && floor(var.rate_limit_ip_burst) == var.rate_limit_ip_burst
    error_message = "rate_limit_ip_burst must be a whole number from 1 to 10000000."
  }
}

variable "rate_limit_key_per_minute" {
  description = "RATE_LIMIT_KEY_PER_MINUTE of the scan service."
  type        = number
  default     = 600

  validation {
    condition     = var.rate_limit_key_per_minute >= 1 && var.rate_limit_key_per_minute <= 10000000 && floor(var.rate_limit_key_per_minute) == var.rate_limit_key_per_minute
    error_message = "rate_limit_key_per_minute must be a whole number from 1 to 10000000."
  }
}

variable "rate_limit_key_burst" {
  description = "RATE_LIMIT_KEY_BURST of the scan service."
  type        = number
  default     = 100

  validation {
    condition     = var.rate_limit_key_burst >= 1 && var.rate_limit_key_burst <= 10000000 && floor(var.rate_limit_key_burst) == var.rate_limit_key_burst
    error_message = "rate_limit_key_burst must be a whole number from 1 to 10000000."
  }
}

variable "rate_limit_fail_closed" {
  description = "RATE_LIMIT_FAIL_CLOSED: when Redis is unusable, true answers 503, false falls back to a per-instance limiter."
  type        = bool
  default     = false
}

# ---- database -----------------------------------------------------------------------------

variable "db_tier" {
  description = "Cloud SQL machine tier (db-custom-<vCPU>-<MiB> for ENTERPRISE, db-perf-optimized-N-<vCPU> for ENTERPRISE_PLUS)."
  type        = string
  default     = "db-custom-2-7680"
}

variable "db_edition" {
  description = "Cloud SQL edition: ENTERPRISE or ENTERPRISE_PLUS."
  type        = string
  default     = "ENTERPRISE"

  validation {
    condition     = contains(["ENTERPRISE", "ENTERPRISE_PLUS"], var.db_edition)
    error_message = "db_edition must be ENTERPRISE or ENTERPRISE_PLUS."
  }
}

variable "db_disk_size_gb" {
  description = "Initial SSD size in GB (grows automatically)."
  type        = number
  default     = 50
}

variable "db_name" {
  description = "Database name."
  type        = string
  default     = "voketag"
}

variable "db_user" {
  description = "Database user of the services (password generated, kept in Secret Manager)."
  type        = string
  default     = "voketag"
}

variable "db_backup_start_time" {
  description = "UTC start (HH:MM) of the daily automated backup."
  type        = string
  default     = "02:00"
}

variable "db_backup_location" {
  description = "Where automated backups are stored (a multi-region such as \"eu\" survives the loss of either region); null = Cloud SQL's default."
  type        = string
  default     = "eu"
}

variable "db_retained_backups" {
  description = "Automated backups kept."
  type        = number
  default     = 30
}

variable "db_transaction_log_days" {
  description = "Days of WAL kept for point-in-time recovery (1 to 7 on ENTERPRISE)."
  type        = number
  default     = 7
}

variable "database_writer" {
  description = "Which instance takes writes: \"primary\", or \"secondary\" after the replica was promoted in a regional failover."
  type        = string
  default     = "primary"

  validation {
    condition     = contains(["primary", "secondary"], var.database_writer)
    error_message = "database_writer must be \"primary\" or \"secondary\"."
  }
}

variable "database_restored_writer_ip" {
  description = "Private IP of a restored instance (a point-in-time clone, or one loaded from a dump) that takes writes instead of database_writer's instance, and serves every region's reads until a replica of it exists (DISASTER_RECOVERY.md section 7). Empty: the instance database_writer names."
  type        = string
  default     = ""

  validation {
    condition     = var.database_restored_writer_ip == "" || can(cidrhost("${var.database_restored_writer_ip}/32", 0))
    error_message = "database_restored_writer_ip must be empty or an IPv4 address."
  }
}

variable "scan_reads_from_writer" {
  description = "Point every region's DATABASE_READ_URL at the writer: use while the read replica is down or lagging."
  type        = bool
  default     = false
}

# ---- Redis --------------------------------------------------------------------------------

variable "redis_memory_gb" {
  description = "Memorystore capacity per region, in GB."
  type        = number
  default     = 1
}

# ---- Pub/Sub ------------------------------------------------------------------------------

variable "scan_events_topic" {
  description = "SCAN_EVENTS_TOPIC."
  type        = string
  default     = "scan-events"
}

variable "scan_events_subscription" {
  description = "SCAN_EVENTS_SUBSCRIPTION: the worker's pull subscription."
  type        = string
  default     = "factory-scan-events"
}

variable "scan_events_dlq_topic" {
  description = "SCAN_EVENTS_DLQ_TOPIC: where undeliverable scan events go."
  type        = string
  default     = "scan-events-dlq"
}

variable "scans_retention_days" {
  description = "Days a row of the scans table is kept (SCANS_RETENTION_DAYS): 0 keeps every scan; otherwise 32 to 36500, longer than Pub/Sub keeps a message. Tags keep their scan_count and first_scanned_at either way."
  type        = number
  default     = 400

  validation {
    condition     = var.scans_retention_days == 0 || (var.scans_retention_days >= 32 && var.scans_retention_days <= 36500)
    error_message = "scans_retention_days must be 0 or between 32 and 36500."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries before a message is dead-lettered (Pub/Sub allows 5 to 100)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100."
  }
}

# ---- audit signing key ----------------------------------------------------------------------

variable "audit_signing_key_present" {
  description = "Set true once a version of <prefix>-audit-signing-key exists (secrets.tf); the factory then mounts it and signs checkpoints."
  type        = bool
  default     = false
}

variable "audit_signing_key_id" {
  description = "AUDIT_SIGNING_KEY_ID published with each signature (name the key so verifiers pick the right public key)."
  type        = string
  default     = "audit-2026-01"
}

variable "audit_signing_key_version" {
  description = "Secret Manager version of the audit key to mount (pin a number when rotating)."
  type        = string
  default     = "latest"
}

variable "audit_public_key_pem" {
  description = "Public key (PEM) of the audit signing key; when set, the audit-verify job checks signatures too (jobs.tf)."
  type        = string
  default     = ""
}

variable "audit_previous_public_keys" {
  description = "Public keys (PEM), by key id, of the other audit signing keys whose signatures are valid: those the current one succeeded, and during a rotation the one about to succeed it. The factory mounts them and sets AUDIT_PREVIOUS_PUBLIC_KEYS, so its own verifier checks their signatures, and the audit-verify job gets them too; empty (before the first rotation), the factory is told `none`: a signature by any key id but audit_signing_key_id is a break. A rotation is two applies (infra/docs/DISASTER_RECOVERY.md section 9): first list the new key here, then switch audit_signing_key_id and list the old one."
  type        = map(string)
  default     = {}

  validation {
    condition = alltrue([
      for id, pem in var.audit_previous_public_keys :
      can(regex("^[A-Za-z0-9_-]{1,64}$", id)) && can(regex("-----BEGIN (RSA )?PUBLIC KEY-----", pem))
    ])
    error_message = "audit_previous_public_keys: each key id is 1 to 64 of A-Z a-z 0-9 _ - (a Secret Manager name holds it), each value a PEM RSA public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)."
  }

  validation {
    condition     = !contains(keys(var.audit_previous_public_keys), var.audit_signing_key_id)
    error_message = "audit_previous_public_keys must not list the current audit_signing_key_id."
  }
}

# ---- load balancer --------------------------------------------------------------------------

variable "domains" {
  description = "Hostnames of the API for the managed certificate (their DNS A records must point at the lb_ip output)."
  type        = list(string)

  validation {
    condition     = length(var.domains) > 0
    error_message = "At least one domain is needed for the managed certificate."
  }
}

variable "lb_failover_mode" {
  description = "\"automatic\": both regions behind each backend, outlier detection moves traffic off a failing region. \"manual\": only active_region is attached."
  type        = string
  default     = "automatic"

  validation {
    condition     = contains(["automatic", "manual"], var.lb_failover_mode)
    error_message = "lb_failover_mode must be \"automatic\" or \"manual\"."
  }
}

variable "active_region" {
  description = "With lb_failover_mode = \"manual\": the region key (\"primary\" or \"secondary\") that gets all traffic."
  type        = string
  default     = "primary"

  validation {
    condition     = contains(["primary", "secondary"], var.active_region)
    error_message = "active_region must be \"primary\" or \"secondary\"."
  }
}

variable "security_policy" {
  description = "Optional Cloud Armor security policy (self link) attached to both public backends."
  type        = string
  default     = null
}

variable "lb_log_sample_rate" {
  description = "Fraction of requests the load balancer logs (0 to 1)."
  type        = number
  default     = 1
}

variable "notification_channels" {
  description = "Cloud Monitoring notification channel ids (projects/<p>/notificationChannels/<id>) for the alerts in monitoring.tf."
  type        = list(string)
  default     = []
}

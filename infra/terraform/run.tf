# Cloud Run (v2) in both regions: scan and factory (public, behind the load balancer only) and
# the scan-event worker (`factory-service worker`, no ingress). The secondary region runs the
# same revisions with var.secondary_min_instances warm instances.
#
# CPU is always allocated (cpu_idle = false) for all three: each works outside its requests.
# The worker pulls from Pub/Sub; scan publishes its scan events from a background task after
# the answer (with CPU throttled between requests, a quiet instance's events would wait for its
# next request); factory `serve` runs the audit checkpointer and the background chain verifier
# that AuditChainBroken relies on.

locals {
  apps = {
    scan    = { image = var.scan_image, args = [], public = true, sa = "scan" }
    factory = { image = var.factory_image, args = ["serve"], public = true, sa = "factory" }
    worker  = { image = var.factory_image, args = ["worker", "--metrics-addr", "0.0.0.0:8080"], public = false, sa = "worker" }
  }

  min_instances = {
    primary   = var.primary_min_instances
    secondary = var.secondary_min_instances
  }

  audit_key_dir = "/secrets/audit"
  # Each earlier audit public key gets a volume of its own, named by position (key ids need not
  # be valid volume names): key id => index.
  audit_previous = { for i, id in sort(keys(var.audit_previous_public_keys)) : id => i }
  # AUDIT_PREVIOUS_PUBLIC_KEYS: `none` until the first rotation (then any key id but the current
  # one is a break), afterwards the mounted files.
  audit_previous_env = length(local.audit_previous) == 0 ? "none" : join(",", [
    for id, i in local.audit_previous : "${id}=/secrets/audit-previous-${i}/key.pem"
  ])

  common_env = {
    APP_ENV                     = "production"
    BIND_ADDR                   = "0.0.0.0:8080"
    LOG_FORMAT                  = "json"
    RUST_LOG                    = var.rust_log
    PUBSUB_PROJECT_ID           = var.project_id
    SCAN_EVENTS_TOPIC           = google_pubsub_topic.scan_events.name
    SCAN_EVENTS_SUBSCRIPTION    = google_pubsub_subscription.factory_scan_events.name
    SCAN_EVENTS_DLQ_TOPIC       = google_pubsub_topic.scan_events_dlq.name
    REDIS_KEY_PREFIX            = var.redis_key_prefix
    REDIS_TIMEOUT_MS            = tostring(var.redis_timeout_ms)
    CIRCUIT_BREAKER_THRESHOLD   = "5"
    CIRCUIT_BREAKER_TIMEOUT_SEC = "60"
    # The load balancer appends the client's address and then its own forwarding rule's
    # (`X-Forwarded-For: <client's claims>, <client>, <this address>`), so that address is a
    # trusted hop too; without it every request would seem to come from the load balancer.
    TRUSTED_PROXIES             = join(",", concat(var.trusted_proxies, ["${google_compute_global_address.lb.address}/32"]))
    OTEL_EXPORTER_OTLP_ENDPOINT = var.otlp_endpoint
  }

  app_env = {
    scan = {
      RATE_LIMIT_IP_PER_MINUTE  = tostring(var.rate_limit_ip_per_minute)
      RATE_LIMIT_IP_BURST       = tostring(var.rate_limit_ip_burst)
      RATE_LIMIT_KEY_PER_MINUTE = tostring(var.rate_limit_key_per_minute)
      RATE_LIMIT_KEY_BURST      = tostring(var.rate_limit_key_burst)
      RATE_LIMIT_FAIL_CLOSED    = tostring(var.rate_limit_fail_closed)
      SCAN_MIN_RESPONSE_MS      = "80"
      SCAN_JITTER_MS            = "10"
      # Cloud Run kills an instance 10 s after SIGTERM. Scans answer in about 80 ms, so a 5 s
      # bound on a request keeps the drain to about 5 s at worst (the default of 30 s would let
      # one slow request use all 10 s) and leaves the rest for flushing the queued scan events,
      # which takes milliseconds while Pub/Sub answers. A flush to a Pub/Sub that does not
      # answer waits up to 8 s, and the kill can cut it: those events are lost unlogged.
      REQUEST_TIMEOUT_SEC = "5"
    }
    factory = {
      # The worker service consumes the scan events; the API's instances, which scale with
      # requests, neither pull nor have the right to (iam.tf).
      SCAN_EVENTS_CONSUMER  = "false"
      MAX_DELIVERY_ATTEMPTS = tostring(var.max_delivery_attempts)
      # The sweep that deletes scans past it runs in `serve` (every 10 minutes).
      SCANS_RETENTION_DAYS   = tostring(var.scans_retention_days)
      CORS_ORIGINS           = join(",", var.cors_origins)
      AUDIT_SIGNING_KEY_FILE = var.audit_signing_key_present ? "${local.audit_key_dir}/key.pem" : ""
      AUDIT_SIGNING_KEY_ID   = var.audit_signing_key_present ? var.audit_signing_key_id : ""
      # Needs the signing key (the service refuses it otherwise), so only with one.
      AUDIT_PREVIOUS_PUBLIC_KEYS = var.audit_signing_key_present ? local.audit_previous_env : ""
    }
    worker = {
      MAX_DELIVERY_ATTEMPTS = tostring(var.max_delivery_attempts)
    }
  }

  # environment variable => secret name (secrets.tf), per app and region key
  secret_env = {
    for rk in keys(local.regions) : rk => {
      scan = {
        DATABASE_URL      = "database-url"
        DATABASE_READ_URL = "database-read-url-${rk}"
        REDIS_URL         = "redis-url-${rk}"
        IP_HASH_KEY       = "ip-hash-key"
      }
      factory = {
        DATABASE_URL = "database-url"
        REDIS_URL    = "redis-url-${rk}"
        JWT_SECRET   = "jwt-secret"
      }
      worker = {
        DATABASE_URL = "database-url"
        REDIS_URL    = "redis-url-${rk}"
      }
    }
  }

  # "<app>-<region key>" => everything one Cloud Run service needs
  run_services = {
    for pair in setproduct(keys(local.apps), keys(local.regions)) : "${pair[0]}-${pair[1]}" => merge(local.apps[pair[0]], {
      app        = pair[0]
      region_key = pair[1]
      region     = local.regions[pair[1]]
      min        = local.min_instances[pair[1]][pair[0]]
      max        = var.max_instances[pair[0]]
      env        = { for k, v in merge(local.common_env, local.app_env[pair[0]]) : k => v if v != "" }
      secret_env = local.secret_env[pair[1]][pair[0]]
    })
  }
}

resource "google_cloud_run_v2_service" "svc" {
  for_each = local.run_services

  name                = "${var.name_prefix}-${each.value.app}"
  location            = each.value.region
  labels              = merge(local.labels, { component = each.value.app, region-role = each.value.region_key })
  deletion_protection = var.deletion_protection
  # Public services take traffic only from the external load balancer; the worker takes none.
  ingress = each.value.public ? "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER" : "INGRESS_TRAFFIC_INTERNAL_ONLY"

  template {
    service_account                  = google_service_account.svc[each.value.sa].email
    execution_environment            = "EXECUTION_ENVIRONMENT_GEN2"
    timeout                          = "30s"
    max_instance_request_concurrency = each.value.app == "scan" ? 200 : 80

    scaling {
      min_instance_count = each.value.min
      max_instance_count = each.value.max
    }

    # Direct VPC egress: Cloud SQL and Memorystore private IPs; the Google APIs stay on the
    # default path.
    vpc_access {
      egress = "PRIVATE_RANGES_ONLY"
      network_interfaces {
        network    = google_compute_network.vpc.id
        subnetwork = google_compute_subnetwork.run[each.value.region_key].id
      }
    }

    containers {
      image = each.value.image
      args  = each.value.args

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "512Mi"
        }
        cpu_idle          = false
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = each.value.env
        content {
          name  = env.key
          value = env.value
        }
      }

      # Pinned to the version Terraform wrote, so a changed secret rolls out a new revision.
      dynamic "env" {
        for_each = each.value.secret_env
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.generated[env.value].secret_id
              version = google_secret_manager_secret_version.generated[env.value].version
            }
          }
        }
      }

      dynamic "volume_mounts" {
        for_each = each.value.app == "factory" && var.audit_signing_key_present ? [1] : []
        content {
          name       = "audit-signing-key"
          mount_path = local.audit_key_dir
        }
      }

      dynamic "volume_mounts" {
        for_each = each.value.app == "factory" && var.audit_signing_key_present ? local.audit_previous : {}
        content {
          name       = "audit-previous-${volume_mounts.value}"
          mount_path = "/secrets/audit-previous-${volume_mounts.value}"
        }
      }

      startup_probe {
        initial_delay_seconds = 0
        period_seconds        = 2
        timeout_seconds       = 1
        failure_threshold     = 30
        http_get {
          path = "/healthz"
          port = 8080
        }
      }

      liveness_probe {
        period_seconds    = 10
        timeout_seconds   = 2
        failure_threshold = 3
        http_get {
          path = "/healthz"
          port = 8080
        }
      }
    }

    dynamic "volumes" {
      for_each = each.value.app == "factory" && var.audit_signing_key_present ? [1] : []
      content {
        name = "audit-signing-key"
        secret {
          secret = google_secret_manager_secret.audit_signing_key.secret_id
          items {
            version = var.audit_signing_key_version
            path    = "key.pem"
            # 0444, Cloud Run's default: the image runs as uid 10001 and secret volume files
            # may be owned by root, so 0400 could leave the key unreadable and the revision
            # unable to start. The container runs nothing but the service.
            mode = 292 # 0444
          }
        }
      }
    }

    dynamic "volumes" {
      for_each = each.value.app == "factory" && var.audit_signing_key_present ? local.audit_previous : {}
      content {
        name = "audit-previous-${volumes.value}"
        secret {
          secret = google_secret_manager_secret.audit_previous_public_key[volumes.key].secret_id
          items {
            version = google_secret_manager_secret_version.audit_previous_public_key[volumes.key].version
            path    = "key.pem"
            mode    = 292 # 0444
          }
        }
      }
    }
  }

  traffic {
    type    = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
    percent = 100
  }

  depends_on = [
    google_secret_manager_secret_iam_member.access,
    google_secret_manager_secret_iam_member.audit_key_factory,
    google_secret_manager_secret_iam_member.audit_previous_keys_factory,
  ]
}

# Memorystore for Redis, one per region: rate-limit buckets, caches and idempotency claims are
# regional and short-lived, so nothing is replicated between regions. STANDARD_HA keeps a
# replica in a second zone with automatic failover.

resource "google_redis_instance" "cache" {
  for_each = local.regions

  name               = "${var.name_prefix}-redis-${each.key}"
  region             = each.value
  tier               = "STANDARD_HA"
  memory_size_gb     = var.redis_memory_gb
  redis_version      = "REDIS_7_2"
  authorized_network = google_compute_network.vpc.id
  connect_mode       = "PRIVATE_SERVICE_ACCESS"
  auth_enabled       = true
  # Traffic stays inside the VPC; TLS would need the instance CA distributed to the services.
  transit_encryption_mode = "DISABLED"
  labels                  = local.labels

  redis_configs = {
    maxmemory-policy = "volatile-lru"
  }

  maintenance_policy {
    weekly_maintenance_window {
      day = "SUNDAY"
      start_time {
        hours   = 3
        minutes = 0
      }
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}

locals {
  redis_urls = {
    for k, r in google_redis_instance.cache : k => "redis://:${r.auth_string}@${r.host}:${r.port}"
  }
}

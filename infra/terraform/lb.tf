# Global external Application Load Balancer (EXTERNAL_MANAGED) in front of both regions.
#
# Serverless NEGs take no health checks; failover is done by the load balancer itself:
#   - each backend service holds both regions' NEGs and sends a request to the closest region;
#   - outlier detection ejects a region that answers consecutive 5xx (or cannot be reached), so
#     traffic moves to the other region within seconds, then probes it back after the ejection;
#   - var.lb_failover_mode = "manual" attaches only var.active_region, for a strict
#     active-passive split that an operator flips (DISASTER_RECOVERY.md).
# Per-region probe paths (/_probe/<region>/<app>) reach one region each, so the uptime checks
# at the end see a regional outage even while the load balancer hides it from users.
# Routing: /v1/scan/* to scan, /metrics and /readyz nowhere (404), everything else to factory.

locals {
  public_apps = ["scan", "factory"]

  served_regions = var.lb_failover_mode == "automatic" ? keys(local.regions) : [var.active_region]
}

resource "google_compute_region_network_endpoint_group" "run" {
  for_each = { for k, s in local.run_services : k => s if s.public }

  name                  = "${var.name_prefix}-${each.key}-neg"
  region                = each.value.region
  network_endpoint_type = "SERVERLESS"

  cloud_run {
    service = google_cloud_run_v2_service.svc[each.key].name
  }
}

resource "google_compute_backend_service" "app" {
  for_each = toset(local.public_apps)

  name                  = "${var.name_prefix}-${each.key}"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"
  security_policy       = var.security_policy

  dynamic "backend" {
    for_each = toset(local.served_regions)
    content {
      group = google_compute_region_network_endpoint_group.run["${each.key}-${backend.value}"].id
    }
  }

  outlier_detection {
    consecutive_errors                    = 5
    consecutive_gateway_failure           = 3
    enforcing_consecutive_errors          = 100
    enforcing_consecutive_gateway_failure = 100
    max_ejection_percent                  = 50
    interval {
      seconds = 10
    }
    base_ejection_time {
      seconds = 30
    }
  }

  log_config {
    enable      = true
    sample_rate = var.lb_log_sample_rate
  }
}

# One region each, used only by the /_probe/ routes.
resource "google_compute_backend_service" "probe" {
  for_each = { for k, s in local.run_services : k => s if s.public }

  name                  = "${var.name_prefix}-probe-${each.key}"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"

  backend {
    group = google_compute_region_network_endpoint_group.run[each.key].id
  }
}

resource "google_compute_url_map" "https" {
  name            = "${var.name_prefix}-https"
  default_service = google_compute_backend_service.app["factory"].id

  host_rule {
    hosts        = ["*"]
    path_matcher = "api"
  }

  path_matcher {
    name            = "api"
    default_service = google_compute_backend_service.app["factory"].id

    route_rules {
      priority = 1
      service  = google_compute_backend_service.app["scan"].id
      match_rules {
        prefix_match = "/v1/scan/"
      }
    }

    # The services' operational endpoints are for the platform, not the internet: /metrics
    # shows the traffic and /readyz names failing dependencies and reaches each of them. Cloud
    # Run's probes and a metrics collector use the container port directly, and the uptime
    # checks use /_probe/ (below), so the load balancer answers 404 for these itself.
    route_rules {
      priority = 2
      service  = google_compute_backend_service.app["factory"].id
      match_rules {
        full_path_match = "/metrics"
      }
      match_rules {
        full_path_match = "/readyz"
      }
      route_action {
        fault_injection_policy {
          abort {
            http_status = 404
            percentage  = 100
          }
        }
      }
    }

    dynamic "route_rules" {
      for_each = { for i, k in sort(keys(google_compute_backend_service.probe)) : k => i }
      content {
        priority = 10 + route_rules.value
        service  = google_compute_backend_service.probe[route_rules.key].id
        match_rules {
          full_path_match = "/_probe/${local.run_services[route_rules.key].region_key}/${local.run_services[route_rules.key].app}"
        }
        route_action {
          url_rewrite {
            path_prefix_rewrite = "/healthz"
          }
        }
      }
    }
  }
}

resource "google_compute_global_address" "lb" {
  name = "${var.name_prefix}-lb"
}

resource "google_compute_managed_ssl_certificate" "api" {
  name = "${var.name_prefix}-api-cert"

  managed {
    domains = var.domains
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_compute_ssl_policy" "modern" {
  name            = "${var.name_prefix}-tls"
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"
}

resource "google_compute_target_https_proxy" "api" {
  name             = "${var.name_prefix}-https"
  url_map          = google_compute_url_map.https.id
  ssl_certificates = [google_compute_managed_ssl_certificate.api.id]
  ssl_policy       = google_compute_ssl_policy.modern.id
}

resource "google_compute_global_forwarding_rule" "https" {
  name                  = "${var.name_prefix}-https"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  ip_address            = google_compute_global_address.lb.id
  port_range            = "443"
  target                = google_compute_target_https_proxy.api.id
}

# Plain HTTP only redirects to HTTPS.
resource "google_compute_url_map" "http_redirect" {
  name = "${var.name_prefix}-http-redirect"

  default_url_redirect {
    https_redirect         = true
    redirect_response_code = "MOVED_PERMANENTLY_DEFAULT"
    strip_query            = false
  }
}

resource "google_compute_target_http_proxy" "redirect" {
  name    = "${var.name_prefix}-http-redirect"
  url_map = google_compute_url_map.http_redirect.id
}

resource "google_compute_global_forwarding_rule" "http" {
  name                  = "${var.name_prefix}-http"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  ip_address            = google_compute_global_address.lb.id
  port_range            = "80"
  target                = google_compute_target_http_proxy.redirect.id
}

# Uptime checks per region and app through the probe routes; alerting on them is in SRE.md.
resource "google_monitoring_uptime_check_config" "region" {
  for_each = { for k, s in local.run_services : k => s if s.public }

  display_name = "${var.name_prefix} ${each.value.app} ${each.value.region_key} (${each.value.region}) /healthz"
  timeout      = "5s"
  period       = "60s"

  http_check {
    path         = "/_probe/${each.value.region_key}/${each.value.app}"
    port         = 443
    use_ssl      = true
    validate_ssl = true
  }

  monitored_resource {
    type = "uptime_url"
    labels = {
      project_id = var.project_id
      host       = var.domains[0]
    }
  }
}

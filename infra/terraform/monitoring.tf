# Cloud Monitoring alerts for what Prometheus cannot see from inside the services: a region that
# stopped answering (the load balancer hides it from users) and replica lag (the RPO of a
# regional failover). Service-level alerts are Prometheus rules: infra/monitoring/.

resource "google_monitoring_alert_policy" "region_down" {
  for_each = google_monitoring_uptime_check_config.region

  display_name = "${var.name_prefix}: ${each.key} failing its uptime check"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "${each.key} /healthz through /_probe fails for 2 minutes"
    condition_threshold {
      filter          = "metric.type=\"monitoring.googleapis.com/uptime_check/check_passed\" AND resource.type=\"uptime_url\" AND metric.label.check_id=\"${each.value.uptime_check_id}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 1
      duration        = "120s"

      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_NEXT_OLDER"
        cross_series_reducer = "REDUCE_COUNT_FALSE"
        group_by_fields      = ["resource.label.host"]
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    content   = "A region stopped answering; the load balancer should already be serving from the other one. Runbook: infra/docs/DISASTER_RECOVERY.md sections 3-4 (SEV-2)."
    mime_type = "text/markdown"
  }

  notification_channels = var.notification_channels
}

resource "google_monitoring_alert_policy" "replica_lag" {
  display_name = "${var.name_prefix}: cross-region replica lag above 30 s"
  combiner     = "OR"
  severity     = "WARNING"

  conditions {
    display_name = "replica_lag of ${google_sql_database_instance.replica.name}"
    condition_threshold {
      filter          = "metric.type=\"cloudsql.googleapis.com/database/replication/replica_lag\" AND resource.type=\"cloudsql_database\" AND resource.label.database_id=\"${var.project_id}:${google_sql_database_instance.replica.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 30
      duration        = "300s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MEAN"
      }
    }
  }

  documentation {
    content   = "The RPO of a regional failover is the replica's lag: above 30 s the 1-minute RPO is at risk, and revocations reach scan late. Runbook: infra/docs/DISASTER_RECOVERY.md section 5."
    mime_type = "text/markdown"
  }

  notification_channels = var.notification_channels
}

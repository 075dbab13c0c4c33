# Cloud Monitoring alerts for what Prometheus cannot see from inside the services: a region that
# stopped answering (the load balancer hides it from users), replica lag (the RPO of a regional
# failover), scan events lost by an instance as it stopped, and the subscription's backlog.
# Service-level alerts are Prometheus rules: infra/monitoring/.

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

# Scan events lost at a shutdown: the process counts them in `scan_events_dropped_total` and
# then exits, so no scrape ever sees that count, and the exit code stays 0 (CONTRACT 2: SIGTERM
# exits 0). The error line it logs is the only trace; count it here.
resource "google_logging_metric" "scan_events_lost_at_shutdown" {
  name   = "${var.name_prefix}-scan-events-lost-at-shutdown"
  filter = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${var.name_prefix}-scan\" AND jsonPayload.message=\"scan events lost at shutdown\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
}

resource "google_monitoring_alert_policy" "scan_events_lost_at_shutdown" {
  display_name = "${var.name_prefix}: scan events lost when a scan instance stopped"
  combiner     = "OR"
  severity     = "ERROR"

  conditions {
    display_name = "log line `scan events lost at shutdown`"
    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.scan_events_lost_at_shutdown.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_SUM"
      }
    }
  }

  documentation {
    content   = "A scan instance stopped (deploy, scale-in) while Pub/Sub did not take its buffered events within the 8 s flush; the log line's `lost` field says how many. Their scans were answered; only their counts are missing. The same incident as ScanEventsDropped (S4): infra/docs/SRE.md, first moves for ScanEventsDropped (SEV-2). During a Pub/Sub outage, hold deploys of the scan service."
    mime_type = "text/markdown"
  }

  notification_channels = var.notification_channels
}

# The scan-event backlog: ScanEventsLagging (Prometheus) measures only events that were applied,
# so events that sit in the subscription undelivered (workers down, streams stuck) show here.
resource "google_monitoring_alert_policy" "scan_events_backlog" {
  display_name = "${var.name_prefix}: scan events older than 5 minutes in ${google_pubsub_subscription.factory_scan_events.name}, for 10 minutes"
  combiner     = "OR"
  severity     = "WARNING"

  conditions {
    display_name = "oldest unacknowledged message older than 300 s"
    condition_threshold {
      filter          = "metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\" AND resource.type=\"pubsub_subscription\" AND resource.label.subscription_id=\"${google_pubsub_subscription.factory_scan_events.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 300
      duration        = "600s"

      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    content   = "Scan events are not being taken from the subscription: scan counts fall behind. First moves as for ScanEventsNotProcessed: infra/docs/SRE.md (SEV-3)."
    mime_type = "text/markdown"
  }

  notification_channels = var.notification_channels
}

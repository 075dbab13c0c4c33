# Scan events: scan publishes to `scan-events`; the factory worker pulls `factory-scan-events`.
# A message that fails max_delivery_attempts times moves to `scan-events-dlq`, where
# `factory-service dlq list|replay` reads it through `<dlq topic>-inspect`.
# Settings match what `factory-service pubsub setup` creates (services/factory-service/src/events/
# setup.rs), so running setup against production changes nothing.
# Pub/Sub is a global service: both regions publish to and pull from the same topic, so a
# regional failover needs no change here.

resource "google_pubsub_topic" "scan_events" {
  name                       = var.scan_events_topic
  labels                     = local.labels
  message_retention_duration = "604800s"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "scan_events_dlq" {
  name                       = var.scan_events_dlq_topic
  labels                     = local.labels
  message_retention_duration = "604800s"

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "factory_scan_events" {
  name                       = var.scan_events_subscription
  topic                      = google_pubsub_topic.scan_events.id
  labels                     = local.labels
  ack_deadline_seconds       = 10 # as `pubsub setup` sets it; the consumer extends its leases
  message_retention_duration = "604800s"
  retain_acked_messages      = false
  # Redelivery is harmless (scans are keyed by event_id); exactly-once would cost latency.
  enable_exactly_once_delivery = false

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.scan_events_dlq.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = "" # never expire, even when the consumer is down for a long time
  }
}

# Without a subscription, messages published to the DLQ topic would be dropped.
resource "google_pubsub_subscription" "scan_events_dlq" {
  name                       = "${var.scan_events_dlq_topic}-inspect"
  topic                      = google_pubsub_topic.scan_events_dlq.id
  labels                     = local.labels
  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"

  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering is done by the Pub/Sub service agent: it must publish to the DLQ topic and
# acknowledge (subscriber) on the source subscription, or messages are never forwarded.
resource "google_pubsub_topic_iam_member" "dlq_publisher_service_agent" {
  topic  = google_pubsub_topic.scan_events_dlq.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "source_subscriber_service_agent" {
  subscription = google_pubsub_subscription.factory_scan_events.id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

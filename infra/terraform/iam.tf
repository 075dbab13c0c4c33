# One service account per process, each with only what it uses.
#   scan:    publish scan events; read DB URLs (writer for key checks, regional replica for tags), Redis URL, IP-hash key
#   factory: the admin API; writer DB URL, Redis, JWT and audit keys; DLQ inspection and replay
#   worker:  pull scan events, publish poison messages to the DLQ; writer DB URL and Redis

resource "google_service_account" "svc" {
  for_each = toset(["scan", "factory", "worker"])

  account_id   = "${var.name_prefix}-${each.key}"
  display_name = "VokeTag ${each.key} (Cloud Run)"
}

locals {
  # service account key => secret names it may read
  secret_access = {
    scan = concat(
      ["ip-hash-key", "database-url"],
      [for k in keys(local.regions) : "database-read-url-${k}"],
      [for k in keys(local.regions) : "redis-url-${k}"],
    )
    factory = concat(
      ["jwt-secret", "database-url"],
      [for k in keys(local.regions) : "redis-url-${k}"],
    )
    worker = concat(
      ["database-url"],
      [for k in keys(local.regions) : "redis-url-${k}"],
    )
  }

  secret_access_pairs = merge([
    for sa, names in local.secret_access : { for n in names : "${sa}/${n}" => { sa = sa, secret = n } }
  ]...)
}

resource "google_secret_manager_secret_iam_member" "access" {
  for_each = local.secret_access_pairs

  secret_id = google_secret_manager_secret.generated[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.svc[each.value.sa].email}"
}

resource "google_secret_manager_secret_iam_member" "audit_key_factory" {
  secret_id = google_secret_manager_secret.audit_signing_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.svc["factory"].email}"
}

resource "google_secret_manager_secret_iam_member" "audit_previous_keys_factory" {
  for_each = var.audit_previous_public_keys

  secret_id = google_secret_manager_secret.audit_previous_public_key[each.key].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.svc["factory"].email}"
}

# Scan publishes events; the factory publishes too when an operator replays the DLQ.
resource "google_pubsub_topic_iam_member" "scan_events_publishers" {
  for_each = toset(["scan", "factory"])

  topic  = google_pubsub_topic.scan_events.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.svc[each.key].email}"
}

# The worker dead-letters poison messages itself (with dlq_* attributes) instead of waiting
# for five failed deliveries.
resource "google_pubsub_topic_iam_member" "worker_dlq_publisher" {
  topic  = google_pubsub_topic.scan_events_dlq.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.svc["worker"].email}"
}

resource "google_pubsub_subscription_iam_member" "worker_subscriber" {
  subscription = google_pubsub_subscription.factory_scan_events.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.svc["worker"].email}"
}

resource "google_pubsub_subscription_iam_member" "factory_dlq_subscriber" {
  subscription = google_pubsub_subscription.scan_events_dlq.id
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.svc["factory"].email}"
}

# `/readyz` checks that topics and subscriptions exist, which needs viewer access.
resource "google_project_iam_member" "pubsub_viewer" {
  for_each = google_service_account.svc

  project = var.project_id
  role    = "roles/pubsub.viewer"
  member  = "serviceAccount:${each.value.email}"
}

# Cloud Run writes logs for every service; traces and metrics need these roles.
resource "google_project_iam_member" "telemetry" {
  for_each = {
    for pair in setproduct(keys(google_service_account.svc), ["roles/cloudtrace.agent", "roles/monitoring.metricWriter"]) :
    "${pair[0]}/${pair[1]}" => { sa = pair[0], role = pair[1] }
  }

  project = var.project_id
  role    = each.value.role
  member  = "serviceAccount:${google_service_account.svc[each.value.sa].email}"
}

# The public APIs are reachable only through the load balancer (ingress setting in run.tf), but
# the load balancer calls unauthenticated, so the two public services allow allUsers to invoke.
resource "google_cloud_run_v2_service_iam_member" "public_invoker" {
  for_each = { for k, s in local.run_services : k => s if s.public }

  project  = var.project_id
  location = google_cloud_run_v2_service.svc[each.key].location
  name     = google_cloud_run_v2_service.svc[each.key].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

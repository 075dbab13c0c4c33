# Operator commands as Cloud Run jobs in the writer's region, on the VPC, with the factory image
# (`jobs_image` when set, so a release's migrations run before its services roll out):
#   gcloud run jobs execute voketag-migrate --region <writer region> --wait
#   gcloud run jobs execute voketag-audit-verify --region <writer region> --wait
#   gcloud run jobs execute voketag-user --region <writer region> --wait \
#     --args=user,end-sessions,--email,ops@example.com      (default args: user list)
#   gcloud run jobs execute voketag-dlq --region <writer region> --wait \
#     --args=dlq,replay,--all                               (default args: dlq list --limit 50)
# `migrate` is the only way the schema changes (never at service start-up); `audit verify` exits
# non-zero on a broken chain, so a failed execution is the alert.

locals {
  writer_region_key = var.database_writer

  jobs = {
    migrate = ["migrate"]
    user    = ["user", "list"]
    dlq     = ["dlq", "list", "--limit", "50"]
    # With the public key given, signatures are checked too: each key named by its id (`ID=PEM`),
    # the current one and those it succeeded, so that a signature by any other id is a break.
    audit-verify = concat(
      ["audit", "verify"],
      var.audit_public_key_pem == "" ? [] : concat(
        ["--public-key", "${var.audit_signing_key_id}=${var.audit_public_key_pem}"],
        flatten([for id, pem in var.audit_previous_public_keys : ["--public-key", "${id}=${pem}"]]),
      ),
    )
  }
}

resource "google_cloud_run_v2_job" "ops" {
  for_each = local.jobs

  name                = "${var.name_prefix}-${each.key}"
  location            = local.regions[local.writer_region_key]
  labels              = merge(local.labels, { component = each.key })
  deletion_protection = var.deletion_protection

  template {
    task_count = 1

    template {
      service_account = google_service_account.svc["factory"].email
      max_retries     = 0
      timeout         = "1800s"

      vpc_access {
        egress = "PRIVATE_RANGES_ONLY"
        network_interfaces {
          network    = google_compute_network.vpc.id
          subnetwork = google_compute_subnetwork.run[local.writer_region_key].id
        }
      }

      containers {
        image = coalesce(var.jobs_image, var.factory_image)
        args  = each.value

        env {
          name  = "APP_ENV"
          value = "production"
        }
        env {
          name  = "LOG_FORMAT"
          value = "json"
        }
        # The project and the event plumbing's names (`dlq list|replay` read and publish them;
        # unset, they would be the local defaults, project `voketag-local`).
        dynamic "env" {
          for_each = {
            PUBSUB_PROJECT_ID        = var.project_id
            SCAN_EVENTS_TOPIC        = google_pubsub_topic.scan_events.name
            SCAN_EVENTS_SUBSCRIPTION = google_pubsub_subscription.factory_scan_events.name
            SCAN_EVENTS_DLQ_TOPIC    = google_pubsub_topic.scan_events_dlq.name
          }
          content {
            name  = env.key
            value = env.value
          }
        }
        env {
          name = "DATABASE_URL"
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.generated["database-url"].secret_id
              version = google_secret_manager_secret_version.generated["database-url"].version
            }
          }
        }

        resources {
          limits = {
            cpu    = "1"
            memory = "512Mi"
          }
        }
      }
    }
  }

  depends_on = [google_secret_manager_secret_iam_member.access]
}

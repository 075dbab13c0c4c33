# Provider, shared names and the Google APIs this deployment needs.

provider "google" {
  project = var.project_id
  region  = var.primary_region
}

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  # "primary" serves by default and holds the writable database; "secondary" is the warm standby.
  regions = {
    primary   = var.primary_region
    secondary = var.secondary_region
  }

  labels = merge({ app = "voketag", managed-by = "terraform" }, var.labels)

  # The Pub/Sub service agent: dead-lettering publishes and acks as this identity.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

resource "google_project_service" "apis" {
  for_each = toset([
    "compute.googleapis.com",
    "iam.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "redis.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "servicenetworking.googleapis.com",
    "sqladmin.googleapis.com",
  ])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# What operators and the runbooks need after `terraform apply`.

output "lb_ip" {
  description = "Global IP of the HTTPS load balancer: point the A records of var.domains here."
  value       = google_compute_global_address.lb.address
}

output "api_base_urls" {
  description = "Public base URLs (scan at /v1/scan/{tag_id}, the admin API everywhere else)."
  value       = [for d in var.domains : "https://${d}"]
}

output "cloud_run_services" {
  description = "Cloud Run service per app and region key: name, region and its run.app URL (reachable only through the load balancer or from inside the project)."
  value = {
    for k, s in google_cloud_run_v2_service.svc : k => {
      name   = s.name
      region = s.location
      uri    = s.uri
    }
  }
}

output "service_accounts" {
  description = "Service account email per process (scan, factory, worker)."
  value       = { for k, sa in google_service_account.svc : k => sa.email }
}

output "database" {
  description = "Cloud SQL instances: which one takes writes now, and their private IPs."
  value = {
    writer              = var.database_writer
    primary_instance    = google_sql_database_instance.primary.name
    primary_ip          = google_sql_database_instance.primary.private_ip_address
    replica_instance    = google_sql_database_instance.replica.name
    replica_ip          = google_sql_database_instance.replica.private_ip_address
    connection_names    = [google_sql_database_instance.primary.connection_name, google_sql_database_instance.replica.connection_name]
    database_url_secret = google_secret_manager_secret.generated["database-url"].secret_id
  }
}

output "redis_hosts" {
  description = "Memorystore host:port per region key."
  value       = { for k, r in google_redis_instance.cache : k => "${r.host}:${r.port}" }
}

output "pubsub" {
  description = "Topic and subscription names (match SCAN_EVENTS_* and the DLQ subscription of `factory-service dlq`)."
  value = {
    topic            = google_pubsub_topic.scan_events.name
    subscription     = google_pubsub_subscription.factory_scan_events.name
    dlq_topic        = google_pubsub_topic.scan_events_dlq.name
    dlq_subscription = google_pubsub_subscription.scan_events_dlq.name
  }
}

output "secrets" {
  description = "Secret Manager secret ids (values are never output)."
  value = merge(
    { for k, s in google_secret_manager_secret.generated : k => s.secret_id },
    { audit-signing-key = google_secret_manager_secret.audit_signing_key.secret_id },
  )
}

output "uptime_probe_paths" {
  description = "Per-region health probes through the load balancer (each reaches exactly one region's /healthz)."
  value       = { for k, s in local.run_services : k => "https://${var.domains[0]}/_probe/${s.region_key}/${s.app}" if s.public }
}

output "ops_jobs" {
  description = "Cloud Run jobs for operator commands: run with `gcloud run jobs execute <name> --region <region> --wait`."
  value       = { for k, j in google_cloud_run_v2_job.ops : k => { name = j.name, region = j.location } }
}

# Cloud SQL for PostgreSQL: a regional (HA, synchronous standby in a second zone) primary in the
# primary region and an asynchronous cross-region read replica in the secondary region.
#   - zone failure: Cloud SQL fails over to the standby by itself (about a minute, no data loss);
#   - region failure: an operator promotes the replica (infra/docs/DISASTER_RECOVERY.md) and sets
#     var.database_writer = "secondary", which repoints DATABASE_URL everywhere.
# Backups: daily automated backups plus point-in-time recovery (WAL kept transaction_log_days).

resource "google_sql_database_instance" "primary" {
  name                = "${var.name_prefix}-pg-${var.primary_region}"
  region              = var.primary_region
  database_version    = "POSTGRES_16"
  deletion_protection = var.deletion_protection

  settings {
    tier              = var.db_tier
    edition           = var.db_edition
    availability_type = "REGIONAL"
    disk_type         = "PD_SSD"
    disk_size         = var.db_disk_size_gb
    disk_autoresize   = true
    user_labels       = local.labels

    deletion_protection_enabled = var.deletion_protection

    ip_configuration {
      ipv4_enabled                                  = false
      private_network                               = google_compute_network.vpc.id
      enable_private_path_for_google_cloud_services = true
      ssl_mode                                      = "ENCRYPTED_ONLY"
    }

    backup_configuration {
      enabled                        = true
      start_time                     = var.db_backup_start_time
      point_in_time_recovery_enabled = true
      transaction_log_retention_days = var.db_transaction_log_days
      location                       = var.db_backup_location

      backup_retention_settings {
        retained_backups = var.db_retained_backups
        retention_unit   = "COUNT"
      }
    }

    maintenance_window {
      day          = 7
      hour         = 3
      update_track = "stable"
    }

    insights_config {
      query_insights_enabled  = true
      record_application_tags = true
      record_client_address   = false
    }

    database_flags {
      name  = "log_min_duration_statement"
      value = "500"
    }
  }

  depends_on = [google_service_networking_connection.private_services]
}

resource "google_sql_database_instance" "replica" {
  name                 = "${var.name_prefix}-pg-${var.secondary_region}"
  region               = var.secondary_region
  database_version     = "POSTGRES_16"
  master_instance_name = google_sql_database_instance.primary.name
  deletion_protection  = var.deletion_protection

  replica_configuration {
    failover_target = false
  }

  settings {
    tier              = var.db_tier
    edition           = var.db_edition
    availability_type = "ZONAL"
    disk_type         = "PD_SSD"
    disk_size         = var.db_disk_size_gb
    disk_autoresize   = true
    user_labels       = local.labels

    ip_configuration {
      ipv4_enabled                                  = false
      private_network                               = google_compute_network.vpc.id
      enable_private_path_for_google_cloud_services = true
      ssl_mode                                      = "ENCRYPTED_ONLY"
    }
  }

  lifecycle {
    # After a regional failover the replica is promoted by hand (gcloud sql instances
    # promote-replica). Ignoring these keeps Terraform from destroying the new primary to
    # "restore" the replication link; the runbook re-creates a replica afterwards.
    ignore_changes = [master_instance_name, replica_configuration]
  }
}

resource "google_sql_database" "voketag" {
  name     = var.db_name
  instance = google_sql_database_instance.primary.name
}

resource "random_password" "db" {
  length  = 40
  special = false
}

resource "google_sql_user" "app" {
  name     = var.db_user
  instance = google_sql_database_instance.primary.name
  password = random_password.db.result
}

locals {
  db_instances = {
    primary   = google_sql_database_instance.primary
    secondary = google_sql_database_instance.replica
  }

  # Writes go to whichever instance is the writer; after a promotion that is the old replica,
  # after a restore the restored instance (var.database_restored_writer_ip).
  db_restored  = var.database_restored_writer_ip != ""
  db_writer_ip = local.db_restored ? var.database_restored_writer_ip : local.db_instances[var.database_writer].private_ip_address

  db_url_base = "postgres://${google_sql_user.app.name}:${random_password.db.result}@%s:5432/${google_sql_database.voketag.name}?sslmode=require"

  database_url = format(local.db_url_base, local.db_writer_ip)

  # Scan look-ups read from the instance in their own region (the replica in the secondary),
  # or from the writer everywhere while the replica is broken (var.scan_reads_from_writer) or
  # replicates a timeline that was restored away (var.database_restored_writer_ip).
  database_read_urls = {
    for k, inst in local.db_instances : k => (
      var.scan_reads_from_writer || local.db_restored ? local.database_url : format(local.db_url_base, inst.private_ip_address)
    )
  }
}

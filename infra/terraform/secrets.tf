# Secret Manager. Generated secrets (JWT key, IP-hash key, connection URLs) get their versions
# from Terraform; the audit signing key is created outside Terraform so the private key never
# enters the state:
#   openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out audit.pem
#   openssl pkey -in audit.pem -pubout -out audit.pub.pem   # the public key: publish it, and set
#                                                           # audit_public_key_pem from it
#   gcloud secrets versions add voketag-audit-signing-key --data-file=audit.pem && shred -u audit.pem
# then set audit_signing_key_present = true.

resource "random_password" "jwt" {
  length  = 64
  special = false
}

resource "random_password" "ip_hash_key" {
  length  = 64
  special = false
}

locals {
  # for_each needs non-sensitive keys, so the names are listed apart from the (sensitive) values.
  generated_secret_names = toset(concat(
    ["jwt-secret", "ip-hash-key", "database-url"],
    [for k in keys(local.regions) : "database-read-url-${k}"],
    [for k in keys(local.regions) : "redis-url-${k}"],
  ))

  generated_secrets = merge(
    {
      jwt-secret   = random_password.jwt.result
      ip-hash-key  = random_password.ip_hash_key.result
      database-url = local.database_url
    },
    { for k, v in local.database_read_urls : "database-read-url-${k}" => v },
    { for k, v in local.redis_urls : "redis-url-${k}" => v },
  )
}

resource "google_secret_manager_secret" "generated" {
  for_each = local.generated_secret_names

  secret_id = "${var.name_prefix}-${each.key}"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "generated" {
  for_each = local.generated_secret_names

  secret      = google_secret_manager_secret.generated[each.key].id
  secret_data = local.generated_secrets[each.key]
}

# The public keys the audit signing key succeeded (not secret; Secret Manager is how Cloud Run
# mounts a file), one secret per key id.
resource "google_secret_manager_secret" "audit_previous_public_key" {
  for_each = var.audit_previous_public_keys

  secret_id = "${var.name_prefix}-audit-previous-${each.key}"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "audit_previous_public_key" {
  for_each = var.audit_previous_public_keys

  secret      = google_secret_manager_secret.audit_previous_public_key[each.key].id
  secret_data = each.value
}

resource "google_secret_manager_secret" "audit_signing_key" {
  secret_id = "${var.name_prefix}-audit-signing-key"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

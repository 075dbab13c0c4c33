# One global VPC. Each region gets a subnet for Cloud Run Direct VPC egress; Cloud SQL and
# Memorystore sit on a Private Service Access range, so neither has a public IP.

resource "google_compute_network" "vpc" {
  name                    = "${var.name_prefix}-vpc"
  auto_create_subnetworks = false
  routing_mode            = "GLOBAL"

  depends_on = [google_project_service.apis]
}

resource "google_compute_subnetwork" "run" {
  for_each = local.regions

  name                     = "${var.name_prefix}-run-${each.key}"
  region                   = each.value
  network                  = google_compute_network.vpc.id
  ip_cidr_range            = var.run_subnet_cidrs[each.key]
  private_ip_google_access = true
}

# The range Google-managed services (Cloud SQL, Memorystore) take their private IPs from.
resource "google_compute_global_address" "private_services" {
  name          = "${var.name_prefix}-private-services"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = 16
  network       = google_compute_network.vpc.id
}

resource "google_service_networking_connection" "private_services" {
  network                 = google_compute_network.vpc.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_services.name]
}

# Terraform and provider versions. The lock file (.terraform.lock.hcl) is committed by whoever
# first runs `terraform init` with network access to registry.terraform.io.
terraform {
  # 1.9: variable validations refer to other variables (secondary_region, audit keys).
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.20"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
  }

  # State lives in a versioned GCS bucket created out of band (see README.md):
  #   terraform init -backend-config="bucket=<project>-tfstate" -backend-config="prefix=voketag"
  backend "gcs" {}
}

#!/usr/bin/env bash
# `make infra-check`: `terraform fmt -check` on infra/terraform, then `terraform init
# -backend=false` + `terraform validate` when the provider plugins can be installed. Where the
# Terraform registry is unreachable (this build machine), validate is skipped and said so plainly;
# an offline schema check runs instead when it can, and the exit status reflects fmt and that
# check. Also `promtool check rules` + `promtool test rules` on infra/monitoring when promtool is
# installed (apt-get install -y prometheus).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=infra/terraform

log() { printf '[infra-check] %s\n' "$*" >&2; }
command -v terraform >/dev/null || { log "FAILED: terraform is not installed (https://developer.hashicorp.com/terraform/install)"; exit 1; }
# A TF_CLI_CONFIG_FILE that does not exist only produces a warning on every command.
if [ -n "${TF_CLI_CONFIG_FILE:-}" ] && [ ! -e "$TF_CLI_CONFIG_FILE" ]; then unset TF_CLI_CONFIG_FILE; fi
export TF_IN_AUTOMATION=1 TF_INPUT=0

fmt="PASS" validate="" rc=0
if ! terraform fmt -check -recursive -diff "$dir"; then
  fmt="FAIL (run: terraform fmt -recursive $dir)"
  rc=1
fi

# Without the registry, check names against the provider schema shipped in the prebuilt CDKTF
# bindings instead (scripts/tf-schema-check.py). INFRA_FETCH_SCHEMA=1 downloads them (31 MB, npm).
schema_pkg="@cdktf/provider-google@16.12.1"
schema_dir="${XDG_CACHE_HOME:-$HOME/.cache}/voketag/cdktf-provider-google-16.12.1"
schema="SKIPPED: not needed (validate ran)"
schema_check() {
  if [ ! -f "$schema_dir/package/.jsii" ] && [ "${INFRA_FETCH_SCHEMA:-0}" = 1 ] && command -v npm >/dev/null; then
    mkdir -p "$schema_dir"
    (cd "$schema_dir" && npm pack --silent "$schema_pkg" >/dev/null && tar -xzf cdktf-provider-google-16.12.1.tgz package/.jsii && rm -f ./*.tgz) ||
      log "could not fetch $schema_pkg"
  fi
  if [ ! -f "$schema_dir/package/.jsii" ]; then
    schema="SKIPPED: no provider schema cached (INFRA_FETCH_SCHEMA=1 make infra-check fetches $schema_pkg)"
  elif ! python3 -c 'import hcl2' 2>/dev/null; then
    schema="SKIPPED: python-hcl2 is not installed (pip install python-hcl2)"
  elif python3 scripts/tf-schema-check.py "$dir" "$schema_dir/package/.jsii" >&2; then
    schema="PASS (argument, block and attribute names, required arguments; google provider 6.50.0 schema)"
  else
    schema="FAIL"
    rc=1
  fi
}

# Init into a throw-away data dir; only .terraform.lock.hcl (worth committing) lands in the tree.
data_dir=$(mktemp -d)
trap 'rm -rf "$data_dir"' EXIT
init_log="$data_dir/init.log"
if TF_DATA_DIR="$data_dir" timeout "${INFRA_INIT_TIMEOUT:-180}" terraform -chdir="$dir" init -backend=false -input=false -no-color >"$init_log" 2>&1; then
  if TF_DATA_DIR="$data_dir" terraform -chdir="$dir" validate -no-color; then
    validate="PASS"
  else
    validate="FAIL"
    rc=1
  fi
elif grep -Eqi 'registry\.terraform\.io|Failed to query available provider packages|could not connect|no such host|dial tcp|i/o timeout|Failed to install provider' "$init_log"; then
  validate="SKIPPED: the provider plugins (hashicorp/google, hashicorp/random) cannot be downloaded here ($(grep -Eom1 'no such host|dial tcp[^,]*|i/o timeout|Failed to query available provider packages|could not connect[^.]*' "$init_log"))"
  schema_check
else
  validate="FAIL: terraform init failed for a reason other than the network:"
  sed -n '1,40p' "$init_log" >&2
  rc=1
fi

rules=infra/monitoring/prometheus-rules.yml
if command -v promtool >/dev/null; then
  if promtool check rules "$rules" >&2 && promtool test rules "${rules%.yml}.test.yml" >&2; then
    prom="PASS"
  else
    prom="FAIL"
    rc=1
  fi
else
  prom="SKIPPED: promtool is not installed (apt-get install -y prometheus)"
fi

printf '\n  terraform fmt -check:  %s\n  terraform validate:    %s\n  offline schema check:  %s\n  promtool check+test:   %s\n\n' \
  "$fmt" "$validate" "$schema" "$prom"
if [ $rc -eq 0 ]; then
  case "$validate" in
    SKIPPED*)
      if [[ "$schema" == PASS* ]]; then
        log "OK, but terraform validate did NOT run (see above): formatting and the offline schema check only"
      else
        log "OK, but terraform validate did NOT run (see above): formatting only"
      fi
      ;;
    *) log "OK: fmt and validate passed" ;;
  esac
else
  log "FAILED"
fi
exit $rc

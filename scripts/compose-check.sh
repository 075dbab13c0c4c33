#!/usr/bin/env bash
# Validates docker-compose.yml without a Docker engine (`make lint` runs it). Uses the first of:
#   1. docker compose config -q     (the Compose v2 plugin)
#   2. docker-compose config -q     (Compose v1, Debian's docker-compose package)
#   3. install Debian's docker-compose (only as root with apt-get; COMPOSE_CHECK_NO_INSTALL=1 skips)
#   4. python3 + PyYAML: the file parses, every service has image or build, depends_on names exist
# and says which one ran. Usage: scripts/compose-check.sh [compose file]
set -euo pipefail
cd "$(dirname "$0")/.."
file="${1:-docker-compose.yml}"

log() { printf '[compose-check] %s\n' "$*" >&2; }
[ -f "$file" ] || { log "ERROR: $file not found"; exit 1; }

run_validator() { # name command...
  local name=$1; shift
  if "$@" config -q; then
    log "OK: $file is valid (validator: $name)"
    exit 0
  fi
  log "FAILED: $file is invalid (validator: $name)"
  exit 1
}

if docker compose version >/dev/null 2>&1; then
  run_validator "docker compose (v2 plugin)" docker compose -f "$file"
fi
if command -v docker-compose >/dev/null 2>&1; then
  run_validator "docker-compose $(docker-compose version --short 2>/dev/null || echo '(v1)')" docker-compose -f "$file"
fi
if [ "${COMPOSE_CHECK_NO_INSTALL:-0}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "neither 'docker compose' nor 'docker-compose' is installed: installing Debian's docker-compose"
  if apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null 2>&1 &&
    command -v docker-compose >/dev/null; then
    run_validator "docker-compose $(docker-compose version --short 2>/dev/null || echo '(v1)') (just installed)" docker-compose -f "$file"
  fi
  log "could not install docker-compose; falling back to python3"
fi

if command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null; then
  log "WARNING: no Compose implementation available; only a structural check with python3 + PyYAML runs"
  if python3 - "$file" <<'PY'; then
import sys, yaml
path = sys.argv[1]
try:
    doc = yaml.safe_load(open(path))
except yaml.YAMLError as e:
    sys.exit(f"[compose-check] {path} does not parse: {e}")
errors = []
services = doc.get("services") if isinstance(doc, dict) else None
if not isinstance(services, dict) or not services:
    sys.exit(f"[compose-check] {path}: no 'services' mapping")
conditions = {"service_started", "service_healthy", "service_completed_successfully"}
for name, svc in services.items():
    if not isinstance(svc, dict):
        errors.append(f"service {name}: not a mapping"); continue
    if "image" not in svc and "build" not in svc:
        errors.append(f"service {name}: needs image or build")
    deps = svc.get("depends_on") or {}
    for dep in (deps if isinstance(deps, list) else deps.keys()):
        if dep not in services:
            errors.append(f"service {name}: depends_on unknown service {dep}")
        elif isinstance(deps, dict) and (deps[dep] or {}).get("condition", "service_started") not in conditions:
            errors.append(f"service {name}: depends_on {dep} has an unknown condition")
for e in errors:
    print(f"[compose-check] {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
    log "OK: $file parses and its services are well formed (validator: python3 + PyYAML, structural only)"
    exit 0
  fi
  log "FAILED: $file is invalid (validator: python3 + PyYAML, structural only)"
  exit 1
fi

log "FAILED: no validator available: install the Compose plugin (docker-compose-plugin), docker-compose (apt-get install -y docker-compose) or PyYAML (pip install pyyaml)"
exit 1

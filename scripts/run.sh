#!/usr/bin/env bash
# Builds and starts both services against the local dependencies (see `make run`): migrates,
# creates the Pub/Sub topics and subscriptions, signs in a demo admin, creates a demo product and
# batch, and prints the URLs. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

export PUBSUB_EMULATOR_HOST="${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}"
export APP_ENV="${APP_ENV:-development}"
export LOG_FORMAT="${LOG_FORMAT:-pretty}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/voketag}"
# Demo credentials for local use only; override them in the environment.
export BOOTSTRAP_ADMIN_EMAIL="${BOOTSTRAP_ADMIN_EMAIL:-admin@voketag.local}"
export BOOTSTRAP_ADMIN_PASSWORD="${BOOTSTRAP_ADMIN_PASSWORD:-voketag-demo-password}"
# A fixed development secret keeps sessions valid across restarts of `make run`.
export JWT_SECRET="${JWT_SECRET:-voketag-local-development-secret-not-for-production}"

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "run: $tool is needed (apt-get install -y $tool)" >&2; exit 1; }
done

SCAN_ADDR="${SCAN_BIND_ADDR:-127.0.0.1:8080}"
FACTORY_ADDR="${FACTORY_BIND_ADDR:-127.0.0.1:8081}"
# A listener already there (an earlier `make run`, say) would answer the checks below in place
# of the services started here, which would then have failed to bind.
for addr in "$FACTORY_ADDR" "$SCAN_ADDR"; do
  if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
    echo "run: $addr is already in use (an earlier make run?); stop it, or set FACTORY_BIND_ADDR / SCAN_BIND_ADDR" >&2
    exit 1
  fi
done

cargo build -q -p factory-service -p scan-service
BIN="${CARGO_TARGET_DIR:-target}/debug"
"$BIN/factory-service" migrate
"$BIN/factory-service" pubsub setup

BIND_ADDR="$FACTORY_ADDR" "$BIN/factory-service" serve &
factory=$!
BIND_ADDR="$SCAN_ADDR" "$BIN/scan-service" &
scan=$!
trap 'kill -TERM $factory $scan 2>/dev/null; wait' INT TERM EXIT

for pair in "$factory http://$FACTORY_ADDR/healthz" "$scan http://$SCAN_ADDR/healthz"; do
  pid=${pair%% *} url=${pair#* }
  ok=
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { echo "run: the service for $url exited (see its log above)" >&2; exit 1; }
    curl -fsS "$url" >/dev/null 2>&1 && { ok=1; break; }
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "run: $url did not answer" >&2; exit 1; }
done

# Demo data: one product with a small batch, unless it exists already.
F="http://$FACTORY_ADDR"
token=$(curl -fsS "$F/v1/auth/login" -H 'content-type: application/json' -H 'x-device-id: make-run-demo-device' \
  -d "{\"email\":\"$BOOTSTRAP_ADMIN_EMAIL\",\"password\":\"$BOOTSTRAP_ADMIN_PASSWORD\"}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
product=$(curl -sS "$F/v1/products" -H "authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"name":"Demo handbag","sku":"DEMO-BAG-001"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin).get("id",""))')
demo_tag=
if [ -n "$product" ]; then
  batch=$(curl -fsS "$F/v1/batches" -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d "{\"product_id\":\"$product\",\"quantity\":10}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  demo_tag=$(curl -fsS "$F/v1/batches/$batch/tags" -H "authorization: Bearer $token" | sed -n 2p)
fi
[ -n "$demo_tag" ] || demo_tag=$(psql "$DATABASE_URL" -tAc "SELECT tag_id FROM tags WHERE status = 'authentic' ORDER BY created_at LIMIT 1")

cat <<MSG

  VokeTag is running.
    scan service:     http://$SCAN_ADDR      (GET /v1/scan/{tag_id}, /healthz, /readyz, /metrics)
    factory service:  http://$FACTORY_ADDR   (admin API, /openapi.json, /healthz, /readyz, /metrics)
    admin console:    http://localhost:${FACTORY_ADDR##*:}/admin/
  Demo admin: $BOOTSTRAP_ADMIN_EMAIL / $BOOTSTRAP_ADMIN_PASSWORD
  Try a scan:  curl -s http://$SCAN_ADDR/v1/scan/$demo_tag
  Ctrl-C stops both.

MSG
wait

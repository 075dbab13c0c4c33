#!/usr/bin/env bash
# The admin console's end-to-end tests in real headless Chromium (Debian's package, driven by
# playwright-core from e2e/). Builds factory-service, gives it a fresh database, starts it on a
# free port with a 5-second access token, runs `node --test` in e2e/, then stops the service and
# drops the database. Screenshots land in test-output/e2e/. Extra arguments go to `node --test`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT="$ROOT/test-output/e2e"
PG=(psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA)

log() { printf '[e2e] %s\n' "$*" >&2; }
die() { printf '[e2e] ERROR: %s\n' "$*" >&2; exit 1; }

# 1. Chromium and its driver, from Debian (a test tool's own browser download cannot work here).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ]; then
    log "installing Debian's chromium and chromium-driver"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    die "/usr/bin/chromium is missing and this is not root: run 'sudo apt-get install -y chromium chromium-driver' and try again"
  fi
fi

# 2. playwright-core, exactly as locked.
(cd e2e && npm ci --no-audit --no-fund --loglevel=error)

# 3. The service, and PostgreSQL and Redis to run it against.
cargo build -q -p factory-service
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/factory-service"
if ! pg_isready -q -h 127.0.0.1 || [ "$(redis-cli -h 127.0.0.1 ping 2>/dev/null)" != PONG ]; then
  scripts/dev-services.sh up
fi

DB="voketag_e2e_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
WORK=$(mktemp -d)
PID=
cleanup() {
  local status=$?
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" && wait "$PID" 2>/dev/null || true
  fi
  "${PG[@]}" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || log "could not drop $DB"
  if [ $status -ne 0 ] && [ -f "$WORK/service.log" ]; then
    cp "$WORK/service.log" "$OUT/service.log" && log "service log: $OUT/service.log"
  fi
  rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT INT TERM

log "database $DB"
"${PG[@]}" -c "CREATE DATABASE \"$DB\""
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
"$BIN" migrate >/dev/null

# A free port: bind :0, read it back, release it (the service binds it a moment later).
PORT=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
ADMIN_EMAIL="e2e-admin@example.com"
ADMIN_PASSWORD="e2e-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
ACCESS_TTL=5
# A throwaway RSA key, so the checkpoint the audit page shows is really signed.
command -v openssl >/dev/null || die "openssl is needed for the test's audit signing key: apt-get install -y openssl"
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/audit.pem" 2>/dev/null

mkdir -p "$OUT"
rm -f "$OUT"/*.png "$OUT/service.log"
log "starting factory-service on 127.0.0.1:$PORT"
env BIND_ADDR="127.0.0.1:$PORT" APP_ENV=test LOG_FORMAT=json RUST_LOG=warn \
  JWT_SECRET="e2e-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" \
  ACCESS_TOKEN_TTL_SEC=$ACCESS_TTL \
  BOOTSTRAP_ADMIN_EMAIL="$ADMIN_EMAIL" BOOTSTRAP_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
  REDIS_KEY_PREFIX="vt-e2e-$DB" \
  ADMIN_RATE_LIMIT_RPS=50 ADMIN_RATE_LIMIT_BURST=100 \
  AUDIT_SIGNING_KEY_FILE="$WORK/audit.pem" AUDIT_SIGNING_KEY_ID=e2e-key \
  AUDIT_CHECKPOINT_EVERY=5 AUDIT_CHECKPOINT_INTERVAL_SEC=2 \
  "$BIN" serve >"$WORK/service.log" 2>&1 &
PID=$!
for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/service.log" >&2; die "factory-service exited during start-up"; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null || die "factory-service did not answer /healthz"

# A read-only user, to check the console shows a viewer only what a viewer may use. Created
# after start-up: the bootstrap admin is only made when no user exists yet.
VIEWER_EMAIL="e2e-viewer@example.com"
VIEWER_PASSWORD="e2e-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
FACTORY_USER_PASSWORD="$VIEWER_PASSWORD" "$BIN" user create --email "$VIEWER_EMAIL" --role viewer >/dev/null

# http://localhost, not 127.0.0.1: the tests use 127.0.0.1 as "another site". Both are
# potentially trustworthy origins for Chromium, so the Secure __Host- cookies work over http.
log "running the console tests in Chromium"
(cd e2e && E2E_BASE_URL="http://localhost:$PORT" E2E_ADMIN_EMAIL="$ADMIN_EMAIL" \
  E2E_ADMIN_PASSWORD="$ADMIN_PASSWORD" E2E_VIEWER_EMAIL="$VIEWER_EMAIL" \
  E2E_VIEWER_PASSWORD="$VIEWER_PASSWORD" E2E_ACCESS_TTL_SEC=$ACCESS_TTL E2E_OUTPUT_DIR="$OUT" \
  node --test --test-concurrency=1 --test-reporter=spec "$@" tests/)
log "passed; screenshots in $OUT"

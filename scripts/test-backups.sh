#!/usr/bin/env bash
# Proves the backup tooling catches what it must (`make test-backups`):
#   0. restore-test passes on a migrated but empty database
#   1. restore-test passes on a populated database
#   2. restore-test fails on a corrupted dump          (--selftest-corrupt-dump)
#   3. restore-test fails on a tampered audit row       (--selftest-tamper-audit)
#   4. verify-backups passes
#   5. verify-backups fails when the newest backup is too old
#   6. verify-backups fails on a corrupted backup
#   7. restore-test started in another directory reads relative BACKUP_DIR and key files from there
# It builds its own database voketag_backup_test_<pid> on the server of DATABASE_URL, migrates it
# with `factory-service migrate` (or psql when the binary is missing) and fills it through the real
# admin API (`factory-service serve` with a bootstrap admin) when it can, else with SQL.
# Cases 1 and 4 need `factory-service audit verify` (FACTORY_BIN, default target/debug/factory-service).
set -euo pipefail
BK_CALLER_DIR="$PWD"
cd "$(dirname "$0")/.."
BK_NAME=test-backups
# shellcheck source=scripts/lib/backup.sh
. scripts/lib/backup.sh

bk_require_tools
command -v curl >/dev/null || bk_die "curl is not installed: apt-get install -y curl"
bk_check_reachable "$DATABASE_URL"

ADMIN_URL="$DATABASE_URL" # DATABASE_URL is pointed at the test database below
TEST_DB="voketag_backup_test_$$"
TEST_URL=$(url_with_db "$DATABASE_URL" "$TEST_DB")
work=$(mktemp -d)
server_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
  bk_psql "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$TEST_DB\" WITH (FORCE)" >/dev/null 2>&1 ||
    bk_log "WARNING: could not drop $TEST_DB; drop it by hand"
  if [ "${KEEP_LOGS:-0}" = 1 ]; then bk_log "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

has_subcommand() { [ -x "$FACTORY_BIN" ] && "$FACTORY_BIN" "$@" --help >/dev/null 2>&1; }

# --- a database like production's ------------------------------------------------------------
bk_psql "$ADMIN_URL" -c "CREATE DATABASE \"$TEST_DB\"" >/dev/null
if has_subcommand migrate; then
  bk_log "migrating $TEST_DB with $FACTORY_BIN migrate"
  DATABASE_URL="$TEST_URL" APP_ENV=development LOG_FORMAT=pretty RUST_LOG=warn "$FACTORY_BIN" migrate
  migrated_by="factory-service migrate"
else
  bk_log "no $FACTORY_BIN: applying migrations/*.up.sql with psql and recording them like sqlx"
  bk_psql "$TEST_URL" -c "CREATE TABLE _sqlx_migrations (version bigint PRIMARY KEY, description text NOT NULL,
    installed_on timestamptz NOT NULL DEFAULT now(), success boolean NOT NULL, checksum bytea NOT NULL,
    execution_time bigint NOT NULL)" >/dev/null
  for f in migrations/*.up.sql; do
    bk_psql "$TEST_URL" -f "$f" >/dev/null
    v=$(basename "$f"); v=${v%%_*}
    bk_psql "$TEST_URL" -c "INSERT INTO _sqlx_migrations VALUES ($v, '$(basename "$f" .up.sql)', now(), true, '\\x00', 0)" >/dev/null
  done
  migrated_by="psql"
fi

results=() failures=0
run_case() { # name expect(pass|fail) pattern-required-in-output command...
  local name=$1 expect=$2 pattern=$3 rc=0 out
  shift 3
  out=$("$@" 2>&1) || rc=$?
  printf '%s\n' "$out" >"$work/$(tr ' ' _ <<<"$name").log"
  local ok=1 why=""
  if [ "$expect" = pass ] && [ $rc -ne 0 ]; then ok=0 why="exit $rc: $(grep -m1 'FAILED' <<<"$out" || true)"; fi
  if [ "$expect" = fail ] && [ $rc -eq 0 ]; then ok=0 why="exited 0 but must fail"; fi
  if [ $ok = 1 ] && [ -n "$pattern" ] && ! grep -Eq "$pattern" <<<"$out"; then ok=0 why="output lacks /$pattern/: $(grep -m1 'FAILED' <<<"$out" || true)"; fi
  if [ $ok = 1 ]; then results+=("PASS  $name"); else results+=("FAIL  $name  ($why)"); failures=$((failures + 1)); fi
}

# An empty but migrated database must verify too (no audit events, no rows).
if has_subcommand audit verify; then
  DATABASE_URL="$TEST_URL" BACKUP_DIR="$work/empty" run_case "restore-test passes on a migrated, empty database" pass \
    'OK: every check passed' scripts/restore_test.sh
fi

api() { # method path [json] -> body on stdout; fails on non-2xx
  local method=$1 path=$2 body=${3:-}
  local args=(-sS -f -X "$method" "http://$addr$path" -H "Authorization: Bearer ${token:-}"
    -H "Idempotency-Key: backup-test-$RANDOM-$RANDOM")
  [ -n "$body" ] && args+=(-H 'Content-Type: application/json' -d "$body")
  curl "${args[@]}"
}
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" 2>/dev/null; }

populate_via_api() {
  has_subcommand serve || return 1
  local port email=backup-admin@example.test password="backup-test-$RANDOM-$RANDOM-pw"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  addr="127.0.0.1:$port"
  # A real signing key, so `audit verify --public-key` checks signatures as well as hashes.
  local signing=()
  if command -v openssl >/dev/null; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/audit.pem" 2>/dev/null &&
      openssl pkey -in "$work/audit.pem" -pubout -out "$work/audit.pub.pem" 2>/dev/null &&
      signing=(AUDIT_SIGNING_KEY_FILE="$work/audit.pem" AUDIT_SIGNING_KEY_ID=backup-test AUDIT_SIGN_EVENTS=true)
  fi
  env "${signing[@]+"${signing[@]}"}" \
  BIND_ADDR="$addr" DATABASE_URL="$TEST_URL" APP_ENV=development LOG_FORMAT=pretty RUST_LOG=warn \
    JWT_SECRET="backup-test-secret-$RANDOM$RANDOM$RANDOM$RANDOM" \
    BOOTSTRAP_ADMIN_EMAIL="$email" BOOTSTRAP_ADMIN_PASSWORD="$password" \
    PUBSUB_EMULATOR_HOST="${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}" \
    "$FACTORY_BIN" serve >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 100); do curl -fsS "http://$addr/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
  token=$(curl -sS -f -X POST "http://$addr/v1/auth/login" -H 'Content-Type: application/json' \
    -H 'X-Device-ID: backup-test-device-0001' -d "{\"email\":\"$email\",\"password\":\"$password\"}" |
    json_field access_token) || { bk_log "login through the admin API failed"; return 1; }
  api POST /v1/api-keys '{"name":"backup test key"}' >/dev/null || return 1
  local key_id product batch tag
  key_id=$(api POST /v1/api-keys '{"name":"revoked backup test key"}' | json_field id) || return 1
  api DELETE "/v1/api-keys/$key_id" >/dev/null || return 1
  product=$(api POST /v1/products "{\"name\":\"Backup Test Bag\",\"sku\":\"BK-$$\"}" | json_field id) || return 1
  batch=$(api POST /v1/batches "{\"product_id\":\"$product\",\"quantity\":25}" | json_field id) || return 1
  tag=$(api GET "/v1/batches/$batch/tags" | grep -E '^[A-Za-z0-9_-]{16,64}$' | head -n1) || return 1
  api POST "/v1/tags/$tag/revoke" '{"reason":"backup test"}' >/dev/null || return 1
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

populate_via_sql() {
  bk_psql "$TEST_URL" >/dev/null <<'SQL'
INSERT INTO users (id, email, password_hash, role) VALUES
  (gen_random_uuid(), 'admin@example.test', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g', 'admin')
  ON CONFLICT DO NOTHING;
INSERT INTO api_keys (id, name, prefix, key_hash, revoked_at) VALUES
  (gen_random_uuid(), 'backup test key', 'vtk_bk01', sha256('k1'), NULL),
  (gen_random_uuid(), 'revoked key', 'vtk_bk02', sha256('k2'), now());
WITH p AS (INSERT INTO products (id, name, sku) VALUES (gen_random_uuid(), 'Backup Test Bag', 'BK-SQL') RETURNING id),
     b AS (INSERT INTO batches (id, product_id, quantity) SELECT gen_random_uuid(), id, 25 FROM p RETURNING id, product_id)
INSERT INTO tags (tag_id, batch_id, product_id)
  SELECT 'bktest' || lpad(g::text, 12, '0'), b.id, b.product_id FROM b, generate_series(1, 25) g;
SQL
  # Hand-written audit rows are only valid before the hash chain exists (legacy events).
  if [ "$(bk_psql "$TEST_URL" -c "SELECT count(*) FROM information_schema.columns WHERE table_name = 'audit_events' AND column_name = 'hash'")" = 0 ]; then
    bk_psql "$TEST_URL" -c "INSERT INTO audit_events (seq, event_id, occurred_at, actor_email, action, details)
      SELECT g, gen_random_uuid(), now(), 'admin@example.test', 'backup_test.event', jsonb_build_object('n', g)
      FROM generate_series(1, 5) g" >/dev/null
  else
    bk_log "WARNING: audit_events is hash-chained and the API could not fill it: no audit events to test with"
  fi
}

addr="" token=""
if populate_via_api; then
  populated_by="the admin API (factory-service serve)"
else
  bk_log "the admin API could not populate the database (see below); using SQL instead"
  [ -f "$work/server.log" ] && tail -n 5 "$work/server.log" >&2
  [ -n "$server_pid" ] && { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; server_pid=""; }
  populate_via_sql
  populated_by="SQL"
fi
# Scans arrive through Pub/Sub in production; a few rows are enough here.
bk_psql "$TEST_URL" -c "INSERT INTO scans (event_id, tag_id, result, scanned_at, client_ip_hash)
  SELECT gen_random_uuid(), tag_id, 'authentic', now(), md5(tag_id) FROM tags LIMIT 5" >/dev/null
bk_log "database $TEST_DB: migrated by $migrated_by, populated by $populated_by: $(
  bk_psql "$TEST_URL" -c "SELECT string_agg(t || '=' || n, ' ') FROM (VALUES
    ('users', (SELECT count(*) FROM users)), ('api_keys', (SELECT count(*) FROM api_keys)),
    ('tags', (SELECT count(*) FROM tags)), ('scans', (SELECT count(*) FROM scans)),
    ('audit_events', (SELECT count(*) FROM audit_events))) v(t, n)")"

# --- the cases ---------------------------------------------------------------------------------
export DATABASE_URL="$TEST_URL"
if [ -f "$work/audit.pub.pem" ]; then
  # Named, beside a key it succeeded, as after a rotation (the list form restore-test accepts).
  export AUDIT_PUBLIC_KEY_FILE="backup-test=$work/audit.pub.pem, audit-previous=services/factory-service/tests/fixtures/audit_k2.pub.pem"
  # The test server signed every event; require it when this factory-service knows the flag.
  if "$FACTORY_BIN" audit verify --help 2>/dev/null | grep -q -- --require-signatures; then
    export AUDIT_REQUIRE_SIGNATURES=1
  fi
fi
# What a tampered row must trip: audit verify reporting a broken chain (exit 1, not 2 = could not
# check) when the subcommand exists, else at least the row digest.
if has_subcommand audit verify; then tamper_pattern='FAIL audit verify: exit 1:'; else tamper_pattern='FAIL +audit rows digest'; fi

BACKUP_DIR="$work/restore" run_case "restore-test passes on a populated database" pass 'OK: every check passed' \
  scripts/restore_test.sh
BACKUP_DIR="$work/corrupt" run_case "restore-test fails on a corrupted dump" fail 'FAILED:.*checksum' \
  scripts/restore_test.sh --selftest-corrupt-dump
BACKUP_DIR="$work/tamper" run_case "restore-test fails on a tampered audit row" fail "$tamper_pattern" \
  scripts/restore_test.sh --selftest-tamper-audit
BACKUP_DIR="$work/restore" run_case "verify-backups passes" pass 'OK: every check passed' \
  scripts/verify_backups.sh
# An operator in the directory holding the keys, as the restore runbook has it
# (infra/docs/DISASTER_RECOVERY.md section 7): the script changes to the repository's root, but
# the paths are the operator's.
from_elsewhere() { # restore-test with relative paths, run from $work; then the dump must be there
  local keys=""
  [ -f "$work/audit.pub.pem" ] && keys="backup-test=audit.pub.pem, audit-previous=$PWD/services/factory-service/tests/fixtures/audit_k2.pub.pem"
  (cd "$work" && BACKUP_DIR=relative AUDIT_PUBLIC_KEY_FILE="$keys" "$OLDPWD/scripts/restore_test.sh") &&
    compgen -G "$work/relative/*.dump" >/dev/null
}
run_case "restore-test reads relative paths from where it was started" pass 'OK: every check passed' \
  from_elsewhere
find "$work/restore" -name '*.dump' -exec touch -d '30 hours ago' {} +
BACKUP_DIR="$work/restore" run_case "verify-backups fails on an old backup" fail 'FAILED:.*newest age' \
  scripts/verify_backups.sh
find "$work/restore" -name '*.dump' -exec touch {} +
newest=$(find "$work/restore" -name '*.dump' | head -n1)
flip_bytes "$newest"
BACKUP_DIR="$work/restore" run_case "verify-backups fails on a corrupted backup" fail 'FAILED:.*checksum' \
  scripts/verify_backups.sh

printf '\n'
printf '  %s\n' "${results[@]}"
printf '\n'
if ! has_subcommand audit verify; then
  bk_log "NOTE: $FACTORY_BIN has no 'audit verify' subcommand yet, so the two 'passes' cases cannot pass"
fi
if [ $failures -gt 0 ]; then
  bk_log "FAILED: $failures case(s) (KEEP_LOGS=1 keeps each case's output)"
  exit 1
fi
bk_log "OK: all ${#results[@]} cases behaved as required"

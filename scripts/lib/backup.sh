# shellcheck shell=bash
# Shared by scripts/restore_test.sh and scripts/verify_backups.sh (sourced, not run).
#
# A backup is three files in BACKUP_DIR:
#   <db>-<UTC time>.dump           pg_dump -Fc of the whole database
#   <db>-<UTC time>.dump.manifest  facts about the source at the dump's snapshot (tab-separated)
#   <db>-<UTC time>.dump.sha256    sha256sum lines for the dump and the manifest
# The manifest is taken inside the same exported snapshot as the dump, so a restore can be
# compared with exactly what was dumped, even days later while the live database has moved on.

BK_NAME="${BK_NAME:-backup}"
# The scripts run from the repository's root, but paths the caller gives (BACKUP_DIR,
# FACTORY_BIN, the files of AUDIT_PUBLIC_KEY_FILE) are the caller's: relative ones are read from
# the directory the script was started in (BK_CALLER_DIR, set before the scripts change directory).
bk_from_caller() { case "$1" in /* | "") printf '%s' "$1" ;; *) printf '%s/%s' "${BK_CALLER_DIR:-$PWD}" "$1" ;; esac; }
[ -z "${FACTORY_BIN:-}" ] || FACTORY_BIN=$(bk_from_caller "$FACTORY_BIN")
[ -z "${BACKUP_DIR:-}" ] || BACKUP_DIR=$(bk_from_caller "$BACKUP_DIR")
FACTORY_BIN="${FACTORY_BIN:-${CARGO_TARGET_DIR:-target}/debug/factory-service}"
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/voketag}"
BACKUP_DIR="${BACKUP_DIR:-./backups}"
# The scratch copy is created on this server (any database URL on it; default: the source's),
# so production restores can be verified on a separate machine.
RESTORE_SERVER_URL="${RESTORE_SERVER_URL:-$DATABASE_URL}"

bk_log() { printf '[%s] %s\n' "$BK_NAME" "$*" >&2; }
bk_die() { printf '[%s] ERROR: %s\n' "$BK_NAME" "$*" >&2; exit 2; }

# Never print a URL with its password.
redact_url() { sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$1"; }

bk_require_tools() {
  local t missing=()
  for t in psql pg_dump pg_restore sha256sum od dd stat; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  [ ${#missing[@]} -eq 0 ] || bk_die "missing tools: ${missing[*]} (apt-get install -y postgresql-client coreutils)"
}

# url_db_name URL -> the database name in a postgres URL.
url_db_name() {
  local rest="${1#*://}"
  rest="${rest%%\?*}"
  case "$rest" in */*) ;; *) bk_die "DATABASE_URL has no database name: $(redact_url "$1")" ;; esac
  local db="${rest#*/}"
  [ -n "$db" ] || bk_die "DATABASE_URL has no database name: $(redact_url "$1")"
  printf '%s\n' "$db"
}

# url_with_db URL DB -> the same URL pointing at database DB (query string kept).
url_with_db() {
  local url="$1" db="$2" base query=""
  base="${url%%\?*}"
  [ "$base" != "$url" ] && query="?${url#*\?}"
  printf '%s/%s%s\n' "${base%/*}" "$db" "$query"
}

bk_psql() { psql "$1" -qAtX -v ON_ERROR_STOP=1 "${@:2}"; }

bk_check_reachable() {
  bk_psql "$1" -c 'SELECT 1' >/dev/null 2>&1 ||
    bk_die "cannot connect to $(redact_url "$1") (is PostgreSQL up? scripts/dev-services.sh up)"
}

# ---------------------------------------------------------------------------------------------
# Facts: what must be identical between a source snapshot and its restored copy.
#   migration_version        max(version) of successful rows in _sqlx_migrations
#   rows:<schema>.<table>    exact row count of every ordinary table
#   audit_head               "seq=<max seq> hash=<its hash>" from audit_events
#   audit_rows_digest        md5 over every audit_events row, in seq order (catches edits anywhere)
# Each query goes through query_to_xml so a missing table yields "none" instead of an error; each
# inner query returns exactly one row (an empty result would be an empty, unparseable document).
FACTS_SQL=$(cat <<'SQL'
SELECT 'migration_version', CASE WHEN to_regclass('public._sqlx_migrations') IS NULL THEN 'none' ELSE
  coalesce((xpath('/row/v/text()', query_to_xml(
    'SELECT max(version) AS v FROM public._sqlx_migrations WHERE success', false, true, '')))[1]::text, 'none') END;
SELECT 'rows:' || table_schema || '.' || table_name,
  (xpath('/row/c/text()', query_to_xml(
    format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name), false, true, '')))[1]::text
FROM information_schema.tables
WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1;
SELECT 'audit_head', CASE WHEN to_regclass('public.audit_events') IS NULL THEN 'none' ELSE
  coalesce((xpath('/row/v/text()', query_to_xml(
    $q$SELECT (SELECT 'seq=' || seq || ' hash=' || coalesce(to_jsonb(a)->>'hash', '(no hash column)')
       FROM public.audit_events a ORDER BY seq DESC LIMIT 1) AS v$q$, false, true, '')))[1]::text, 'empty') END;
SELECT 'audit_rows_digest', CASE WHEN to_regclass('public.audit_events') IS NULL THEN 'none' ELSE
  coalesce((xpath('/row/v/text()', query_to_xml(
    $q$SELECT count(*) || ':' || coalesce(md5(string_agg(md5(a::text), '' ORDER BY seq)), '-') AS v
       FROM public.audit_events a$q$, false, true, '')))[1]::text, 'empty') END;
SQL
)

# collect_facts URL [SNAPSHOT_ID] -> sorted "key<TAB>value" lines on stdout.
collect_facts() {
  local url="$1" snap="${2:-}" pre=""
  if [ -n "$snap" ]; then
    pre="BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '$snap';"
  fi
  printf '%s\n%s\n%s\n' "$pre" "$FACTS_SQL" "$([ -n "$snap" ] && echo 'COMMIT;')" |
    bk_psql "$url" -F $'\t' | LC_ALL=C sort
}

# ---------------------------------------------------------------------------------------------
# Checks, printed as a table at the end.
CHECK_NAMES=() CHECK_RESULTS=() CHECK_DETAILS=()
check() { # name PASS|FAIL|INFO detail
  CHECK_NAMES+=("$1") CHECK_RESULTS+=("$2") CHECK_DETAILS+=("$3")
  [ "$2" = FAIL ] && bk_log "FAIL $1: $3"
  return 0
}
failed_checks() {
  local i out=()
  for i in "${!CHECK_NAMES[@]}"; do [ "${CHECK_RESULTS[$i]}" = FAIL ] && out+=("${CHECK_NAMES[$i]}"); done
  printf '%s\n' "${out[@]+"${out[@]}"}"
}
print_checks() {
  local i w=5
  for i in "${!CHECK_NAMES[@]}"; do [ "${#CHECK_NAMES[$i]}" -gt "$w" ] && w=${#CHECK_NAMES[$i]}; done
  printf '\n  %-*s  %-6s %s\n' "$w" CHECK RESULT DETAIL
  printf '  %-*s  %-6s %s\n' "$w" "$(printf '%*s' "$w" '' | tr ' ' -)" ------ ------
  for i in "${!CHECK_NAMES[@]}"; do
    printf '  %-*s  %-6s %s\n' "$w" "${CHECK_NAMES[$i]}" "${CHECK_RESULTS[$i]}" "${CHECK_DETAILS[$i]}"
  done
  printf '\n'
}
# finish: prints the table and exits 0, or 1 naming every failed check.
finish() {
  print_checks
  local failed
  failed=$(failed_checks | paste -sd, - | sed 's/,/, /g')
  if [ -n "$failed" ]; then
    printf '[%s] FAILED: %s\n' "$BK_NAME" "$failed" >&2
    exit 1
  fi
  printf '[%s] OK: every check passed\n' "$BK_NAME" >&2
  exit 0
}

# ---------------------------------------------------------------------------------------------
# take_dump URL DIR -> writes dump, manifest and checksum; prints the dump's path.
take_dump() {
  local url="$1" dir="$2" db stamp dump snap
  db=$(url_db_name "$url")
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p "$dir"
  dump="$dir/$db-$stamp.dump"
  [ -e "$dump" ] && dump="$dir/$db-$stamp-$$.dump"

  # Hold a repeatable-read transaction open and export its snapshot: pg_dump and the manifest
  # then see exactly the same data, however busy the source is.
  coproc SNAPSHOT_PSQL { psql "$url" -qAtX -v ON_ERROR_STOP=1 2>&1; }
  local snap_in="${SNAPSHOT_PSQL[1]}" snap_out="${SNAPSHOT_PSQL[0]}" snap_pid="$SNAPSHOT_PSQL_PID"
  printf '%s\n' "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;" "SELECT pg_export_snapshot();" >&"$snap_in"
  if ! read -r -t 30 snap <&"$snap_out" || ! [[ "$snap" =~ ^[0-9A-F-]+$ ]]; then
    bk_die "could not export a snapshot from $(redact_url "$url"): ${snap:-no answer}"
  fi

  local rc=0 what="pg_dump"
  pg_dump --snapshot="$snap" -Fc -d "$url" -f "$dump.partial" || rc=$?
  if [ $rc -eq 0 ]; then
    what="collecting the manifest (row counts, audit head)"
    collect_facts "$url" "$snap" >"$dump.manifest.partial" || rc=$?
  fi
  printf 'COMMIT;\n' >&"$snap_in" || true
  eval "exec $snap_in>&-"
  wait "$snap_pid" 2>/dev/null || true
  if [ $rc -ne 0 ]; then
    rm -f "$dump.partial" "$dump.manifest.partial"
    bk_die "$what of $(redact_url "$url") failed (exit $rc)"
  fi
  mv "$dump.partial" "$dump"
  mv "$dump.manifest.partial" "$dump.manifest"
  (cd "$(dirname "$dump")" && sha256sum "$(basename "$dump")" "$(basename "$dump").manifest" >"$(basename "$dump").sha256")
  printf '%s\n' "$dump"
}

# verify_checksum DUMP -> 0 when the dump (and manifest, if listed) match their .sha256.
verify_checksum() {
  local dump="$1" out
  if [ ! -f "$dump.sha256" ]; then
    check "checksum $(basename "$dump")" FAIL "no $(basename "$dump").sha256 beside the dump"
    return 1
  fi
  if out=$(cd "$(dirname "$dump")" && sha256sum --quiet -c "$(basename "$dump").sha256" 2>&1); then
    check "checksum $(basename "$dump")" PASS "sha256 $(cut -c1-16 "$dump.sha256" | head -n1)…"
    return 0
  fi
  check "checksum $(basename "$dump")" FAIL "sha256 mismatch: $(tr '\n' ' ' <<<"$out")"
  return 1
}

# flip_bytes FILE: inverts 16 bytes in the middle of FILE (selftests only).
flip_bytes() {
  local f="$1" size off hex inv="" b
  size=$(stat -c %s "$f")
  off=$((size / 2))
  hex=$(od -An -tx1 -j "$off" -N 16 "$f" | tr -d ' \n')
  for ((b = 0; b < ${#hex}; b += 2)); do inv+=$(printf '\\x%02x' $((0xff ^ 0x${hex:b:2}))); done
  # shellcheck disable=SC2059 # the escapes are the point
  printf "$inv" | dd of="$f" bs=1 seek="$off" conv=notrunc status=none
}

# ---------------------------------------------------------------------------------------------
SCRATCH_URL="" SCRATCH_DB="" SCRATCH_ADMIN_URL=""

create_scratch() { # admin URL (any database on the target server)
  SCRATCH_ADMIN_URL="$1"
  SCRATCH_DB="${SCRATCH_DB_PREFIX:-voketag_restore}_$(date -u +%Y%m%d%H%M%S)_$$"
  SCRATCH_URL=$(url_with_db "$1" "$SCRATCH_DB")
  bk_psql "$1" -c "CREATE DATABASE \"$SCRATCH_DB\"" >/dev/null ||
    bk_die "cannot create scratch database $SCRATCH_DB (the role needs CREATEDB)"
  bk_log "scratch database $SCRATCH_DB created"
}

drop_scratch() {
  [ -n "$SCRATCH_DB" ] || return 0
  if [ "${KEEP_SCRATCH:-0}" = 1 ]; then
    bk_log "KEEP_SCRATCH=1: scratch database $SCRATCH_DB kept"
  elif bk_psql "$SCRATCH_ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$SCRATCH_DB\" WITH (FORCE)" >/dev/null 2>&1; then
    bk_log "scratch database $SCRATCH_DB dropped"
  else
    bk_log "WARNING: could not drop scratch database $SCRATCH_DB; drop it by hand"
  fi
  SCRATCH_DB=""
}

# restore_dump DUMP -> restores into SCRATCH_URL; records a check.
restore_dump() {
  local dump="$1" log rc=0 why
  log=$(mktemp)
  pg_restore --no-owner --no-acl --exit-on-error --single-transaction -d "$SCRATCH_URL" "$dump" >"$log" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then
    check "restore" PASS "pg_restore into $SCRATCH_DB"
    rm -f "$log"
    return 0
  fi
  why="exit $rc"
  [ $rc -gt 128 ] && why="killed by signal $((rc - 128))"
  check "restore" FAIL "pg_restore failed ($why): $(head -c 300 "$log" | tr '\n' ' ')"
  rm -f "$log"
  return 1
}

# compare_facts EXPECTED_FILE ACTUAL_FILE LABEL -> one check per fact.
compare_facts() {
  local expected="$1" actual="$2" label="$3" key want got name
  while IFS=$'\t' read -r key want got; do
    case "$key" in
      migration_version) name="migration version" ;;
      rows:*) name="row count ${key#rows:}" ;;
      audit_head) name="audit head" ;;
      audit_rows_digest) name="audit rows digest" ;;
      *) name="$key" ;;
    esac
    if [ "$key" = migration_version ] && [ "$want" = none ]; then
      check "$name" FAIL "the $label has no applied migrations (_sqlx_migrations): run 'make migrate' (factory-service migrate) first"
    elif [ "$want" = "$got" ]; then
      check "$name" PASS "$(short "$got")"
    else
      check "$name" FAIL "$label $(short "$want"), restored $(short "$got")"
    fi
  done < <(LC_ALL=C join -t $'\t' -a1 -a2 -e MISSING -o 0,1.2,2.2 "$expected" "$actual")
}
short() { local s="$1"; [ ${#s} -gt 60 ] && s="${s:0:57}..."; printf '%s' "$s"; }

# run_audit_verify URL -> `factory-service audit verify` against URL; records a check.
run_audit_verify() {
  local url="$1" out rc=0 args
  if [ ! -x "$FACTORY_BIN" ]; then
    check "audit verify" FAIL "factory-service binary not found at $FACTORY_BIN (cargo build -p factory-service, or set FACTORY_BIN)"
    return 1
  fi
  if ! "$FACTORY_BIN" audit verify --help >/dev/null 2>&1; then
    check "audit verify" FAIL "$FACTORY_BIN has no 'audit verify' subcommand yet"
    return 1
  fi
  args=(audit verify --database-url "$url")
  # One key file or several, comma-separated (after a rotation: the current key and those before
  # it, each as KEY_ID=FILE), each passed as its own --public-key. Files only: PEM text inline
  # would hold newlines and commas.
  if [ -n "${AUDIT_PUBLIC_KEY_FILE:-}" ]; then
    local key keys
    if [[ "$AUDIT_PUBLIC_KEY_FILE" == *$'\n'* ]]; then
      check "audit verify" FAIL "AUDIT_PUBLIC_KEY_FILE holds a newline: give key files (KEY_ID=FILE), not PEM text"
      return 1
    fi
    IFS=',' read -ra keys <<<"$AUDIT_PUBLIC_KEY_FILE"
    for key in "${keys[@]}"; do
      key="${key#"${key%%[![:space:]]*}"}"
      key="${key%"${key##*[![:space:]]}"}"
      [ -n "$key" ] || continue
      if [[ "$key" == *=* ]]; then
        key="${key%%=*}=$(bk_from_caller "${key#*=}")"
      else
        key=$(bk_from_caller "$key")
      fi
      args+=(--public-key "$key")
    done
  fi
  # Where every event is signed (AUDIT_SIGN_EVENTS=true), a stripped signature is tampering too.
  if [ "${AUDIT_REQUIRE_SIGNATURES:-0}" = 1 ]; then
    args+=(--require-signatures)
  fi
  # An offline verifier needs no JWT secret: development mode keeps config from asking for one.
  out=$(DATABASE_URL="$url" APP_ENV="${AUDIT_VERIFY_APP_ENV:-development}" LOG_FORMAT=pretty RUST_LOG=warn \
    "$FACTORY_BIN" "${args[@]}" 2>&1) || rc=$?
  if [ $rc -eq 0 ]; then
    check "audit verify" PASS "$(short "$(tail -n1 <<<"$out" | tr -s ' ')")"
    return 0
  fi
  check "audit verify" FAIL "exit $rc: $(tail -n3 <<<"$out" | tr '\n' ' ' | head -c 240)"
  return 1
}

# tamper_audit URL: changes one restored audit row's details (selftests only).
tamper_audit() {
  local url="$1" n
  # replica mode skips triggers and rules that keep audit_events append-only.
  n=$(bk_psql "$url" -c "SET session_replication_role = replica;
      WITH victim AS (SELECT seq FROM audit_events ORDER BY seq LIMIT 1 OFFSET (SELECT count(*) / 2 FROM audit_events))
      UPDATE audit_events a SET details = a.details || '{\"tampered\": true}'::jsonb
      FROM victim WHERE a.seq = victim.seq RETURNING a.seq") || true
  if [ -z "$n" ]; then
    check "selftest tamper" FAIL "could not tamper: the source has no audit events (populate it first)"
    return 1
  fi
  check "selftest tamper" INFO "changed details of restored audit row seq=$n (verification must now fail)"
}

#!/usr/bin/env bash
# `make verify-backups`: check the SHA-256 of every dump in BACKUP_DIR and list its age, then restore
# the newest into a scratch database and verify it (migration version, row counts, audit rows and
# head against the manifest written at dump time, and `factory-service audit verify`).
# Exits 1 if the newest dump is older than MAX_BACKUP_AGE_HOURS or any check fails, naming it.
#
# Environment: BACKUP_DIR (default ./backups), MAX_BACKUP_AGE_HOURS (default 26),
#   DATABASE_URL (server for the scratch database, and the live source used when a dump has no
#   manifest; default postgres://postgres@127.0.0.1:5432/voketag), FACTORY_BIN (default
#   target/debug/factory-service), AUDIT_PUBLIC_KEY_FILE, AUDIT_REQUIRE_SIGNATURES=1, KEEP_SCRATCH=1, RESTORE_SERVER_URL (server
#   for the scratch copy; default DATABASE_URL).
# Relative paths (BACKUP_DIR, FACTORY_BIN, key files) are read from the directory it is started in.
set -euo pipefail
BK_CALLER_DIR="$PWD"
cd "$(dirname "$0")/.."
BK_NAME=verify-backups
# shellcheck source=scripts/lib/backup.sh
. scripts/lib/backup.sh
MAX_BACKUP_AGE_HOURS="${MAX_BACKUP_AGE_HOURS:-26}"

case "${1:-}" in
  "") ;;
  -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  *) bk_die "unknown argument '$1' (try --help)" ;;
esac
[[ "$MAX_BACKUP_AGE_HOURS" =~ ^[0-9]+$ ]] || bk_die "MAX_BACKUP_AGE_HOURS must be a whole number of hours, got '$MAX_BACKUP_AGE_HOURS'"

bk_require_tools
[ -d "$BACKUP_DIR" ] || bk_die "BACKUP_DIR $BACKUP_DIR does not exist (make restore-test writes a dump there)"

dumps=()
while IFS= read -r -d '' f; do dumps+=("$f"); done < <(find "$BACKUP_DIR" -maxdepth 1 -type f -name '*.dump' -print0)
if [ ${#dumps[@]} -eq 0 ]; then
  check "dumps present" FAIL "no *.dump files in $BACKUP_DIR"
  finish
fi

workdir=$(mktemp -d)
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { drop_scratch; rm -rf "$workdir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

now=$(date +%s)
newest="" newest_mtime=0
printf '\n  %-48s %10s %12s\n' DUMP "AGE (h)" BYTES >&2
for f in "${dumps[@]}"; do
  mtime=$(stat -c %Y "$f")
  printf '  %-48s %10s %12s\n' "$(basename "$f")" "$(awk -v s=$((now - mtime)) 'BEGIN{printf "%.1f", s/3600}')" "$(stat -c %s "$f")" >&2
  if [ "$mtime" -gt "$newest_mtime" ]; then newest="$f" newest_mtime=$mtime; fi
done
printf '\n' >&2

for f in "${dumps[@]}"; do verify_checksum "$f" || true; done

age_h=$(((now - newest_mtime) / 3600))
if [ $((now - newest_mtime)) -gt $((MAX_BACKUP_AGE_HOURS * 3600)) ]; then
  check "newest age" FAIL "newest dump $(basename "$newest") is ${age_h}h old, more than MAX_BACKUP_AGE_HOURS=$MAX_BACKUP_AGE_HOURS"
else
  check "newest age" PASS "$(basename "$newest") is ${age_h}h old (limit ${MAX_BACKUP_AGE_HOURS}h)"
fi

bk_check_reachable "$RESTORE_SERVER_URL"
create_scratch "$RESTORE_SERVER_URL"
if restore_dump "$newest"; then
  collect_facts "$SCRATCH_URL" >"$workdir/restored.facts"
  if [ -f "$newest.manifest" ]; then
    compare_facts "$newest.manifest" "$workdir/restored.facts" manifest
  else
    # A dump made elsewhere: the live database must have moved forward from it, never diverged.
    check "manifest" INFO "no $(basename "$newest").manifest: comparing with the live database instead"
    got_ver=$(awk -F'\t' '$1=="migration_version"{print $2}' "$workdir/restored.facts")
    live_ver=$(collect_facts "$DATABASE_URL" | awk -F'\t' '$1=="migration_version"{print $2}')
    if [ "$got_ver" = "$live_ver" ] || { [[ "$got_ver" =~ ^[0-9]+$ ]] && [[ "$live_ver" =~ ^[0-9]+$ ]] && [ "$got_ver" -le "$live_ver" ]; }; then
      check "migration version" PASS "restored $got_ver, live $live_ver"
    else
      check "migration version" FAIL "restored $got_ver is not at or behind live $live_ver"
    fi
    head=$(awk -F'\t' '$1=="audit_head"{print $2}' "$workdir/restored.facts")
    if [[ "$head" =~ ^seq=([0-9]+)\ hash=(.*)$ ]]; then
      live_hash=$(bk_psql "$DATABASE_URL" -c "SELECT coalesce(to_jsonb(a)->>'hash', '(no hash column)') FROM audit_events a WHERE seq = ${BASH_REMATCH[1]}")
      if [ "$live_hash" = "${BASH_REMATCH[2]}" ]; then
        check "audit head" PASS "restored head ${BASH_REMATCH[1]} is in the live chain with the same hash"
      else
        check "audit head" FAIL "restored head seq ${BASH_REMATCH[1]} hash differs from the live chain (${live_hash:-missing})"
      fi
    else
      check "audit head" INFO "restored audit head: $head"
    fi
  fi
  run_audit_verify "$SCRATCH_URL" || true
fi
drop_scratch
finish

#!/usr/bin/env bash
# `make restore-test`: dump the database, restore the dump into a fresh scratch database, and prove
# the copy is the same: migration version, row count of every table, audit rows, audit head, and
# `factory-service audit verify` on the copy. Drops the scratch database; exits 1 naming any mismatch.
#
# Usage: scripts/restore_test.sh [--selftest-corrupt-dump | --selftest-tamper-audit]
#   --selftest-corrupt-dump  flip bytes in a copy of the new dump and restore that: must FAIL
#   --selftest-tamper-audit  change one restored audit row before verifying: must FAIL
# Environment: DATABASE_URL (source; default postgres://postgres@127.0.0.1:5432/voketag),
#   BACKUP_DIR (default ./backups), FACTORY_BIN (default target/debug/factory-service),
#   AUDIT_PUBLIC_KEY_FILE (passed to audit verify as --public-key; after a key rotation, several,
#   comma-separated, each KEY_ID=FILE),
#   AUDIT_REQUIRE_SIGNATURES=1 (audit verify --require-signatures: every event must be signed), KEEP_SCRATCH=1 (keep the copy),
#   RESTORE_SERVER_URL (a database URL on the server that gets the scratch copy; default DATABASE_URL).
# Relative paths (BACKUP_DIR, FACTORY_BIN, key files) are read from the directory it is started in.
set -euo pipefail
BK_CALLER_DIR="$PWD"
cd "$(dirname "$0")/.."
BK_NAME=restore-test
# shellcheck source=scripts/lib/backup.sh
. scripts/lib/backup.sh

mode=""
case "${1:-}" in
  "") ;;
  --selftest-corrupt-dump | --selftest-tamper-audit) mode="$1" ;;
  -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
  *) bk_die "unknown argument '$1' (try --help)" ;;
esac

bk_require_tools
bk_check_reachable "$DATABASE_URL"
[ "$RESTORE_SERVER_URL" = "$DATABASE_URL" ] || bk_check_reachable "$RESTORE_SERVER_URL"
bk_log "source $(redact_url "$DATABASE_URL"), backups in $BACKUP_DIR${mode:+, mode $mode}"

workdir=$(mktemp -d)
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() { drop_scratch; rm -rf "$workdir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

dump=$(take_dump "$DATABASE_URL" "$BACKUP_DIR")
check "dump" PASS "$dump ($(stat -c %s "$dump") bytes, sha256 + manifest beside it)"

restore_from="$dump"
if [ "$mode" = --selftest-corrupt-dump ]; then
  # Work on a copy so the real backup stays good; the copy keeps the original checksum file.
  cp "$dump" "$dump.sha256" "$dump.manifest" "$workdir/"
  restore_from="$workdir/$(basename "$dump")"
  flip_bytes "$restore_from"
  check "selftest corrupt" INFO "flipped 16 bytes in a copy of the dump"
fi

verify_checksum "$restore_from" || true
create_scratch "$RESTORE_SERVER_URL"
if restore_dump "$restore_from"; then
  [ "$mode" = --selftest-tamper-audit ] && { tamper_audit "$SCRATCH_URL" || true; }
  collect_facts "$SCRATCH_URL" >"$workdir/restored.facts"
  compare_facts "$dump.manifest" "$workdir/restored.facts" source
  run_audit_verify "$SCRATCH_URL" || true
fi
drop_scratch

[ -n "$mode" ] && bk_log "selftest: a fault was injected, so a FAILED result is the expected outcome"
finish

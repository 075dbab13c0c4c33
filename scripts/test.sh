#!/usr/bin/env bash
# Everything CI runs: local services up, old test databases dropped, then three suites, each run
# even when an earlier one failed (the exit status is non-zero if any did):
#   1. the Rust tests of the workspace (real PostgreSQL, Redis and the Pub/Sub emulator);
#   2. the backup tooling's self-test (`make test-backups`: restore-test and verify-backups pass
#      on good backups and fail on corrupt, tampered and old ones);
#   3. the admin console in real headless Chromium (`make e2e`; installs Debian's chromium).
# Arguments go to the Rust test runner only.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/dev-services.sh up
export PUBSUB_EMULATOR_HOST="${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}"

# Each test creates its own database voketag_t_<uuid>; drop the previous run's.
psql -h 127.0.0.1 -U postgres -d voketag_test -tAc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'voketag\_t\_%'" |
  while read -r db; do [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -d voketag_test -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null; done

failed=()

# Two cores: run tests in parallel, but not greedily.
echo "== Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads 4 "$@" || failed+=("rust tests")
else
  cargo test --workspace --no-fail-fast "$@" -- --test-threads 4 || failed+=("rust tests")
fi

echo "== backup tooling (make test-backups)"
cargo build -q -p factory-service
FACTORY_BIN="${CARGO_TARGET_DIR:-target}/debug/factory-service" scripts/test-backups.sh ||
  failed+=("test-backups")

echo "== admin console in headless Chromium (make e2e)"
scripts/e2e.sh || failed+=("e2e")

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all suites passed"

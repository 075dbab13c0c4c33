#!/usr/bin/env bash
# Everything CI runs: local services up, old test databases dropped, the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/dev-services.sh up
export PUBSUB_EMULATOR_HOST="${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}"

# Each test creates its own database voketag_t_<uuid>; drop the previous run's.
psql -h 127.0.0.1 -U postgres -d voketag_test -tAc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'voketag\_t\_%'" |
  while read -r db; do [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -d voketag_test -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null; done

# Two cores: run tests in parallel, but not greedily.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --test-threads 4 "$@"
else
  cargo test --workspace --no-fail-fast "$@" -- --test-threads 4
fi

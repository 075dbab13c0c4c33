#!/usr/bin/env bash
# `make bench`: release builds, local services, wrk, then the suite in scripts/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/tools.sh
source scripts/lib/tools.sh

scripts/dev-services.sh up
need_tool bench wrk wrk
need_tool bench redis-benchmark redis-tools
cargo build --release -q -p scan-service -p factory-service --bins --example audit_bench --example events_bench --example ratelimit_bench --example lean_scan
# The scan service is measured in its profile-guided build (scripts/pgo.sh, about 10 minutes
# more), the one its image is built as after `make pgo`. Its profile stays in target/ (pgo/ is
# `make pgo`'s, for the image). BENCH_PGO=0 measures the plain release build instead; --quick
# runs and runs that leave out the scan section skip it. Where the profile-guided build cannot be
# made (rustup's llvm-tools is not installed and cannot be fetched), the plain build is measured,
# with a warning, and the report says which build it measured.
unset SCAN_SERVICE_BIN
args=" $* "
if [ "${BENCH_PGO:-1}" != 0 ] && [[ "$args" != *" --quick "* ]] &&
   [[ "$args" != *" --only"* || "$args" == *scan* ]]; then
  if SCAN_SERVICE_BIN=$(PGO_RELEASE_BUILT=1 PGO_DIR=target/pgo-bench scripts/pgo.sh | tail -n 1) &&
     [ -x "$SCAN_SERVICE_BIN" ]; then
    export SCAN_SERVICE_BIN
  else
    unset SCAN_SERVICE_BIN
    echo "[bench] warning: no profile-guided scan-service (see [pgo] above); measuring the plain release build" >&2
  fi
fi
# PostgreSQL here is on the loopback: TLS there protects nothing and costs about 12% of the
# audit appends (sqlx encrypts whenever the server offers TLS, as this machine kind's does).
# PGSSLMODE is libpq's variable, which sqlx and psql read when a URL does not say sslmode.
export PGSSLMODE="${PGSSLMODE:-disable}"
# An emulator left spinning by a test run would take CPU from every measurement.
scripts/dev-services.sh quiet-emulator
# c=1000 needs more descriptors than the default soft limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 scripts/bench/bench.py "$@"

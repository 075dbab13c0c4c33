#!/usr/bin/env bash
# `make chaos`: debug builds of both services, then every failure scenario in scripts/chaos/
# against the real processes and private PostgreSQL, Redis and Pub/Sub emulator instances on free
# loopback ports (the shared ones on the standard ports are never stopped). Writes the matrix into
# docs/RELIABILITY.md. CHAOS_ARGS="--only 1,2" runs some scenarios (and leaves the doc alone).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/chaos/prereqs.sh
cargo build -q -p scan-service -p factory-service
# Thousands of concurrent sockets in the load scenarios.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 scripts/chaos/main.py "$@"

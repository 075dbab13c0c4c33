#!/usr/bin/env bash
# `make fuzz`: schemathesis (from PyPI, in a venv under target/) against the factory's
# /openapi.json with an admin token, checking that no request gets a 5xx. Private PostgreSQL,
# Redis and Pub/Sub emulator on free ports, like `make chaos`. FUZZ_MAX_EXAMPLES, FUZZ_SEED.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/chaos/prereqs.sh
venv=target/fuzz-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "[fuzz] installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis>=4,<5'
fi
cargo build -q -p factory-service
exec python3 scripts/chaos/fuzz_api.py "$@"

#!/usr/bin/env bash
# Builds and starts both services against the local dependencies (see `make run`), with a demo
# admin, and prints their URLs. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

export PUBSUB_EMULATOR_HOST="${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}"
export APP_ENV="${APP_ENV:-development}"
export LOG_FORMAT="${LOG_FORMAT:-pretty}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/voketag}"

cargo build -q -p factory-service -p scan-service
./target/debug/factory-service migrate

SCAN_ADDR="${SCAN_BIND_ADDR:-127.0.0.1:8080}"
FACTORY_ADDR="${FACTORY_BIND_ADDR:-127.0.0.1:8081}"
BIND_ADDR="$FACTORY_ADDR" ./target/debug/factory-service serve &
factory=$!
BIND_ADDR="$SCAN_ADDR" ./target/debug/scan-service &
scan=$!
trap 'kill -TERM $factory $scan 2>/dev/null; wait' INT TERM EXIT

for url in "http://$FACTORY_ADDR/healthz" "http://$SCAN_ADDR/healthz"; do
  for _ in $(seq 1 100); do curl -fsS "$url" >/dev/null 2>&1 && break; sleep 0.1; done
done
cat <<MSG

  VokeTag is running.
    scan service:     http://$SCAN_ADDR      (GET /v1/scan/{tag_id}, /healthz, /readyz, /metrics)
    factory service:  http://$FACTORY_ADDR   (admin API, /healthz, /readyz, /metrics)
  Ctrl-C stops both.

MSG
wait

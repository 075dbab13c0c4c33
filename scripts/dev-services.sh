#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis and the Pub/Sub emulator answer on loopback, starting whatever is
# installed but not running. Usage: scripts/dev-services.sh up|down|status|quiet-emulator
set -euo pipefail

cd "$(dirname "$0")/.."
STATE_DIR="${DEV_SERVICES_DIR:-$PWD/.dev-services}"
PG_HOST=127.0.0.1 PG_PORT=5432 REDIS_PORT=6379
EMULATOR_HOST="${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}"
EMULATOR_PORT="${EMULATOR_HOST##*:}"
DATABASES=(voketag voketag_test)
# Also the database DATABASE_URL names when it is on this local server, so `make run` and
# `make migrate` work with another name too.
if [[ "${DATABASE_URL:-}" =~ @(127\.0\.0\.1|localhost)(:5432)?/([a-z_][a-z0-9_]*)(\?.*)?$ ]]; then
  DATABASES+=("${BASH_REMATCH[3]}")
fi

log() { printf '[dev-services] %s\n' "$*" >&2; }
die() { printf '[dev-services] ERROR: %s\n' "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do "$@" && return 0; sleep 0.2; done
  die "$name did not answer within ${secs}s"
}

pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
emulator_ready() { port_open "$EMULATOR_PORT"; }

postgres_up() {
  command -v pg_isready >/dev/null || die "PostgreSQL client tools are not installed: apt-get install -y postgresql"
  if ! pg_ready; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
      local version; version=$(ls /etc/postgresql | sort -V | tail -n 1)
      log "starting PostgreSQL $version"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    else
      die "PostgreSQL is not running and no server is installed: apt-get install -y postgresql (trust auth for 127.0.0.1), or run 'docker compose up postgres'"
    fi
    wait_for PostgreSQL 30 pg_ready
  fi
  for db in "${DATABASES[@]}"; do
    if ! psql -h "$PG_HOST" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
      log "creating database $db"
      psql -h "$PG_HOST" -U postgres -qc "CREATE DATABASE $db" >/dev/null
    fi
  done
  log "PostgreSQL ready on $PG_HOST:$PG_PORT"
}

redis_up() {
  command -v redis-cli >/dev/null || die "Redis is not installed: apt-get install -y redis-server"
  if ! redis_ready; then
    command -v redis-server >/dev/null || die "Redis is not running and redis-server is not installed: apt-get install -y redis-server"
    log "starting Redis"
    mkdir -p "$STATE_DIR"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
      --dir "$STATE_DIR" --logfile "$STATE_DIR/redis.log" --pidfile "$STATE_DIR/redis.pid"
    touch "$STATE_DIR/redis.ours"
    wait_for Redis 15 redis_ready
  fi
  log "Redis ready on 127.0.0.1:$REDIS_PORT"
}

emulator_cmd() {
  local sdk bin
  for sdk in /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk /opt/google-cloud-sdk "${CLOUDSDK_ROOT_DIR:-}"; do
    bin="$sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
    [ -n "$sdk" ] && [ -x "$bin" ] && { echo "$bin --host=127.0.0.1 --port=$EMULATOR_PORT"; return; }
  done
  if command -v gcloud >/dev/null; then
    echo "gcloud beta emulators pubsub start --host-port=127.0.0.1:$EMULATOR_PORT"; return
  fi
  return 1
}

emulator_up() {
  if ! emulator_ready; then
    local cmd
    cmd=$(emulator_cmd) || die "the Pub/Sub emulator is not installed: apt-get install -y google-cloud-cli-pubsub-emulator (from Google's Cloud SDK apt repository), or run 'docker compose up pubsub'"
    command -v java >/dev/null || die "the Pub/Sub emulator needs Java: apt-get install -y default-jre-headless"
    mkdir -p "$STATE_DIR/pubsub-data"
    log "starting the Pub/Sub emulator on 127.0.0.1:$EMULATOR_PORT"
    : > "$STATE_DIR/pubsub.log"
    # setsid: the emulator outlives this script and is not killed with the caller's process group.
    setsid nohup $cmd --data-dir="$STATE_DIR/pubsub-data" >"$STATE_DIR/pubsub.log" 2>&1 < /dev/null &
    echo $! > "$STATE_DIR/pubsub.pid"
    wait_for "Pub/Sub emulator" 60 grep -q "Server started" "$STATE_DIR/pubsub.log"
    wait_for "Pub/Sub emulator port" 10 emulator_ready
  fi
  log "Pub/Sub emulator ready on $EMULATOR_HOST (export PUBSUB_EMULATOR_HOST=$EMULATOR_HOST)"
}

down() {
  down_emulator
  if [ -f "$STATE_DIR/redis.ours" ]; then
    log "stopping the Redis this script started"
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    rm -f "$STATE_DIR/redis.ours"
  fi
  log "PostgreSQL is left running (it is the machine's)"
}

# The emulator never drops a stream a client closed (its NoSuchMethodError on RST_STREAM, see
# docs/SCAN_EVENTS.md) and can keep spinning on them after a test run, at over a core with
# nothing connected. Benchmarks share the machine with it, so `make bench` restarts an emulator
# this script started when it is busy before any load (at least EMULATOR_BUSY_PCT, default 20,
# percent of a core over 3 s). Its topics are gone afterwards; the bench creates its own.
# CPU time (user + system, in clock ticks) of every process in session $1: the JVM is a child
# of the emulator's launcher script.
session_cpu_ticks() {
  local p total=0
  for p in $(ps -s "$1" -o pid= 2>/dev/null); do
    [ -r "/proc/$p/stat" ] && total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}

emulator_quiet() {
  [ -f "$STATE_DIR/pubsub.pid" ] || { log "Pub/Sub emulator not started by this script: left as it is"; return; }
  local pid before after busy
  pid=$(cat "$STATE_DIR/pubsub.pid")
  before=$(session_cpu_ticks "$pid"); sleep 3; after=$(session_cpu_ticks "$pid")
  busy=$(( (after - before) * 100 / (3 * $(getconf CLK_TCK)) ))
  if [ "$busy" -ge "${EMULATOR_BUSY_PCT:-20}" ]; then
    log "the Pub/Sub emulator used ${busy}% of a core over 3 s with nothing to do: restarting it"
    down_emulator
    emulator_up
  else
    log "the Pub/Sub emulator is idle (${busy}% of a core over 3 s)"
  fi
}

down_emulator() {
  if [ -f "$STATE_DIR/pubsub.pid" ]; then
    local pid; pid=$(cat "$STATE_DIR/pubsub.pid")
    log "stopping the Pub/Sub emulator"
    pkill -TERM -s "$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    rm -f "$STATE_DIR/pubsub.pid"
    wait_for "the Pub/Sub emulator to stop" 30 emulator_stopped
  fi
}

emulator_stopped() { ! emulator_ready; }

status() {
  local rc=0
  pg_ready && echo "postgres: up ($PG_HOST:$PG_PORT)" || { echo "postgres: down"; rc=1; }
  redis_ready && echo "redis:    up (127.0.0.1:$REDIS_PORT)" || { echo "redis:    down"; rc=1; }
  emulator_ready && echo "pubsub:   up ($EMULATOR_HOST)" || { echo "pubsub:   down"; rc=1; }
  return $rc
}

case "${1:-}" in
  up) postgres_up; redis_up; emulator_up ;;
  down) down ;;
  status) status ;;
  quiet-emulator) emulator_quiet ;;
  *) echo "usage: $0 up|down|status|quiet-emulator" >&2; exit 2 ;;
esac

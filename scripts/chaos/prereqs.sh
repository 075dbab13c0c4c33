# Sourced by scripts/chaos.sh and scripts/fuzz.sh: the tools the suites run, installed with apt
# when we are root and they are missing (a fresh CI machine), else a clear message.
need() { # command, Debian package
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[chaos] installing $2 (for $1)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "[chaos] $1 is missing: sudo apt-get install -y $2" >&2; exit 1
  fi
}
need redis-server redis-server
need redis-cli redis-tools
need psql postgresql-client
need openssl openssl
need wrk wrk
need java default-jre-headless
PG_BIN="${CHAOS_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}"
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  need pg_ctlcluster postgresql
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
export CHAOS_PG_BIN="$PG_BIN"
emulator=
for sdk in /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk /opt/google-cloud-sdk "${CLOUDSDK_ROOT_DIR:-}"; do
  [ -n "$sdk" ] && [ -x "$sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ] && emulator=1
done
if [ -z "$emulator" ]; then
  echo "[chaos] the Pub/Sub emulator is missing: apt-get install -y google-cloud-cli-pubsub-emulator (Google's Cloud SDK apt repository)" >&2
  exit 1
fi

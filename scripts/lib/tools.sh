# shellcheck shell=bash
# Shared by scripts/bench.sh and scripts/pgo.sh (sourced, not run).

# need_tool <log name> <command> <Debian package>: installs the package with apt when the command
# is missing and we are root; otherwise says how to install it and exits.
need_tool() {
  local name=$1 tool=$2 pkg=$3
  command -v "$tool" >/dev/null && return 0
  if [ "$(id -u)" = 0 ]; then
    echo "[$name] installing $pkg" >&2
    apt-get update -qq >&2 && apt-get install -y -qq "$pkg" >/dev/null
  else
    echo "[$name] $tool is missing: sudo apt-get install -y $pkg" >&2
    exit 1
  fi
}

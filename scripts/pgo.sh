#!/usr/bin/env bash
# `make pgo`: the profile-guided release build of scan-service. Build its image after this
# (docker/scan-service.Dockerfile uses the profile), with the same Rust version.
#
#   1. an instrumented release build (target/pgo-generate);
#   2. a training run of it against the local PostgreSQL, Redis and Pub/Sub emulator
#      (scripts/bench/pgo_train.py: a mixed scan load);
#   3. the profile merged into $PGO_DIR/scan-service.profdata (default pgo/, kept out of git;
#      the Docker build uses pgo/ when it is there), and the `rustc -vV` that made it into
#      $PGO_DIR/scan-service.rustc: a profile matches code by symbol names, which differ between
#      compiler versions;
#   4. the release build with that profile (target/pgo/<host>/release/scan-service).
#
# Prints the optimized binary's path as its last line (everything else goes to stderr). What it
# gains: docs/PERFORMANCE.md (the eighteenth look).
set -euo pipefail
cd "$(dirname "$0")/.."

target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
host=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$host" ] || { echo "[pgo] could not read the host triple from rustc -vV" >&2; exit 1; }
out=$(realpath -m "${PGO_DIR:-pgo}")
# The image refuses a profile of another compiler; say so now rather than at `docker build`.
image_rust=$(sed -n 's/^FROM rust:\([0-9.]*\)-.*/\1/p' docker/scan-service.Dockerfile)
if [ "$(rustc -V | cut -d' ' -f2)" != "$image_rust" ]; then
  echo "[pgo] warning: $(rustc -V) is not the image's Rust $image_rust; docker/scan-service.Dockerfile will refuse this profile" >&2
fi
sysroot=$(rustc --print sysroot)
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "[pgo] installing the toolchain's llvm-tools (llvm-profdata)" >&2
  rustup component add llvm-tools >&2 || true
fi
[ -x "$profdata" ] || { echo "[pgo] $profdata is missing: rustup component add llvm-tools" >&2; exit 1; }

scripts/dev-services.sh up >&2
# shellcheck source=scripts/lib/tools.sh
source scripts/lib/tools.sh
need_tool pgo wrk wrk
need_tool pgo psql postgresql-client
# The training database is migrated by the release factory-service, which `make bench` has
# built just before (PGO_RELEASE_BUILT=1).
if [ "${PGO_RELEASE_BUILT:-0}" != 1 ]; then
  cargo build --release -q -p scan-service -p factory-service --bins >&2
fi

# --target keeps the flags off build scripts and proc macros: only the shipped code is
# instrumented and optimized. The flags replace any RUSTFLAGS of the caller's.
unset CARGO_ENCODED_RUSTFLAGS
raw="$target/pgo-generate/raw"
echo "[pgo] instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$raw" CARGO_TARGET_DIR="$target/pgo-generate" \
  cargo build --release -q -p scan-service --bin scan-service --target "$host" >&2
rm -rf "$raw"
mkdir -p "$raw"
LLVM_PROFILE_FILE="$raw/scan-service-%p.profraw" \
  python3 scripts/bench/pgo_train.py "$target/pgo-generate/$host/release/scan-service" >&2
mkdir -p "$out"
"$profdata" merge -o "$out/scan-service.profdata" "$raw"/*.profraw >&2
rustc -vV > "$out/scan-service.rustc"
echo "[pgo] optimized build with $out/scan-service.profdata" >&2
RUSTFLAGS="-Cprofile-use=$out/scan-service.profdata" CARGO_TARGET_DIR="$target/pgo" \
  cargo build --release -q -p scan-service --bin scan-service --target "$host" >&2
echo "$target/pgo/$host/release/scan-service"

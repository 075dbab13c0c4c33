#!/usr/bin/env bash
# `make fuzz-cargo`: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 60). The
# stable toolchain runs libFuzzer's instrumentation only with RUSTC_BOOTSTRAP=1 (cargo-fuzz
# passes -Z flags); no nightly is needed. FUZZ_TARGETS="a b" for some; FUZZ_SANITIZER (default
# none; address also works, slower). Builds are optimized with debug assertions and overflow
# checks on (cargo-fuzz's default), so an overflow is a crash too.
# Each target's corpus grows in fuzz/corpus/<target> (ignored by git), seeded from the committed
# fuzz/seeds/<target> and guided by fuzz/dicts/<target>.dict. A crash stops the run and leaves
# its input in fuzz/artifacts/<target>; reproduce with `cargo fuzz run <target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz-cargo] installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
cargo fuzz build --sanitizer "$sanitizer"
mkdir -p artifacts
for target in $targets; do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  dict=()
  [ -f "dicts/$target.dict" ] && dict=("-dict=dicts/$target.dict")
  log="artifacts/$target.log"
  echo "[fuzz-cargo] $target: ${seconds}s (log: fuzz/$log)"
  if cargo fuzz run --sanitizer "$sanitizer" "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    grep -E '^(Done [0-9]+ runs|stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb))' "$log" \
      | sed "s/^/[fuzz-cargo] $target: /"
  else
    tail -n 40 "$log"
    echo "[fuzz-cargo] $target FAILED: the crashing input is in fuzz/artifacts/$target"
    exit 1
  fi
done
echo "[fuzz-cargo] no crash in: $targets"

#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/<reader>_fuzz.cpp; clang + ASan + UBSan) and runs each one for a
# bounded time on a copy of its committed seed corpus (fuzz/corpus/<target>/). Any crash, sanitizer
# report, leak, hang (> 10 s on one input) or esm2 exception other than esm2::Error fails the script;
# the offending input is saved as <build>/fuzz-artifacts/<target>-crash-*.
#   scripts/fuzz.sh [seconds per target (default 20)] [target ...]
# ESM2_FUZZ_BUILD_DIR picks the build directory (default build-asan: the same instrumented build
# scripts/test.sh runs the unit tests in, so CI compiles the sources under sanitizers once).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
shift || true
build=${ESM2_FUZZ_BUILD_DIR:-build-asan}
jobs=$(nproc)
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DESM2_SANITIZE=ON -DESM2_FUZZ=ON -DESM2_CUDA=OFF -DESM2_MPI=OFF -DESM2_BUILD_BENCH=OFF -DESM2_WERROR=ON >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/*_fuzz.cpp; do targets+=("$(basename "$f" .cpp)"); done
fi
cmake --build "$build" -j "$jobs" --target "${targets[@]}"
mkdir -p "$build/fuzz-artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
summary=()
for t in "${targets[@]}"; do
  name=${t%_fuzz}
  seeds="fuzz/corpus/$name"
  [ -d "$seeds" ] || { echo "fuzz.sh: no seed corpus $seeds" >&2; exit 1; }
  work="$build/fuzz-work/$name"
  rm -rf "$work"
  mkdir -p "$work/new" "$work/tmp"  # new inputs; the targets' scratch files (temp_directory_path follows TMPDIR)
  log="$build/fuzz-artifacts/$name.log"
  # New inputs go to the scratch copy (first directory); the committed seeds stay as they are.
  if ! TMPDIR="$PWD/$work/tmp" "$build/fuzz/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="$build/fuzz-artifacts/$name-" "$work/new" "$seeds" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz.sh: $t FAILED (log $log)" >&2
    exit 1
  fi
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(grep -E '^#[0-9]+.*(DONE|pulse)' "$log" | tail -1 | grep -o 'cov: [0-9]*' || true)
  summary+=("$(printf '%-22s %10s executions in %ss, %s, 0 crashes' "$t" "$execs" "$secs" "$cov")")
done
printf 'fuzz.sh: %s\n' "${summary[@]}"

#!/usr/bin/env bash
# The test command (README, second command; .ci/run calls exactly this): installs missing Debian
# packages, builds in Release and runs the whole ctest suite; then the sanitizer pass: the same sources
# built with clang under ASan + UBSan (build-asan) run the unit-test labels, and every libFuzzer target
# runs for ESM2_FUZZ_SECONDS (default 20) s on its seed corpus (scripts/fuzz.sh, same build).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

# Sanitizer pass. Labels: core data io train (parsers, corpus, checkpoints I/O, optimizer and
# schedules, where memory errors would hide). Left out under ASan: model (numerical kernels: long
# dense loops, 5-10x slower under ASan with nothing new to find beyond the Release run) and
# integration (each test spawns dozens of full `esm2 train` processes).
CC=clang CXX=clang++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DESM2_SANITIZE=ON -DESM2_FUZZ=ON -DESM2_CUDA=OFF -DESM2_MPI=OFF -DESM2_BUILD_BENCH=OFF >/dev/null
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs" -L '^(core|data|io|train)$'
./scripts/fuzz.sh "${ESM2_FUZZ_SECONDS:-20}"

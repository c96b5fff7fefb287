#!/usr/bin/env bash
# The test command (README, second command; .ci/run calls exactly this): installs missing Debian
# packages, builds in Release and runs the whole ctest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"

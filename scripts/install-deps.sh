#!/usr/bin/env bash
# Installs the Debian 12 packages esm2.cpp builds and tests with. Idempotent and non-interactive:
# packages already present are skipped, so a second run does nothing.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config libopenblas-dev libsqlite3-dev zlib1g-dev
      libzstd-dev libsnappy-dev libexpat1-dev nlohmann-json3-dev libcli11-dev libfmt-dev libgtest-dev
      libbenchmark-dev openmpi-bin libopenmpi-dev gnuplot-nox python3
      clang libclang-rt-14-dev libomp-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

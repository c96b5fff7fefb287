#!/usr/bin/env bash
# The README's first command: install missing Debian packages, build in Release, prepare the
# bundled Swiss-Prot sample and run the default training job on it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_BUILD_TESTS=OFF -DESM2_BUILD_BENCH=OFF >/dev/null
cmake --build build -j "$(nproc)" --target esm2
./build/esm2 prepare --fasta data/swissprot-sample/train.fasta.gz \
  --clusters data/swissprot-sample/train_clusters.tsv --output runs/corpus/train
./build/esm2 prepare --fasta data/swissprot-sample/valid.fasta.gz --output runs/corpus/valid

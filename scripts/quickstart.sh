#!/usr/bin/env bash
# The README's first command: install missing Debian packages, build in Release, prepare the bundled
# Swiss-Prot sample and train the `demo` model on it (CPU; the CUDA backend when built and a GPU is
# present). Training stops after 400 steps or 9 minutes, whichever comes first, with a final
# validation, a checkpoint and runs/<experiment>/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target esm2
./build/esm2 prepare --force --fasta data/swissprot-sample/train.fasta.gz \
  --clusters data/swissprot-sample/train_clusters.tsv --output runs/corpus/sample-train
./build/esm2 prepare --force --fasta data/swissprot-sample/valid.fasta.gz --output runs/corpus/sample-valid
./build/esm2 train --train-data runs/corpus/sample-train --valid-data runs/corpus/sample-valid \
  --preset demo --max-seq-length 512 --micro-batch-tokens 8192 \
  --num-steps 400 --warmup-steps 40 --lr 2e-3 --val-check-interval 50 --limit-val-batches 8 \
  --max-time 540 --result-dir runs --experiment-name "demo-$(date +%Y%m%d-%H%M%S)" "$@"

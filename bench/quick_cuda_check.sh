#!/usr/bin/env bash
# A short device call (~3 minutes) that checks the CUDA backend of this tree: build esm2 and
# cuda_backend_test, run the test, then `esm2 bench` 650M and 3B on the default attention route (3B at
# 16,384 tokens shows whether cuDNN's scratch fits or the run falls back to the mma kernels).
# Usage (repository root on the device): DEPS=.carry/deps bench/quick_cuda_check.sh
# $OUT: run.log (summary), test.log, bench.log.
set -uo pipefail
OUT=${OUT:-/tmp/out}; DEPS=${DEPS:-.carry/deps}
mkdir -p "$OUT" /tmp/deps
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
R=$OUT/run.log
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; date -u +%T; } > "$R" 2>&1
{ cmake -S . -B /tmp/q -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DESM2_BUILD_BENCH=OFF \
    -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include \
    -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so && ninja -C /tmp/q -j16 esm2 cuda_backend_test; } \
  > /tmp/q.log 2>&1 || { tail -60 /tmp/q.log >> "$R"; echo "build FAILED" >> "$R"; exit 1; }
echo "build ok $(date -u +%T)" >> "$R"
timeout 40 /tmp/q/cuda_backend_test > "$OUT/test.log" 2>&1
echo "cuda_backend_test exit $? $(date -u +%T)" >> "$R"
grep -E "^\[  (FAILED|PASSED) " "$OUT/test.log" >> "$R"
/tmp/q/esm2 prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv \
  --output /tmp/corpus --force > /dev/null 2>&1
for c in "650M 16384" "3B 16384 --recompute selective"; do
  set -- $c
  timeout 60 /tmp/q/esm2 bench --backend cuda --preset $1 --micro-batch-tokens $2 --data /tmp/corpus --steps 4 --warmup 1 \
    --peak-tflops 989 "${@:3}" > /tmp/b.log 2>&1
  echo "[$c] exit $? $(date -u +%T): $(grep -m1 '^bench' /tmp/b.log) $(grep -i 'note\|warning\|error' /tmp/b.log | head -3 | tr '\n' ' ')" >> "$R"
  { echo "=== $c"; cat /tmp/b.log; } >> "$OUT/bench.log"
done

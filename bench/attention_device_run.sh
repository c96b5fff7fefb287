#!/usr/bin/env bash
# One device call for the attention routes: build (carried SQLite/snappy dev packages), the CUDA tests,
# the attention benchmark (mma vs cuDNN, fixed and real lengths), and with BENCH=1 `esm2 bench` 8M and
# 650M under ESM2_ATTENTION=mma and =cudnn (ROUTES) plus a short GPU training run twice (bitwise check).
# Usage (repository root on the device): bench/attention_device_run.sh DEPS_DIR
set -uo pipefail
DEPS=${1:?deps dir with the .deb files}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/deps
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; date -u; } > "$OUT/run.log" 2>&1
{
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include \
    -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so &&
    time ninja -C build -j16 esm2 cuda_backend_test cuda_attention_bench
} > /tmp/build.log 2>&1 || { tail -60 /tmp/build.log | tee "$OUT/build.log"; exit 1; }
grep -i "cudnn" /tmp/build.log | tee -a "$OUT/run.log"
echo "build ok" | tee -a "$OUT/run.log"
timeout ${TEST_TIMEOUT:-200} ./build/cuda_backend_test --gtest_filter="${TEST_FILTER:-*}" 2>&1 | tee "$OUT/cuda_test.log" |
  grep -E "^\[  (FAILED|PASSED|  OK) |Failure|error|Expected|Which|actual|skipped|rel_l2|side|D " | head -60
timeout ${ATTN_TIMEOUT:-300} ./build/cuda_attention_bench ${ATTN_ARGS:-} 2>&1 | tee "$OUT/attention_bench.txt"
[ "${BENCH:-0}" = 1 ] || exit 0
E=./build/esm2
$E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv \
  --output /tmp/corpus --force > /dev/null 2>&1
$E prepare --fasta data/swissprot-sample/valid.fasta.gz --output /tmp/corpus_valid --force > /dev/null 2>&1
for route in mma ${ROUTES:-cudnn}; do
  for spec in "8M 65536" "650M 16384"; do
    set -- $spec
    ESM2_ATTENTION=$route timeout 150 $E bench --backend cuda --preset $1 --micro-batch-tokens $2 --data /tmp/corpus \
      --steps ${BENCH_STEPS:-5} --warmup 2 --peak-tflops 989 --json "$OUT/bench_${route}_$1.json" 2>&1 |
      grep -v "^ " | tail -3 | sed "s/^/[$route $1] /" | tee -a "$OUT/run.log"
  done
done
# Bitwise determinism of a short GPU training run (ESM2_ATTENTION=${TRAIN_ROUTE:-cudnn}), twice.
for r in 1 2; do
  ESM2_ATTENTION=${TRAIN_ROUTE:-cudnn} timeout 120 $E train --train-data /tmp/corpus --valid-data /tmp/corpus_valid --preset 8M --backend cuda \
    --num-steps 30 --warmup-steps 5 --micro-batch-tokens 16384 --val-check-interval 30 --limit-val-batches 1 \
    --log-every-n-steps 10 --result-dir /tmp/runs$r --experiment-name det --seed 1 > /tmp/train$r.log 2>&1
  tail -2 /tmp/train$r.log | tee -a "$OUT/run.log"
done
for f in $(cd /tmp/runs1 && find . -name '*.safetensors' | sort); do
  cmp -s /tmp/runs1/$f /tmp/runs2/$f && echo "bitwise equal: $f" || echo "DIFFERENT: $f"
done | tee -a "$OUT/run.log"

#!/usr/bin/env bash
# One device call: build, the CUDA test suite, and `esm2 bench --profile` for 8M and 650M (per-op time
# table: where a training step's time goes; Nsight Systems cannot make reports on the GPU machine).
# Usage (repository root on the device, .carry/deps holding the sqlite/snappy .debs): bench/gpu_profile_run.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
DEPS=${DEPS:-.carry/deps}
mkdir -p "$OUT" /tmp/deps
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/run.log" 2>&1
{
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_BUILD_BENCH=OFF \
    -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include \
    -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so &&
    time ninja -C build -j16 esm2 cuda_backend_test ${EXTRA_TARGETS:-}
} > /tmp/build.log 2>&1 || { tail -60 /tmp/build.log | tee "$OUT/build.log"; exit 1; }
tail -3 /tmp/build.log >> "$OUT/run.log"
E=./build/esm2
$E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv \
  --output /tmp/corpus --force > /dev/null 2>&1
timeout 200 ./build/cuda_backend_test > "$OUT/cuda_test.log" 2>&1
echo "cuda_backend_test exit $?" | tee -a "$OUT/run.log"
grep -E "^\[  (FAILED|PASSED) " "$OUT/cuda_test.log" | tee -a "$OUT/run.log"
# BENCH_SPECS: "preset tokens" pairs separated by '|'
IFS='|' read -ra SPECS <<< "${BENCH_SPECS:-8M 65536|8M 16384|650M 16384}"
for spec in "${SPECS[@]}"; do
  set -- $spec
  timeout 150 $E bench --backend cuda --preset $1 --micro-batch-tokens $2 --data /tmp/corpus \
    --steps ${BENCH_STEPS:-5} --warmup 2 --peak-tflops 989 --profile --json "$OUT/bench_${1}_$2.json" \
    > "$OUT/bench_${1}_$2.log" 2>&1
  head -30 "$OUT/bench_${1}_$2.log" | tee -a "$OUT/run.log"
done

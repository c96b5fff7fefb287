#!/usr/bin/env bash
# One device call comparing this tree with a baseline tree (BASE_SRC, e.g. the main checkout the device
# copy sits in): both are built, this tree's CUDA tests run, and `esm2 bench` runs each case with the
# baseline binary and this one back to back on the same card. Per-op profiles (--profile) for 8M at
# 65,536 and 650M at 16,384 tokens. $OUT gets run.log (summary), cuda_test.log, bench.log (every bench
# output) and bench_json.tgz.
# Usage (from this tree's root on the device): BASE_SRC=.. DEPS=../.carry/deps bench/fuse_device_run.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
DEPS=${DEPS:-.carry/deps}
BASE_SRC=${BASE_SRC:-}
R=$OUT  # written as it goes: a run cut off at its limit still returns what it has
mkdir -p "$OUT" /tmp/deps "$R"
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$R/run.log"
conf() {
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_BUILD_BENCH=OFF -DCMAKE_PREFIX_PATH=/tmp/deps/usr \
    -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so
}
(conf . /tmp/build-new && ninja -C /tmp/build-new -j10 esm2 cuda_backend_test) > /tmp/build-new.log 2>&1 &
NEW_PID=$!
BASE_PID=
if [ -n "$BASE_SRC" ]; then
  (conf "$BASE_SRC" /tmp/build-base && ninja -C /tmp/build-base -j6 esm2) > /tmp/build-base.log 2>&1 &
  BASE_PID=$!
fi
if ! wait $NEW_PID; then
  tail -80 /tmp/build-new.log | tee "$OUT/build.log"
  exit 1
fi
echo "build (this tree) ok" | tee -a "$R/run.log"
N=/tmp/build-new/esm2
$N prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv \
  --output /tmp/corpus --force > /dev/null 2>&1
timeout 200 /tmp/build-new/cuda_backend_test > "$R/cuda_test.log" 2>&1
echo "cuda_backend_test exit $?" | tee -a "$R/run.log"
grep -E "^\[  (FAILED|PASSED) |Failure|Expected|Which|actual|error" "$R/cuda_test.log" | head -40 | tee -a "$R/run.log"
BINS="new"
if [ -n "$BASE_PID" ]; then
  if wait $BASE_PID; then BINS="base new"; else tail -20 /tmp/build-base.log >> "$R/run.log"; fi
fi
# BENCH_SPECS: "preset tokens recompute profile" entries separated by '|'
IFS='|' read -ra SPECS <<< "${BENCH_SPECS:-8M 65536 selective 1|650M 16384 selective 1|650M 32768 selective 0|150M 16384 selective 0|3B 16384 selective 0}"
for spec in "${SPECS[@]}"; do
  set -- $spec
  for b in $BINS; do
    prof=; [ "$4" = 1 ] && prof=--profile
    timeout ${BENCH_TIMEOUT:-120} /tmp/build-$b/esm2 bench --backend cuda --preset $1 --micro-batch-tokens $2 \
      --recompute $3 --data /tmp/corpus --steps ${BENCH_STEPS:-5} --warmup 2 --peak-tflops 989 $prof \
      --json "/tmp/bench_${b}_${1}_$2.json" > "/tmp/bench_${b}_${1}_$2.log" 2>&1
    echo "[$b] $(grep -m1 '^bench' "/tmp/bench_${b}_${1}_$2.log")" | tee -a "$R/run.log"
    { echo "=== $b $spec"; cat "/tmp/bench_${b}_${1}_$2.log"; } >> "$R/bench.log"
  done
done
tar -czf "$OUT/bench_json.tgz" -C /tmp $(cd /tmp && ls bench_*.json 2>/dev/null)

#!/usr/bin/env bash
# One device call for this tree (attention routes + fused ops) against a baseline tree (BASE_SRC, the
# checkout the device copy sits in): both built in parallel, this tree's CUDA tests, the attention
# benchmark (mma vs cuDNN), `esm2 bench` 8M/650M for base, new with the mma route and new with cuDNN,
# a 650M per-op profile, and a short GPU training run twice (bitwise). Everything lands in $OUT as it comes.
# Usage (this tree's root on the device): BASE_SRC=.. DEPS=../.carry/deps bench/combined_device_run.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; DEPS=${DEPS:-.carry/deps}; BASE_SRC=${BASE_SRC:-..}
mkdir -p "$OUT" /tmp/deps
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
R=$OUT/run.log
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; date -u; } > "$R" 2>&1
conf() {
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH=/tmp/deps/usr \
    -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so
}
(conf . /tmp/bn && ninja -C /tmp/bn -j11 esm2 cuda_backend_test cuda_attention_bench) > /tmp/bn.log 2>&1 &
NP=$!
(conf "$BASE_SRC" /tmp/bb -DESM2_BUILD_BENCH=OFF && ninja -C /tmp/bb -j5 esm2) > /tmp/bb.log 2>&1 &
BP=$!
wait $NP || { tail -80 /tmp/bn.log > "$OUT/build.log"; echo "new build FAILED" >> "$R"; exit 1; }
grep -i cudnn /tmp/bn.log | head -3 >> "$R"; echo "new build ok $(date -u +%T)" >> "$R"
N=/tmp/bn/esm2
$N prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv --output /tmp/corpus --force > /dev/null 2>&1
$N prepare --fasta data/swissprot-sample/valid.fasta.gz --output /tmp/corpus_valid --force > /dev/null 2>&1
timeout 150 /tmp/bn/cuda_backend_test > "$OUT/cuda_test.log" 2>&1; echo "cuda_backend_test exit $? $(date -u +%T)" >> "$R"
grep -E "^\[  (FAILED|PASSED) " "$OUT/cuda_test.log" >> "$R"
timeout 100 /tmp/bn/cuda_attention_bench ${ATTN_ARGS:-} > "$OUT/attention_bench.txt" 2>&1; echo "attention bench exit $? $(date -u +%T)" >> "$R"
wait $BP && BINS=base || { tail -30 /tmp/bb.log >> "$R"; BINS=; }
b() {  # label binary route preset tokens [extra]
  ESM2_ATTENTION=$3 timeout 100 $2 bench --backend cuda --preset $4 --micro-batch-tokens $5 --data /tmp/corpus \
    --steps ${BENCH_STEPS:-6} --warmup 2 --peak-tflops 989 ${6:-} --json "/tmp/j_$1_$4_$5.json" > "/tmp/b_$1_$4_$5.log" 2>&1
  echo "[$1 $4 $5] $(grep -m1 '^bench' /tmp/b_$1_$4_$5.log) $(grep -m2 -i 'tokens/s' /tmp/b_$1_$4_$5.log | tail -1)" >> "$R"
  { echo "=== $1 $4 $5"; cat "/tmp/b_$1_$4_$5.log"; } >> "$OUT/bench.log"
}
for spec in "650M 16384" "8M 65536"; do
  set -- $spec
  [ -n "$BINS" ] && b base /tmp/bb/esm2 mma $1 $2
  b mma $N mma $1 $2
  b cudnn $N cudnn $1 $2
done
for r in 1 2; do
  ESM2_ATTENTION=${TRAIN_ROUTE:-cudnn} timeout 90 $N train --train-data /tmp/corpus --valid-data /tmp/corpus_valid --preset 8M --backend cuda \
    --num-steps 30 --warmup-steps 5 --micro-batch-tokens 16384 --val-check-interval 30 --limit-val-batches 1 \
    --log-every-n-steps 10 --result-dir /tmp/runs$r --experiment-name det --seed 1 > /tmp/train$r.log 2>&1
  tail -2 /tmp/train$r.log >> "$R"
done
for f in $(cd /tmp/runs1 && find . -name '*.safetensors' | sort); do
  cmp -s /tmp/runs1/$f /tmp/runs2/$f && echo "bitwise equal: $f" || echo "DIFFERENT: $f"
done >> "$R"
b prof $N ${PROF_ROUTE:-cudnn} 650M 16384 --profile
tar -czf "$OUT/json.tgz" -C /tmp $(cd /tmp && ls j_*.json 2>/dev/null) 2>/dev/null
echo "done $(date -u +%T)" >> "$R"

#!/usr/bin/env bash
# Issue 15 in ONE device call (when device time allows only one): build; the CUDA tests; a twice-run GPU
# training on cuDNN's route (bitwise); the attention benchmark at head dim 64; `esm2 bench` 650M on the
# mma and the cuDNN route (amino_acids_only batches, which hold no <pad> key and so can use cuDNN); then
# the peer table (bench/compare_hf.sh: ours beside transformers eager / torch.compile for 650M, 150M and
# 8M, 650M first so its compile case finishes); 3B and a 650M per-op profile with what time is left.
# Usage (repository root on the device): DEPS=.carry/deps bench/issue15_device_run.sh
# Wall time: BUDGET seconds (default 560).
set -uo pipefail
OUT=${OUT:-/tmp/out}; DEPS=${DEPS:-.carry/deps}; BUDGET=${BUDGET:-560}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
mkdir -p "$OUT" /tmp/deps
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
R=$OUT/run.log
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; date -u; } > "$R" 2>&1
{ cmake -S . -B /tmp/bn -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH=/tmp/deps/usr \
    -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so &&
  ninja -C /tmp/bn -j16 esm2 cuda_backend_test cuda_attention_bench; } > /tmp/bn.log 2>&1 ||
  { tail -80 /tmp/bn.log > "$OUT/build.log"; echo "build FAILED" >> "$R"; exit 1; }
echo "build ok $(date -u +%T)" >> "$R"
N=/tmp/bn/esm2
$N prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv --output /tmp/corpus --force > /dev/null 2>&1
$N prepare --fasta data/swissprot-sample/valid.fasta.gz --output /tmp/corpus_valid --force > /dev/null 2>&1
timeout 90 /tmp/bn/cuda_backend_test > "$OUT/cuda_test.log" 2>&1; echo "cuda_backend_test exit $? $(date -u +%T)" >> "$R"
grep -E "^\[  (FAILED|PASSED|SKIPPED) " "$OUT/cuda_test.log" >> "$R"
AA="--random-mask-strategy amino_acids_only"
for r in 1 2; do
  ESM2_ATTENTION=cudnn timeout 60 $N train --train-data /tmp/corpus --valid-data /tmp/corpus_valid --preset 8M --backend cuda \
    --num-steps 30 --warmup-steps 5 --micro-batch-tokens 16384 --val-check-interval 30 --limit-val-batches 1 $AA \
    --log-every-n-steps 10 --result-dir /tmp/runs$r --experiment-name det --seed 1 > /tmp/train$r.log 2>&1
  tail -1 /tmp/train$r.log >> "$R"
done
for f in $(cd /tmp/runs1 2>/dev/null && find . -name '*.safetensors' | sort); do
  cmp -s /tmp/runs1/$f /tmp/runs2/$f && echo "bitwise equal: $f" || echo "DIFFERENT: $f"
done >> "$R"
timeout 40 /tmp/bn/cuda_attention_bench --dims=64 --iters=5 > "$OUT/attention_bench.txt" 2>&1
echo "attention bench exit $? $(date -u +%T)" >> "$R"
b() {  # label route preset tokens [extra...]
  local l=$1 route=$2 p=$3 t=$4; shift 4
  [ "$(left)" -gt 30 ] || { echo "[$l $p $t] skipped: time" >> "$R"; return; }
  ESM2_ATTENTION=$route timeout $(( $(left) < 100 ? $(left) : 100 )) $N bench --backend cuda --preset $p --micro-batch-tokens $t \
    --data /tmp/corpus --steps 6 --warmup 2 --peak-tflops 989 "$@" --json "/tmp/j_${l}_${p}_$t.json" > "/tmp/b_${l}_${p}_$t.log" 2>&1
  echo "[$l $p $t] $(grep -m1 '^bench' /tmp/b_${l}_${p}_$t.log)" >> "$R"
  { echo "=== $l $p $t $*"; cat "/tmp/b_${l}_${p}_$t.log"; } >> "$OUT/bench.log"
}
b mmaaa mma 650M 16384 $AA
b cudnnaa cudnn 650M 16384 $AA
echo "peer table from $(date -u +%T), $(left) s left" >> "$R"
ESM2_BIN=$N CORPUS=/tmp/corpus PRESETS="650M 150M 8M" HF_TIMEOUT=200 BUDGET=$(( $(left) - 45 )) OUT=$OUT/peers \
  bash bench/compare_hf.sh "$DEPS" > /tmp/peers.out 2>&1
grep -A30 "^| model" /tmp/peers.out >> "$R"
(cd "$OUT/peers" && tar -czf ../peers.tgz . ) && rm -rf "$OUT/peers"
b new auto 3B 16384 --recompute selective
b prof auto 650M 16384 --profile
tar -czf "$OUT/json.tgz" -C /tmp $(cd /tmp && ls j_*.json 2>/dev/null) 2>/dev/null
echo "done $(date -u +%T), $(left) s of the budget left" >> "$R"

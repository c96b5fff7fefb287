#!/usr/bin/env bash
# Issues 15 and 19 in ONE device call (~9 minutes) on the tree that holds both (the cuDNN attention route
# with key compaction, the weight-gradient fix of the GEMM pick, FP8): build it, and main's tree (BASE_SRC)
# beside it for a like-for-like baseline; the CUDA and FP8 tests; two 30-step 8M trainings on cuDNN's route
# with the default masking (bitwise equal?) and one on the mma kernels (same losses?); the attention
# benchmark at head dim 64; `esm2 bench` per route for 650M, 8M, 150M, 650M and 3B in fp8-mixed, main's
# tree for 650M/8M/150M; a 650M per-op profile with what time is left.
# Usage (repository root of the tree to test, on the device):
#   DEPS=.carry/deps BASE_SRC=<main's tree, optional> bench/int_device_run.sh
# $OUT: run.log (summary), tests.log, bench.log, attention_bench.txt, json.tgz (bench JSONs), build.log
# on a failed build. Wall time: BUDGET seconds (default 555).
set -uo pipefail
OUT=${OUT:-/tmp/out}; DEPS=${DEPS:-.carry/deps}; BUDGET=${BUDGET:-555}; BASE_SRC=${BASE_SRC:-}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
mkdir -p "$OUT" /tmp/deps
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
R=$OUT/run.log
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; date -u; } > "$R" 2>&1
CONF=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH=/tmp/deps/usr
      -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so)
if [ -n "$BASE_SRC" ]; then
  ( cmake -S "$BASE_SRC" -B /tmp/base "${CONF[@]}" -DESM2_BUILD_TESTS=OFF -DESM2_BUILD_BENCH=OFF &&
    ninja -C /tmp/base -j6 esm2 ) > /tmp/base.log 2>&1 &
  BASE_PID=$!
fi
# The FP8 tests and benches only where the tree has FP8 (branch fp8).
FP8=; [ -f tests/backend/cuda/fp8_gemm_test.cpp ] && FP8=1
TESTS="cuda_backend_test${FP8:+ fp8_gemm_test fp8_train_test}"
{ cmake -S . -B /tmp/b "${CONF[@]}" && ninja -C /tmp/b -j12 esm2 $TESTS cuda_attention_bench; } \
  > /tmp/b.log 2>&1 || { tail -80 /tmp/b.log > "$OUT/build.log"; echo "build FAILED" >> "$R"; exit 1; }
grep -m1 "cuDNN fused attention" /tmp/b.log >> "$R"
echo "build ok at $(( $(date +%s) - T0 ))s" >> "$R"
N=/tmp/b/esm2
$N prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv --output /tmp/corpus --force > /dev/null 2>&1
$N prepare --fasta data/swissprot-sample/valid.fasta.gz --output /tmp/corpus_valid --force > /dev/null 2>&1

for t in $TESTS; do
  TMPDIR=/tmp timeout 120 /tmp/b/$t > /tmp/t_$t.log 2>&1; rc=$?
  echo "$t exit $rc at $(( $(date +%s) - T0 ))s: $(grep -E '^\[  (PASSED|FAILED) ' /tmp/t_$t.log | tr '\n' ' ')" >> "$R"
  grep -E "SKIPPED|FAILED  \]|esm2: (warning|note)" /tmp/t_$t.log | sort | uniq -c | head -20 >> "$R"
  { echo "===== $t (exit $rc)"; cat /tmp/t_$t.log; } >> "$OUT/tests.log"
done

# Training on each route with the default masking (random <pad> replacements: key compaction on cuDNN).
tr() {  # tag route steps
  ESM2_ATTENTION=$2 timeout 90 $N train --train-data /tmp/corpus --valid-data /tmp/corpus_valid --preset 8M --backend cuda \
    --num-steps $3 --warmup-steps 5 --micro-batch-tokens 16384 --val-check-interval $3 --limit-val-batches 4 \
    --log-every-n-steps 10 --result-dir /tmp/runs_$1 --experiment-name t --seed 1 > /tmp/train_$1.log 2>&1
  echo "[train $1 route=$2] exit $? $(grep -m1 'cuDNN\|warning' /tmp/train_$1.log) | $(tail -1 /tmp/train_$1.log)" >> "$R"
  grep -h '"val_loss"\|"loss"' /tmp/runs_$1/t/metrics.jsonl 2>/dev/null | tail -2 | cut -c1-300 >> "$R"
}
tr c1 cudnn 30; tr c2 cudnn 30; tr m1 mma 30
for f in $(cd /tmp/runs_c1 2>/dev/null && find . -name '*.safetensors' | sort); do
  cmp -s /tmp/runs_c1/$f /tmp/runs_c2/$f && echo "bitwise equal c1/c2: $f" || echo "DIFFERENT c1/c2: $f"
done >> "$R"

timeout 60 /tmp/b/cuda_attention_bench --dims=64 --iters=5 > "$OUT/attention_bench.txt" 2>&1
echo "attention bench exit $? at $(( $(date +%s) - T0 ))s" >> "$R"

[ -n "${BASE_PID:-}" ] && { wait $BASE_PID && echo "base build ok" >> "$R" || { echo "base build FAILED" >> "$R"; tail -30 /tmp/base.log >> "$R"; }; }
b() {  # label route binary preset tokens [extra...]
  local l=$1 route=$2 bin=$3 p=$4 t=$5; shift 5
  [ "$(left)" -gt 35 ] || { echo "[$l $p $t] skipped: $(left)s left" >> "$R"; return; }
  [ -x "$bin" ] || { echo "[$l $p $t] skipped: no $bin" >> "$R"; return; }
  ESM2_ATTENTION=$route timeout $(( $(left) < 100 ? $(left) - 5 : 100 )) $bin bench --backend cuda --preset $p \
    --micro-batch-tokens $t --data /tmp/corpus --steps 6 --warmup 2 --peak-tflops 989 "$@" --json "/tmp/j_${l}_${p}_$t.json" \
    > "/tmp/b_${l}_${p}_$t.log" 2>&1
  echo "[$l $p $t $*] $(grep -m1 '^bench' /tmp/b_${l}_${p}_$t.log) $(grep -m2 -i 'warning\|error' /tmp/b_${l}_${p}_$t.log | tr '\n' ' ')" >> "$R"
  { echo "=== $l $p $t $*"; cat "/tmp/b_${l}_${p}_$t.log"; } >> "$OUT/bench.log"
}
b base mma /tmp/base/esm2 650M 16384
b mma mma $N 650M 16384
b cudnn cudnn $N 650M 16384
[ -n "$FP8" ] && b fp8 cudnn $N 650M 16384 --precision fp8-mixed
b base mma /tmp/base/esm2 8M 65536
b mma mma $N 8M 65536
b cudnn cudnn $N 8M 65536
b base mma /tmp/base/esm2 150M 32768
b mma mma $N 150M 32768
b cudnn cudnn $N 150M 32768
b cudnn cudnn $N 3B 16384 --recompute selective
[ -n "$FP8" ] && b fp8 cudnn $N 3B 16384 --recompute selective --precision fp8-mixed
b prof cudnn $N 650M 16384 --profile
tar -czf "$OUT/json.tgz" -C /tmp $(cd /tmp && ls j_*.json 2>/dev/null) 2>/dev/null
echo "done $(date -u +%T), $(left) s of the budget left" >> "$R"

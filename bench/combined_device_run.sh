#!/usr/bin/env bash
# One device call for this tree's CUDA work (attention routes, fused ops) against a baseline tree
# (BASE_SRC): both built in parallel; this tree's CUDA tests; the attention benchmark (mma vs cuDNN,
# real and fixed lengths); `esm2 bench` 650M/150M/8M for base, this tree with the mma route and this
# tree with cuDNN; a short GPU training run twice (bitwise); per-op profiles (--profile) of 650M and 8M
# before (base) and after; 3B last if time is left. Everything lands in $OUT as it comes, and every
# step checks the time left, so a slow step costs the later ones, not the whole call.
# Usage (repository root on the device):
#   BASE_SRC=.dev-base DEPS=.carry/deps bench/combined_device_run.sh
# (make the base here with `git archive <commit> | tar -x -C .dev-base`; `.dev-*/` is git-ignored
# through .git/info/exclude, so carry it). Wall time on an H100: about 9 minutes (BUDGET, default 560 s).
set -uo pipefail
OUT=${OUT:-/tmp/out}; DEPS=${DEPS:-.carry/deps}; BASE_SRC=${BASE_SRC:-.dev-base}; BUDGET=${BUDGET:-560}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
mkdir -p "$OUT" /tmp/deps
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
R=$OUT/run.log
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv; date -u; } > "$R" 2>&1
conf() {
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_PREFIX_PATH=/tmp/deps/usr \
    -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so "${@:3}"
}
(conf . /tmp/bn && ninja -C /tmp/bn -j12 esm2 cuda_backend_test cuda_attention_bench) > /tmp/bn.log 2>&1 &
NP=$!
BINS=
if [ -d "$BASE_SRC" ]; then
  (conf "$BASE_SRC" /tmp/bb -DESM2_BUILD_BENCH=OFF -DESM2_BUILD_TESTS=OFF && ninja -C /tmp/bb -j4 esm2) > /tmp/bb.log 2>&1 &
  BP=$!
fi
wait $NP || { tail -80 /tmp/bn.log > "$OUT/build.log"; echo "new build FAILED" >> "$R"; exit 1; }
grep -i cudnn /tmp/bn.log | head -3 >> "$R"; echo "new build ok $(date -u +%T)" >> "$R"
N=/tmp/bn/esm2
$N prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv --output /tmp/corpus --force > /dev/null 2>&1
$N prepare --fasta data/swissprot-sample/valid.fasta.gz --output /tmp/corpus_valid --force > /dev/null 2>&1
timeout 150 /tmp/bn/cuda_backend_test > "$OUT/cuda_test.log" 2>&1; echo "cuda_backend_test exit $? $(date -u +%T)" >> "$R"
grep -E "^\[  (FAILED|PASSED|SKIPPED) " "$OUT/cuda_test.log" >> "$R"
timeout 90 /tmp/bn/cuda_attention_bench ${ATTN_ARGS:---iters=10} > "$OUT/attention_bench.txt" 2>&1
echo "attention bench exit $? $(date -u +%T)" >> "$R"
if [ -n "${BP:-}" ]; then wait $BP && BINS=base || { tail -30 /tmp/bb.log >> "$R"; }; fi
b() {  # label binary route preset tokens [extra...]
  local l=$1 bin=$2 route=$3 p=$4 t=$5; shift 5
  [ "$(left)" -gt 25 ] || { echo "[$l $p $t] skipped: time" >> "$R"; return; }
  ESM2_ATTENTION=$route timeout $(( $(left) < 120 ? $(left) : 120 )) $bin bench --backend cuda --preset $p --micro-batch-tokens $t \
    --data /tmp/corpus --steps ${BENCH_STEPS:-6} --warmup 2 --peak-tflops 989 "$@" --json "/tmp/j_${l}_${p}_$t.json" > "/tmp/b_${l}_${p}_$t.log" 2>&1
  echo "[$l $p $t] $(grep -m1 '^bench' /tmp/b_${l}_${p}_$t.log)" >> "$R"
  { echo "=== $l $p $t $*"; cat "/tmp/b_${l}_${p}_$t.log"; } >> "$OUT/bench.log"
}
AA="--random-mask-strategy amino_acids_only"  # no random <pad>: no key mask, so cuDNN's route applies
for spec in "650M 16384" "8M 65536" "150M 32768"; do
  set -- $spec
  [ -n "$BINS" ] && b base /tmp/bb/esm2 mma $1 $2
  b mma $N auto $1 $2
  b mmaaa $N mma $1 $2 $AA
  b cudnnaa $N cudnn $1 $2 $AA
done
for r in 1 2; do
  [ "$(left)" -gt 60 ] || break
  ESM2_ATTENTION=${TRAIN_ROUTE:-cudnn} timeout 60 $N train --train-data /tmp/corpus --valid-data /tmp/corpus_valid --preset 8M --backend cuda \
    --num-steps 30 --warmup-steps 5 --micro-batch-tokens 16384 --val-check-interval 30 --limit-val-batches 1 $AA \
    --log-every-n-steps 10 --result-dir /tmp/runs$r --experiment-name det --seed 1 > /tmp/train$r.log 2>&1
  tail -2 /tmp/train$r.log >> "$R"
done
for f in $(cd /tmp/runs1 2>/dev/null && find . -name '*.safetensors' | sort); do
  cmp -s /tmp/runs1/$f /tmp/runs2/$f && echo "bitwise equal: $f" || echo "DIFFERENT: $f"
done >> "$R"
b profnew $N auto 650M 16384 --profile
b profcudnnaa $N cudnn 650M 16384 --profile $AA
b profnew $N auto 8M 65536 --profile
b new $N auto 3B 16384 --recompute selective
tar -czf "$OUT/json.tgz" -C /tmp $(cd /tmp && ls j_*.json 2>/dev/null) 2>/dev/null
echo "done $(date -u +%T), $(left) s of the budget left" >> "$R"

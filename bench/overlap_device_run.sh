#!/usr/bin/env bash
# One device call on 2+ GPUs for the ZeRO-1 gradient reduction (src/optim/zero_optimizer.h):
#  (0) build (carried SQLite/snappy .debs as bench/multi_gpu_run.sh) and the NCCL tests;
#  (a) exactness: 8M, bf16-mixed, `esm2 train --gpus N`, 30 steps, 500k-parameter buckets, fp32 on the
#      wire: reduced after the backward and gathered at the end of the step vs both overlapped must give
#      bitwise the same checkpoint and losses (also with accumulation 3); bf16 on the wire stays close;
#  (b) 650M weak scaling (16,384 tokens per GPU per step): 1 GPU, then N GPUs with
#      (i) no overlap + fp32 (last session's configuration), (ii) overlap + fp32, (iii) overlap + bf16
#      (the default) → $OUT/overlap.json.
# Each step is logged; a failing step does not stop the next. Budget: < 9 min on 2×H100.
# Usage (repository root on the device): bench/overlap_device_run.sh [DEPS_DIR]
set -u
DEPS=${1:-${DEPS:-.carry/deps}}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/deps /tmp/ov
LOG="$OUT/run.log"
: > "$LOG"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY=$(command -v python3)
N=$(nvidia-smi -L | grep -c '^GPU')
nvidia-smi --query-gpu=index,name,memory.total --format=csv >> "$LOG" 2>&1
say "GPUs: $N"

say "build"
{
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_CUDA=ON -DESM2_BUILD_BENCH=OFF \
    -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include \
    -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so &&
    time ninja -C build -j$(nproc) esm2 nccl_communicator_test
} > /tmp/ov/build.log 2>&1 || { tail -60 /tmp/ov/build.log | tee "$OUT/build.log"; say "BUILD FAILED"; exit 1; }
E=$PWD/build/esm2
say "tests"
timeout 200 ./build/nccl_communicator_test > "$OUT/tests.log" 2>&1
grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|OK \]" "$OUT/tests.log" | tee -a "$LOG"

$E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv \
  --output /tmp/ov/corpus --force > /dev/null 2>&1 || say "prepare FAILED"
RUNS=/tmp/ov/runs
COMMON="--train-data /tmp/ov/corpus --backend cuda --precision bf16-mixed --micro-batch-tokens 16384
  --max-seq-length 1024 --seed 7 --log-every-n-steps 1 --no-report --no-tensorboard --result-dir $RUNS"

# ---- (a) exactness ----
A8="--preset 8M --num-steps 30 --warmup-steps 5 --lr 4e-4 --val-check-interval 30 --gpus $N --ddp-bucket-size 500000 $COMMON"
say "(a) 500k-parameter buckets, reduced after the backward, gathered at the end of the step, fp32"
timeout 100 $E train $A8 --no-overlap-grad-reduce --grad-reduce-dtype fp32 --experiment-name a_plain > /tmp/ov/a1.log 2>&1
say "  exit $?"; grep -E "gradient reduce-scatter|parameter all-gather|error" /tmp/ov/a1.log | head -3 | tee -a "$LOG"
say "(a) the same buckets, both overlapped, fp32"
timeout 100 $E train $A8 --grad-reduce-dtype fp32 --experiment-name a_overlap > /tmp/ov/a2.log 2>&1
say "  exit $?"; grep -E "gradient reduce-scatter|parameter all-gather|error" /tmp/ov/a2.log | head -3 | tee -a "$LOG"
say "(a) the same, accumulation 3 (three forwards per step; the gather lands in the first)"
timeout 100 $E train $A8 --grad-reduce-dtype fp32 --accumulate-grad-batches 3 --no-overlap-grad-reduce --experiment-name a_acc_plain > /tmp/ov/a4.log 2>&1
say "  exit $?"
timeout 100 $E train $A8 --grad-reduce-dtype fp32 --accumulate-grad-batches 3 --experiment-name a_acc_overlap > /tmp/ov/a5.log 2>&1
say "  exit $?"
say "(a) the same buckets, overlapped, bf16 on the wire"
timeout 100 $E train $A8 --grad-reduce-dtype bf16 --experiment-name a_bf16 > /tmp/ov/a3.log 2>&1
say "  exit $?"; grep -E "gradient reduce-scatter|error" /tmp/ov/a3.log | head -3 | tee -a "$LOG"
for pair in "a_plain a_overlap" "a_acc_plain a_acc_overlap"; do
  set -- $pair
  for f in model.safetensors trainer_state/optimizer.safetensors; do
    if cmp -s $RUNS/$1/checkpoints/step-00000030/$f $RUNS/$2/checkpoints/step-00000030/$f; then
      say "  $1 vs $2, $f: bitwise equal"
    else
      say "  $1 vs $2, $f: DIFFERS"
    fi
  done
done

# ---- (b) 650M weak scaling ----
B650="--preset 650M --num-steps 25 --warmup-steps 5 --lr 1e-4 --val-check-interval 1000 --disable-checkpointing $COMMON"
say "(b) 650M on 1 GPU"
timeout 120 $E train $B650 --experiment-name s1 > /tmp/ov/b1.log 2>&1; say "  exit $?"
say "(b) 650M on $N GPUs, no overlap, fp32"
timeout 120 $E train $B650 --gpus $N --no-overlap-grad-reduce --grad-reduce-dtype fp32 --experiment-name s_plain > /tmp/ov/b2.log 2>&1; say "  exit $?"
say "(b) 650M on $N GPUs, overlap, fp32"
timeout 120 $E train $B650 --gpus $N --grad-reduce-dtype fp32 --experiment-name s_overlap > /tmp/ov/b3.log 2>&1; say "  exit $?"
say "(b) 650M on $N GPUs, overlap, bf16 (default)"
timeout 120 $E train $B650 --gpus $N --experiment-name s_bf16 > /tmp/ov/b4.log 2>&1; say "  exit $?"
grep -h -E "gradient reduce-scatter" /tmp/ov/b[234].log | tee -a "$LOG"
tail -n 4 /tmp/ov/b4.log >> "$LOG"
$PY - "$RUNS" "$N" "$OUT/overlap.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys, os
runs, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def metrics(name):
    p = os.path.join(runs, name, "metrics.jsonl"); loss, tps = {}, []
    if os.path.exists(p):
        for line in open(p):
            j = json.loads(line)
            if "train_loss" in j: loss[j["step"]] = j["train_loss"]
            if "tokens_per_s" in j and j["step"] > 5: tps.append(j["tokens_per_s"])
    return loss, (sum(tps) / len(tps) if tps else None)
res = {"gpus": n, "preset_scaling": "650M", "micro_batch_tokens_per_gpu": 16384, "precision": "bf16-mixed"}
_, t1 = metrics("s1"); res["real_tokens_per_s_1gpu"] = t1
for k in ("s_plain", "s_overlap", "s_bf16"):
    _, t = metrics(k)
    res[k] = {"real_tokens_per_s_total": t, "weak_scaling_efficiency": (t / n / t1) if (t and t1) else None}
lp, _ = metrics("a_plain"); lo, _ = metrics("a_overlap"); lb, _ = metrics("a_bf16")
ap, _ = metrics("a_acc_plain"); ao, _ = metrics("a_acc_overlap")
c = [s for s in lp if s in lo]
ca = [s for s in ap if s in ao]
res["exact_8M"] = {"steps": len(c), "losses_bitwise_equal_plain_vs_overlap": all(lp[s] == lo[s] for s in c) if c else None,
                   "losses_bitwise_equal_plain_vs_overlap_accumulation3": all(ap[s] == ao[s] for s in ca) if ca else None,
                   "max_abs_dloss_bf16_vs_fp32": max(abs(lp[s] - lb[s]) for s in c if s in lb) if c and lb else None}
json.dump(res, open(out, "w"), indent=1)
print(res)
EOF
say "done"

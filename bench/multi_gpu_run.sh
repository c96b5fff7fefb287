#!/usr/bin/env bash
# One device call on a multi-GPU machine (N = GPUs listed by nvidia-smi -L) for NCCL data parallelism:
#  (0) build (carried SQLite/snappy dev packages, as bench/cuda_device_run.sh) and the NCCL/launcher tests;
#  (a) 8M preset, bundled data, bf16-mixed, packed, 100 steps, the same global batch three ways:
#      1 GPU with --accumulate-grad-batches N, `esm2 train --gpus N`, `mpirun -np N esm2 train`;
#      per-step losses and max |Δloss| → $OUT/dp_equivalence.json;
#  (b) 650M preset, a short `esm2 train` at 1 and N GPUs (same micro-batch per GPU: weak scaling):
#      real tokens/s/GPU and efficiency → $OUT/scaling.json;
#  (c) `esm2 train --gpus N` with checkpoints; kill -9 of one worker after ~30 s; every rank's exit and
#      the launcher's messages; then resume from the last checkpoint on 1 GPU (accumulation N keeps
#      the global batch) and show the step counter continuing → $OUT/kill_resume.json + .log;
#  (d) last: tensor parallel, the (b) 650M run again as `--gpus 2 --tensor-model-parallel-size 2` (DP 1: the
#      same batch as the 1-GPU run); per-step |Δloss| TP=2 vs TP=1 and tokens/s → $OUT/tensor_parallel.json.
# Each step is logged and a failing step does not stop the next. Budget: < 10 min on 2×H100.
# Usage (repository root on the device; .carry/deps, or the directory given, holds the sqlite/snappy
# .debs as for bench/gpu_profile_run.sh): bench/multi_gpu_run.sh [DEPS_DIR]
set -u
DEPS=${1:-${DEPS:-.carry/deps}}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/deps /tmp/mg
LOG="$OUT/run.log"
: > "$LOG"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
# NVLink multicast stays off on these shared machines (KINDS.md); the workers inherit it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY=$(command -v python3)
N=$(nvidia-smi -L | grep -c '^GPU')
nvidia-smi --query-gpu=index,name,memory.total --format=csv >> "$LOG" 2>&1
nvidia-smi topo -m >> "$LOG" 2>&1
say "GPUs: $N"

# ---- (0) build and tests ----
say "build"
{
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_CUDA=ON -DESM2_BUILD_BENCH=OFF \
    -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include \
    -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so &&
    time ninja -C build -j$(nproc) esm2 nccl_communicator_test local_launcher_test
} > /tmp/mg/build.log 2>&1 || { tail -60 /tmp/mg/build.log | tee "$OUT/build.log"; say "BUILD FAILED"; exit 1; }
grep -E "NCCL found|MPI found" /tmp/mg/build.log | tee -a "$LOG"
E=$PWD/build/esm2
say "tests"
{
  timeout 150 ./build/nccl_communicator_test 2>&1
  timeout 60 ./build/local_launcher_test 2>&1
} > "$OUT/tests.log"
grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure" "$OUT/tests.log" | tee -a "$LOG"

$E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv \
  --output /tmp/mg/corpus --force > /dev/null 2>&1 || say "prepare FAILED"
RUNS=/tmp/mg/runs
COMMON="--train-data /tmp/mg/corpus --backend cuda --precision bf16-mixed --micro-batch-tokens 16384
  --max-seq-length 1024 --seed 7 --log-every-n-steps 1 --no-report --no-tensorboard --result-dir $RUNS"

# ---- (a) DP equivalence: same global batch (16384 tokens × N) three ways ----
A8="--preset 8M --num-steps 100 --warmup-steps 10 --lr 4e-4 --val-check-interval 1000 --disable-checkpointing $COMMON"
say "(a) 1 GPU × accumulation $N"
timeout 90 $E train $A8 --accumulate-grad-batches $N --experiment-name dp_acc > /tmp/mg/a_acc.log 2>&1
say "  exit $?"; tail -2 /tmp/mg/a_acc.log >> "$LOG"
say "(a) --gpus $N"
timeout 90 $E train $A8 --gpus $N --experiment-name dp_gpus > /tmp/mg/a_gpus.log 2>&1
say "  exit $?"; grep -E "data parallel|error" /tmp/mg/a_gpus.log | head -3 | tee -a "$LOG"
say "(a) mpirun -np $N"
timeout 90 mpirun --allow-run-as-root --oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none \
  -np $N $E train $A8 --experiment-name dp_mpi > /tmp/mg/a_mpi.log 2>&1
say "  exit $?"; grep -E "data parallel|error" /tmp/mg/a_mpi.log | head -3 | tee -a "$LOG"
$PY - "$RUNS" "$N" "$OUT/dp_equivalence.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys, os
runs, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def losses(name):
    p = os.path.join(runs, name, "metrics.jsonl"); d = {}
    if os.path.exists(p):
        for line in open(p):
            j = json.loads(line)
            if "train_loss" in j: d[j["step"]] = j["train_loss"]
    return d
acc, gp, mp = losses("dp_acc"), losses("dp_gpus"), losses("dp_mpi")
steps = sorted(acc)
def maxd(a, b):
    common = [s for s in a if s in b]
    return (max(abs(a[s] - b[s]) for s in common) if common else None), len(common)
res = {"gpus": n, "global_batch": f"16384 tokens x {n}", "precision": "bf16-mixed", "preset": "8M",
       "max_abs_dloss_gpus_vs_accumulation": maxd(gp, acc)[0], "max_abs_dloss_mpirun_vs_accumulation": maxd(mp, acc)[0],
       "max_abs_dloss_gpus_vs_mpirun": maxd(gp, mp)[0], "steps_compared": maxd(gp, acc)[1],
       "table": [{"step": s, "accumulation": acc.get(s), "gpus": gp.get(s), "mpirun": mp.get(s)} for s in steps]}
json.dump(res, open(out, "w"), indent=1)
print({k: v for k, v in res.items() if k != "table"})
EOF

# ---- (b) 650M weak scaling: 16384 tokens per GPU per step ----
B650="--preset 650M --num-steps 25 --warmup-steps 5 --lr 1e-4 --val-check-interval 1000 --disable-checkpointing $COMMON"
say "(b) 650M on 1 GPU"
timeout 120 $E train $B650 --experiment-name s650_1 > /tmp/mg/b1.log 2>&1; say "  exit $?"
say "(b) 650M on $N GPUs"
timeout 120 $E train $B650 --gpus $N --experiment-name s650_n > /tmp/mg/bn.log 2>&1; say "  exit $?"
tail -3 /tmp/mg/bn.log >> "$LOG"
$PY - "$RUNS" "$N" "$OUT/scaling.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys, os
runs, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def tps(name):
    p = os.path.join(runs, name, "metrics.jsonl"); v = []
    if os.path.exists(p):
        for line in open(p):
            j = json.loads(line)
            if "tokens_per_s" in j and j["step"] > 5: v.append(j["tokens_per_s"])  # after warm-up steps
    return sum(v) / len(v) if v else None
t1, tn = tps("s650_1"), tps("s650_n")
res = {"preset": "650M", "precision": "bf16-mixed", "micro_batch_tokens_per_gpu": 16384, "gpus": n,
       "real_tokens_per_s_1gpu": t1, "real_tokens_per_s_ngpu_total": tn,
       "real_tokens_per_s_per_gpu_n": tn / n if tn else None,
       "weak_scaling_efficiency": (tn / n / t1) if (t1 and tn) else None,
       "note": "no overlap of gradient communication with backward; fp32 gradients reduced after the last micro-batch"}
json.dump(res, open(out, "w"), indent=1)
print(res)
EOF

# ---- (c) kill one rank mid-run, then resume on 1 GPU ----
C8="--preset 8M --num-steps 100000 --warmup-steps 10 --lr 4e-4 --val-check-interval 100 $COMMON"
KL=/tmp/mg/kill_resume.log
say "(c) --gpus $N with checkpoints every 100 steps; kill -9 of rank $((N - 1)) after 30 s"
( timeout 90 $E train $C8 --gpus $N --experiment-name killrun > /tmp/mg/c_run.log 2>&1; echo "launcher exit $?" >> /tmp/mg/c_run.log ) &
sleep 30
LPID=$(pgrep -f "^$E train.*--gpus $N.*killrun" | head -1)
VICTIM=
for p in $(pgrep -P "$LPID" 2>/dev/null); do
  tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -qx "ESM2_RANK=$((N - 1))" && VICTIM=$p
done
{ echo "launcher pid $LPID, workers: $(pgrep -P "$LPID" | tr '\n' ' '), killing rank $((N - 1)) = pid $VICTIM"; } >> $KL
T0=$(date +%s%N)
[ -n "$VICTIM" ] && kill -9 "$VICTIM"
wait
T1=$(date +%s%N)
echo "launcher ended $(( (T1 - T0) / 1000000 )) ms after the kill" >> $KL
echo "---- launcher + rank 0 output (tail) ----" >> $KL
tail -25 /tmp/mg/c_run.log >> $KL
LAST=$(ls -d $RUNS/killrun/checkpoints/*/ 2>/dev/null | tail -1)
echo "last checkpoint: $LAST" >> $KL
say "(c) resume on 1 GPU (accumulation $N) for 15 s"
timeout 60 $E train $C8 --accumulate-grad-batches $N --resume-if-exists --max-time 15 --experiment-name killrun \
  > /tmp/mg/c_resume.log 2>&1
echo "resume exit $?" >> $KL
echo "---- resume output (head/tail) ----" >> $KL
head -3 /tmp/mg/c_resume.log >> $KL; tail -4 /tmp/mg/c_resume.log >> $KL
cp $KL "$OUT/kill_resume.log"
$PY - "$RUNS" "$OUT/kill_resume.json" /tmp/mg/c_run.log /tmp/mg/c_resume.log <<'EOF' 2>&1 | tee -a "$LOG"
import json, re, sys, os
runs, out, runlog, resumelog = sys.argv[1:5]
run = open(runlog, errors="replace").read(); res_ = open(resumelog, errors="replace").read()
m = re.search(r"resumed from (\S+) \(step (\d+)\)", res_)
steps = []
p = os.path.join(runs, "killrun", "metrics.jsonl")
if os.path.exists(p):
    steps = [json.loads(l)["step"] for l in open(p) if "train_loss" in l]
res = {"launcher_messages": [l for l in run.splitlines() if l.startswith("esm2 train: rank") or "launcher exit" in l
                             or "SIGKILL" in l or "timed out" in l or "error" in l],
       "resumed_from": m.group(1) if m else None, "resumed_at_step": int(m.group(2)) if m else None,
       "last_step_after_resume": steps[-1] if steps else None}
json.dump(res, open(out, "w"), indent=1)
print(res)
EOF
# ---- (d) tensor parallel (docs/dist.md): the (b) 650M run split over 2 GPUs, same batch ----
# TP splits the model, not the batch, so the run must track the 1-GPU run s650_1 step by step; the
# difference is bf16 round-off (partial sums rounded to bf16 before the all-reduce). tokens/s shows
# the cost of the 4 all-reduces of [T, C] per layer and micro-batch (paper: ~16% at 650M).
if [ "$N" -ge 2 ]; then
  say "(d) 650M TP=2 on 2 GPUs (--gpus 2 --tensor-model-parallel-size 2)"
  timeout 120 $E train $B650 --gpus 2 --tensor-model-parallel-size 2 --experiment-name tp2_650 > /tmp/mg/d2.log 2>&1
  say "  exit $?"; grep -E "parallel layout|error" /tmp/mg/d2.log | head -3 | tee -a "$LOG"
  tail -20 /tmp/mg/d2.log > "$OUT/tp2_650.log"
  $PY - "$RUNS" "$OUT/tensor_parallel.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys, os
runs, out = sys.argv[1], sys.argv[2]
def metrics(name):
    p = os.path.join(runs, name, "metrics.jsonl"); loss, tps = {}, []
    if os.path.exists(p):
        for line in open(p):
            j = json.loads(line)
            if "train_loss" in j: loss[j["step"]] = j["train_loss"]
            if "tokens_per_s" in j and j["step"] > 5: tps.append(j["tokens_per_s"])  # after warm-up steps
    return loss, (sum(tps) / len(tps) if tps else None)
l1, t1 = metrics("s650_1"); l2, t2 = metrics("tp2_650")
common = [s for s in l1 if s in l2]
res = {"preset": "650M", "precision": "bf16-mixed", "micro_batch_tokens": 16384,
       "max_abs_dloss_tp2_vs_tp1": max(abs(l1[s] - l2[s]) for s in common) if common else None,
       "steps_compared": len(common),
       "real_tokens_per_s_tp1_1gpu": t1, "real_tokens_per_s_tp2_2gpus": t2,
       "tp2_speedup_over_1gpu": (t2 / t1) if (t1 and t2) else None,
       "table": [{"step": s, "tp1": l1.get(s), "tp2": l2.get(s)} for s in sorted(l1)]}
json.dump(res, open(out, "w"), indent=1)
print({k: v for k, v in res.items() if k != "table"})
EOF
else
  say "(d) tensor parallel skipped: it needs 2 GPUs"
fi

say "done"
ls -la "$OUT" | tee -a "$LOG"

#!/usr/bin/env bash
# The 2-GPU parts of issue #8 that bench/multi_gpu_run.sh did not reach (run after a script that built
# ./build/esm2 and prepared /tmp/ov/corpus, e.g. bench/overlap_device_run.sh):
#  (a) 650M, bf16-mixed, 16,384 tokens per micro-batch, 100 steps, the same global batch three ways:
#      1 GPU × accumulation 2, `esm2 train --gpus 2`, `mpirun -np 2 esm2 train` → $OUT/dp650_equivalence.json;
#  (b) 3B with tensor parallelism over 2 GPUs (DP 1), 12 steps → $OUT/tp2_3B.json.
set -u
OUT=${OUT:-/tmp/out}
LOG="$OUT/extras.log"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
E=$PWD/build/esm2
PY=$(command -v python3)
RUNS=/tmp/ov/extras
COMMON="--train-data /tmp/ov/corpus --backend cuda --precision bf16-mixed --micro-batch-tokens 16384
  --max-seq-length 1024 --seed 7 --log-every-n-steps 1 --no-report --no-tensorboard --result-dir $RUNS"
A="--preset 650M --num-steps 100 --warmup-steps 10 --lr 1e-4 --val-check-interval 1000 --disable-checkpointing $COMMON"
say "(a) 650M 1 GPU × accumulation 2"
timeout 120 $E train $A --accumulate-grad-batches 2 --experiment-name acc > /tmp/ov/x_acc.log 2>&1; say "  exit $?"
say "(a) 650M --gpus 2"
timeout 90 $E train $A --gpus 2 --experiment-name gpus > /tmp/ov/x_gpus.log 2>&1; say "  exit $?"
say "(a) 650M mpirun -np 2"
timeout 90 mpirun --allow-run-as-root --oversubscribe --mca btl self,vader --mca btl_vader_single_copy_mechanism none \
  -np 2 $E train $A --experiment-name mpi > /tmp/ov/x_mpi.log 2>&1; say "  exit $?"
grep -h -E "parallel layout|gradient reduce|error" /tmp/ov/x_gpus.log /tmp/ov/x_mpi.log | head -6 | tee -a "$LOG"
say "(b) 3B TP=2"
B="--preset 3B --num-steps 12 --warmup-steps 2 --lr 1e-4 --val-check-interval 1000 --disable-checkpointing $COMMON"
timeout 200 $E train $B --gpus 2 --tensor-model-parallel-size 2 --experiment-name tp2_3b > /tmp/ov/x_tp3b.log 2>&1; say "  exit $?"
grep -E "parallel layout|memory|error|step +1[0-2]/" /tmp/ov/x_tp3b.log | head -8 | tee -a "$LOG"
$PY - "$RUNS" "$OUT" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys, os
runs, out = sys.argv[1], sys.argv[2]
def metrics(name, skip=5):
    p = os.path.join(runs, name, "metrics.jsonl"); loss, tps = {}, []
    if os.path.exists(p):
        for line in open(p):
            j = json.loads(line)
            if "train_loss" in j: loss[j["step"]] = j["train_loss"]
            if "tokens_per_s" in j and j["step"] > skip: tps.append(j["tokens_per_s"])
    return loss, (sum(tps) / len(tps) if tps else None)
acc, ta = metrics("acc"); gp, tg = metrics("gpus"); mp, tm = metrics("mpi")
def maxd(a, b):
    c = [s for s in a if s in b]
    return (max(abs(a[s] - b[s]) for s in c) if c else None), len(c)
last20 = lambda d: sum(d[s] for s in sorted(d)[-20:]) / 20 if len(d) >= 20 else None
res = {"preset": "650M", "precision": "bf16-mixed", "global_batch": "16384 tokens x 2", "steps": 100,
       "max_abs_dloss_gpus_vs_accumulation": maxd(gp, acc)[0], "max_abs_dloss_mpirun_vs_accumulation": maxd(mp, acc)[0],
       "max_abs_dloss_gpus_vs_mpirun": maxd(gp, mp)[0], "steps_compared": maxd(gp, acc)[1],
       "mean_loss_last20": {"accumulation": last20(acc), "gpus": last20(gp), "mpirun": last20(mp)},
       "real_tokens_per_s": {"accumulation_1gpu": ta, "gpus2": tg, "mpirun2": tm},
       "table": [{"step": s, "accumulation": acc.get(s), "gpus": gp.get(s), "mpirun": mp.get(s)} for s in sorted(acc)]}
json.dump(res, open(os.path.join(out, "dp650_equivalence.json"), "w"), indent=1)
print({k: v for k, v in res.items() if k != "table"})
l3, t3 = metrics("tp2_3b", skip=3)
r3 = {"preset": "3B", "tensor_parallel": 2, "gpus": 2, "micro_batch_tokens": 16384, "steps": len(l3),
      "losses": l3, "real_tokens_per_s_after_step3": t3}
json.dump(r3, open(os.path.join(out, "tp2_3B.json"), "w"), indent=1)
print(r3)
EOF
say "extras done"

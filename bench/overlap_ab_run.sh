#!/usr/bin/env bash
# A/B of the ZeRO-1 communication options on 2+ GPUs (the recorded run, summary.json, also had the
# parameter-gather overlap variants, since removed: overlap/param-gather-experiments/), 650M, bf16-mixed, 16,384 tokens per GPU per
# step, 60 steps each (the first 5 not timed), run twice in interleaved order to expose machine noise.
# Metric: the trainer's real tokens/s (tokens of the timed steps / their wall time) → $OUT/overlap_ab.json.
# Assumes ./build/esm2 and /tmp/ov/corpus (bench/overlap_device_run.sh makes both).
set -u
OUT=${OUT:-/tmp/out}
LOG="$OUT/ab.log"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
E=$PWD/build/esm2
N=$(nvidia-smi -L | grep -c '^GPU')
RUNS=/tmp/ov/ab
B="--preset 650M --num-steps 60 --warmup-steps 5 --lr 1e-4 --val-check-interval 1000 --disable-checkpointing
  --train-data /tmp/ov/corpus --backend cuda --precision bf16-mixed --micro-batch-tokens 16384 --max-seq-length 1024
  --seed 7 --log-every-n-steps 1 --no-report --no-tensorboard --result-dir $RUNS"
declare -A V=(
  [plain]="--no-overlap-grad-reduce --grad-reduce-dtype fp32"
  [grad]="--grad-reduce-dtype fp32"
  [grad_bf16]="--grad-reduce-dtype bf16"
)
run() {  # name gpus-args extra
  say "$1"
  timeout 120 $E train $B ${2:-} ${3:-} --experiment-name $1 > /tmp/ov/ab_$1.log 2>&1
  say "  exit $? $(grep -o 'real tokens/s [0-9]*' /tmp/ov/ab_$1.log | tail -1)"
}
run one ""
for rep in 1 2; do
  for v in plain grad grad_bf16; do run ${v}_$rep "--gpus $N" "${V[$v]}"; done
done
run one_2 ""
python3 - "$RUNS" "$N" "$OUT/overlap_ab.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, re, sys, statistics
runs, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def real(name):
    m = re.findall(r"real tokens/s (\d+)", open(f"/tmp/ov/ab_{name}.log", errors="replace").read())
    return float(m[-1]) if m else None
def median(name):
    p = os.path.join(runs, name, "metrics.jsonl"); v = []
    if os.path.exists(p):
        v = [json.loads(l)["tokens_per_s"] for l in open(p) if '"tokens_per_s"' in l and json.loads(l)["step"] > 5]
    return statistics.median(v) if v else None
one = [x for x in (real("one"), real("one_2")) if x]
base = sum(one) / len(one) if one else None
res = {"gpus": n, "preset": "650M", "micro_batch_tokens_per_gpu": 16384, "steps": 60, "real_tokens_per_s_1gpu": one}
for v in ("plain", "grad", "grad_bf16"):
    r = [real(f"{v}_{k}") for k in (1, 2)]
    res[v] = {"real_tokens_per_s": r, "median_step_tokens_per_s": [median(f"{v}_{k}") for k in (1, 2)],
              "weak_scaling_efficiency": [x / n / base if (x and base) else None for x in r]}
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res, indent=1))
EOF

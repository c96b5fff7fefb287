#!/usr/bin/env bash
# One device call on 2 GPUs for pipeline parallelism: build, then the same 20-step run of a 5-layer
# model (uneven: 3 + 2 on two stages) at PP=1 on one GPU and PP=2 on two (`--gpus 2`, NCCL p2p), fp32
# (comparable to fp32 round-off) and bf16-mixed; then 650M throughput at PP=1 vs PP=2 (33 layers: 17 + 16).
# Writes $OUT/run.log, $OUT/pp_compare.json (loss per step of each run) and the runs' metrics.
# Usage (repository root on the device; .carry/deps, or the directory given, holds the sqlite/snappy
# .debs as for bench/gpu_profile_run.sh): bench/pp_device_run.sh [DEPS_DIR]
set -u
DEPS=${1:-${DEPS:-.carry/deps}}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/deps
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/run.log"; }
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
# NVLink multicast stays off on these shared machines (KINDS.md); the workers inherit it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
EXTRA="-DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$OUT/run.log" 2>&1
log "build"
{ cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_CUDA=ON -DESM2_BUILD_BENCH=OFF $EXTRA &&
  ninja -C build -j$(nproc) esm2; } > /tmp/build.log 2>&1 || { tail -60 /tmp/build.log | tee "$OUT/build.log"; log "build FAILED"; exit 1; }
E=./build/esm2
$E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv \
  --output /tmp/corpus --force > /dev/null 2>&1 || log "prepare train FAILED"
$E prepare --fasta data/swissprot-sample/valid.fasta.gz --output /tmp/corpus_valid --force > /dev/null 2>&1 || log "prepare valid FAILED"
SMALL="--train-data /tmp/corpus --valid-data /tmp/corpus_valid --backend cuda --preset 8M --num-layers 5
  --micro-batch-tokens 8192 --accumulate-grad-batches 4 --num-steps 20 --warmup-steps 5 --val-check-interval 20
  --limit-val-batches 2 --log-every-n-steps 1 --no-report --no-tensorboard --result-dir /tmp/runs --seed 3"
run() {  # name, timeout, command...
  local name=$1 t=$2; shift 2
  log "run $name: $*"
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; log "run $name exit $?"
  tail -3 "$OUT/$name.log" >> "$OUT/run.log"
}
for prec in 32 bf16-mixed; do
  run pp1_$prec 120 $E train $SMALL --precision $prec --experiment-name pp1_$prec
  run pp2_$prec 120 $E train $SMALL --precision $prec --gpus 2 --pipeline-model-parallel-size 2 --experiment-name pp2_$prec
done
BIG="--train-data /tmp/corpus --backend cuda --precision bf16-mixed --preset 650M --micro-batch-tokens 16384
  --accumulate-grad-batches 8 --num-steps 6 --warmup-steps 1 --val-check-interval 1000 --log-every-n-steps 1
  --disable-checkpointing --no-report --no-tensorboard --result-dir /tmp/runs"
run big_pp1 200 $E train $BIG --experiment-name big_pp1
run big_pp2 200 $E train $BIG --gpus 2 --pipeline-model-parallel-size 2 --experiment-name big_pp2
python3 - "$OUT" <<'PY' || log "compare FAILED"
import json, sys, os
out = sys.argv[1]
res = {}
for name in ["pp1_32", "pp2_32", "pp1_bf16-mixed", "pp2_bf16-mixed", "big_pp1", "big_pp2"]:
    p = f"/tmp/runs/{name}/metrics.jsonl"
    if not os.path.exists(p):
        res[name] = None
        continue
    rows = [json.loads(l) for l in open(p) if l.strip()]
    res[name] = {"train_loss": {r["step"]: r["train_loss"] for r in rows if "train_loss" in r},
                 "val_loss": {r["step"]: r["val_loss"] for r in rows if "val_loss" in r},
                 "tokens_per_s": [r.get("tokens_per_s") for r in rows if "train_loss" in r]}
for prec in ["32", "bf16-mixed"]:
    a, b = res.get(f"pp1_{prec}"), res.get(f"pp2_{prec}")
    if a and b:
        d = [abs(a["train_loss"][s] - b["train_loss"][s]) / abs(a["train_loss"][s]) for s in a["train_loss"] if s in b["train_loss"]]
        res[f"max_rel_loss_diff_{prec}"] = max(d) if d else None
json.dump(res, open(f"{out}/pp_compare.json", "w"), indent=1)
print({k: v for k, v in res.items() if k.startswith("max_rel")})
PY
log "done"

#!/usr/bin/env bash
# Issue 19: why is an fp8-mixed run resumed at step 3 not bitwise the uninterrupted one
# (Fp8Train.ResumeIsBitwiseExact)? Runs the test's tiny model on the bundled sample (seconds each) and
# compares checkpoints byte for byte:
#   full vs full2      two identical uninterrupted runs (run-to-run determinism of the FP8 path)
#   full vs split      the test's comparison (3 steps, then 3 more with --resume-if-exists), at step 3 and 6
#   full vs noval      the same 6 steps without the validation at step 3
#   bf16 full vs split the same in bf16-mixed (the control)
#   pfull vs psplit    bf16-mixed with ESM2_GEMM_PICK=1 (the timed GEMM algorithm pick on)
# Usage (repository root on the device, esm2 built): E=path/to/esm2 bench/fp8_resume_probe.sh > probe.txt
set -uo pipefail
E=${E:-build/esm2}
BACKEND=${BACKEND:-cuda}
W=${W:-/tmp/fp8probe}
rm -rf "$W"; mkdir -p "$W"
$E prepare --fasta data/swissprot-sample/valid.fasta.gz --output "$W/corpus" --force > /dev/null 2>&1 ||
  { echo "prepare failed"; exit 1; }
common="--preset demo --num-layers 2 --hidden-size 32 --num-attention-heads 2 --ffn-hidden-size 64 --max-seq-length 96
  --micro-batch-tokens 1024 --backend $BACKEND --accumulate-grad-batches 2 --lr 1e-3 --warmup-steps 2 --limit-val-batches 2
  --log-every-n-steps 1 --no-report --train-data $W/corpus --valid-data $W/corpus --num-steps 6 --result-dir $W/runs"
run() {  # name precision extra...
  local n=$1 p=$2; shift 2
  $E train $common --precision "$p" --experiment-name "$n" "$@" > "$W/$n.log" 2>&1 || echo "$n: exit $? $(tail -2 "$W/$n.log")"
}
run full fp8-mixed --val-check-interval 3
run full2 fp8-mixed --val-check-interval 3
run split fp8-mixed --val-check-interval 3 --early-stop-on-step 3
run split fp8-mixed --val-check-interval 3 --resume-if-exists
run noval fp8-mixed --val-check-interval 6
run bfull bf16-mixed --val-check-interval 3
run bsplit bf16-mixed --val-check-interval 3 --early-stop-on-step 3
run bsplit bf16-mixed --val-check-interval 3 --resume-if-exists
# the same with the timed GEMM algorithm pick on (ESM2_GEMM_PICK=1, off by default since 2026-12-07)
export ESM2_GEMM_PICK=1
run pfull bf16-mixed --val-check-interval 3
run psplit bf16-mixed --val-check-interval 3 --early-stop-on-step 3
run psplit bf16-mixed --val-check-interval 3 --resume-if-exists
unset ESM2_GEMM_PICK
same() {  # a b step
  local r=""
  for f in model.safetensors trainer_state/optimizer.safetensors; do
    local x="$W/runs/$1/checkpoints/step-0000000$3/$f" y="$W/runs/$2/checkpoints/step-0000000$3/$f"
    if [ ! -f "$x" ] || [ ! -f "$y" ]; then r="$r missing"
    elif cmp -s "$x" "$y"; then r="$r same"
    else r="$r DIFFER"; fi
  done
  echo "$1 vs $2 at step $3: model/optimizer$r"
}
same full full2 3; same full full2 6; same full split 3; same full split 6; same full noval 6
same bfull bsplit 3; same bfull bsplit 6; same pfull psplit 6
# the per-step train losses, to see where two runs part
for n in full full2 split noval bfull bsplit pfull psplit; do
  echo "$n: $(python3 -c "
import json,sys
print(' '.join(f\"{j['step']}:{j['train_loss']:.9f}\" for j in map(json.loads, open(sys.argv[1])) if 'train_loss' in j))" "$W/runs/$n/metrics.jsonl")"
done
grep -h "warning\|note:" "$W"/*.log | sort | uniq -c | head

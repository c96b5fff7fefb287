#!/usr/bin/env bash
# Long-run stability: trains the demo preset on CPU for 5,000 steps (small packed micro-batches so it
# finishes in minutes) and samples the trainer's resident memory (VmRSS from /proc/<pid>/status) each
# time the step counter passes a multiple of 100. Writes bench/results/long_run_rss.csv
# (step,elapsed_ms,vmrss_kib) and bench/results/long_run_rss.json (summary); exits non-zero if the
# resident memory grew by more than 5% (and 8 MiB) between the first sample after the first
# validation + checkpoint (one-time allocations: validation batches, checkpoint buffers) and the end.
#   bench/long_run.sh [build dir (default build)] [steps (default 5000)]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
steps=${2:-5000}
val_every=$(( steps >= 2000 ? 1000 : steps / 2 ))
esm2="$build/esm2"
[ -x "$esm2" ] || { echo "long_run.sh: $esm2 not built (ninja -C $build esm2)" >&2; exit 1; }
work=$(mktemp -d /tmp/esm2-long-run.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$esm2" prepare --fasta data/swissprot-sample/valid.fasta.gz --output "$work/corpus" >/dev/null
out=bench/results
mkdir -p "$out"
csv="$out/long_run_rss.csv"
echo "step,elapsed_ms,vmrss_kib" >"$csv"
export OMP_WAIT_POLICY=PASSIVE
start=$(date +%s%N)
"$esm2" train --preset demo --max-seq-length 128 --micro-batch-tokens 256 --accumulate-grad-batches 1 \
  --num-steps "$steps" --warmup-steps 100 --lr 4e-4 --val-check-interval "$val_every" --limit-val-batches 4 \
  --log-every-n-steps 100 --threads 1 --no-report --train-data "$work/corpus" --valid-data "$work/corpus" \
  --result-dir "$work/runs" --experiment-name long >"$work/train.log" 2>&1 &
pid=$!
next=100
while kill -0 "$pid" 2>/dev/null; do
  if [ -s "$work/runs/long/metrics.jsonl" ]; then
    step=$(grep '"train_loss"' "$work/runs/long/metrics.jsonl" | tail -n 1 | sed 's/.*"step":\([0-9]*\).*/\1/')
    if [ -n "$step" ] && [ "$step" -ge "$next" ]; then
      rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
      [ -n "$rss" ] && echo "$step,$(( ($(date +%s%N) - start) / 1000000 )),$rss" >>"$csv"
      next=$(( (step / 100 + 1) * 100 ))
    fi
  fi
  sleep 0.1
done
wait "$pid" || { cat "$work/train.log" >&2; exit 1; }
python3 - "$csv" "$out/long_run_rss.json" "$steps" "$val_every" <<'PY'
import csv, json, sys, platform, os
rows = [(int(r["step"]), float(r["elapsed_ms"]) / 1000, int(r["vmrss_kib"])) for r in csv.DictReader(open(sys.argv[1]))]
steps = int(sys.argv[3])
warm = int(sys.argv[4]) + 100  # first sample after the first validation + checkpoint
late = [r for r in rows if r[0] >= warm]
base, end = late[0][2], rows[-1][2]
peak = max(r[2] for r in late)
summary = {
    "steps": steps, "samples": len(rows), "wall_s": rows[-1][1],
    "rss_kib_first_sample": rows[0][2], "rss_kib_before_first_checkpoint": max(r[2] for r in rows if r[0] < warm),
    "rss_kib_at_step_%d" % late[0][0]: base,
    "rss_kib_last": end, "rss_kib_max_after_warmup": peak, "rss_kib_min_after_warmup": min(r[2] for r in late),
    "growth_kib_after_warmup": end - base,
    "growth_pct_after_warmup": round(100.0 * (end - base) / base, 2),
    "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
    "config": "demo preset (4 layers, hidden 128), max-seq-length 128, micro-batch-tokens 256, 1 thread, CPU fp32",
}
json.dump(summary, open(sys.argv[2], "w"), indent=1)
print(json.dumps(summary, indent=1))
flat = (end - base) <= max(0.05 * base, 8192)
sys.exit(0 if flat else 1)
PY

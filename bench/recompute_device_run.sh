#!/usr/bin/env bash
# One device call for activation recomputation (docs/cuda.md): builds `esm2`, then
#   - 650M at 16384 tokens with --recompute none / selective / full (the time each mode costs),
#   - 3B on the one GPU with the planner's choices: selective at 16384 tokens, full at 32768,
#   - the CUDA out-of-memory message: `esm2 bench` 3B none at 32768 tokens (planned 119 GiB), and
#     `esm2 train` 150M resumed with a micro-batch that cannot fit: exit 1, the checkpoint unchanged,
#     and a resume with a fitting micro-batch continuing from it.
# Logs and JSON under $OUT; a failing step is logged and the next one runs. About 4-5 minutes.
# Usage (repository root on the device): bench/recompute_device_run.sh [DEPS_DIR]
#   DEPS_DIR (default .carry/deps): the libsqlite3-dev/libsnappy-dev .debs the GPU machine lacks (docs/cuda.md).
set -uo pipefail
DEPS=${1:-${DEPS:-.carry/deps}}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/deps
LOG="$OUT/run.log"
step() { echo "== $(date -u +%T) $*" | tee -a "$LOG"; }
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv >> "$LOG" 2>&1

step build
{
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_BUILD_BENCH=OFF \
    -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include \
    -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so &&
    time ninja -C build -j16 esm2
} > /tmp/build.log 2>&1 || { tail -60 /tmp/build.log | tee "$OUT/build.log"; exit 1; }
tail -3 /tmp/build.log >> "$LOG"
E=./build/esm2
$E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv \
  --output /tmp/corpus --force > /dev/null 2>&1 || step "prepare FAILED"

bench() {  # preset tokens mode steps warmup
  step "bench $1 $2 --recompute $3"
  timeout 150 $E bench --backend cuda --preset "$1" --micro-batch-tokens "$2" --recompute "$3" --data /tmp/corpus \
    --steps "$4" --warmup "$5" --peak-tflops 989 --json "$OUT/bench_$1_$2_$3.json" >> "$LOG" 2>&1 ||
    step "bench $1 $2 $3 exited $?"
}
for mode in none selective full; do bench 650M 16384 $mode 5 2; done
bench 3B 16384 selective 3 1
bench 3B 32768 full 3 1

step "OOM: bench 3B 32768 --recompute none"
timeout 120 $E bench --backend cuda --preset 3B --micro-batch-tokens 32768 --recompute none --data /tmp/corpus \
  --steps 1 --warmup 0 > "$OUT/oom_bench.log" 2>&1
echo "exit code $?" >> "$OUT/oom_bench.log"
tail -2 "$OUT/oom_bench.log" | tee -a "$LOG"

step "OOM: train 150M, checkpoint at step 2, resume with 262144 tokens --recompute none"
T="$E train --train-data /tmp/corpus --preset 150M --backend cuda --warmup-steps 1 --val-check-interval 2
  --log-every-n-steps 1 --no-report --no-tensorboard --result-dir /tmp/runs --experiment-name oom"
timeout 120 $T --num-steps 2 --micro-batch-tokens 8192 > "$OUT/oom_train.log" 2>&1
echo "first run exit code $?" >> "$OUT/oom_train.log"
CK=/tmp/runs/oom/checkpoints/step-00000002
(cd "$CK" && find . -type f | sort | xargs sha256sum) > /tmp/ck_before.txt 2>&1
timeout 120 $T --num-steps 4 --micro-batch-tokens 262144 --recompute none --resume-if-exists >> "$OUT/oom_train.log" 2>&1
echo "oversized resume exit code $?" >> "$OUT/oom_train.log"
(cd "$CK" && find . -type f | sort | xargs sha256sum) > /tmp/ck_after.txt 2>&1
if cmp -s /tmp/ck_before.txt /tmp/ck_after.txt; then echo "checkpoint step 2 unchanged" >> "$OUT/oom_train.log"
else echo "checkpoint step 2 CHANGED" >> "$OUT/oom_train.log"; fi
ls /tmp/runs/oom/checkpoints >> "$OUT/oom_train.log" 2>&1
timeout 120 $T --num-steps 4 --micro-batch-tokens 8192 --resume-if-exists >> "$OUT/oom_train.log" 2>&1
echo "fitting resume exit code $?" >> "$OUT/oom_train.log"
grep -E "memory plan|out of memory|exit code|checkpoint step|resumed|^step " "$OUT/oom_train.log" | tee -a "$LOG"

step "summary"
/opt/torch/.venv/bin/python3 - "$OUT" <<'PY' 2>&1 | tee "$OUT/summary.txt"
import json, glob, os, sys
rows = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "bench_*.json"))):
    j = json.load(open(f))
    rows.append(j)
    print(f"{j['preset']:>5} {j['micro_batch_tokens']:>6} {j['recompute']:>9}: {j['real_tokens_per_s']:>9.0f} tok/s "
          f"{j['step_seconds']:.3f} s/step MFU {100*j.get('mfu',0):.1f}% backend peak {j.get('peak_backend_held_mib',0):.0f} MiB "
          f"(device in use {j.get('peak_device_memory_mib',0):.0f}) plan {j['plan_total_mib']:.0f} MiB "
          f"activations {j['activation_mib']:.0f} MiB")
base = {r['recompute']: r for r in rows if r['preset'] == '650M'}
if 'none' in base:
    for m in ('selective', 'full'):
        if m in base:
            print(f"650M {m}: step time x{base[m]['step_seconds'] / base['none']['step_seconds']:.3f} vs none")
PY
ls -la "$OUT" >> "$LOG"

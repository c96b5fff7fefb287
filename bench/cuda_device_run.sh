#!/usr/bin/env bash
# One device call for the CUDA backend: build (with carried SQLite/snappy dev packages, which the GPU
# machine lacks), the cuda tests, the attention microbenchmark, `esm2 bench` 8M and 650M, and a 200-step
# 8M training run on GPU beside a CPU run of the same config. Logs and JSON under $OUT (<= 8 files).
# Usage (from the repository root on the device): bench/cuda_device_run.sh DEPS_DIR
set -uo pipefail
DEPS=${1:?deps dir with the .deb files}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/deps
for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/run.log" 2>&1
{
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include \
    -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so &&
    time ninja -C build -j16 esm2 cuda_backend_test cuda_attention_bench
} > /tmp/build.log 2>&1 || { tail -60 /tmp/build.log | tee "$OUT/build.log"; exit 1; }
echo "build ok" | tee -a "$OUT/run.log"
E=./build/esm2
$E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv \
  --output /tmp/corpus --force > /dev/null 2>&1
$E prepare --fasta data/swissprot-sample/valid.fasta.gz --output /tmp/corpus_valid --force > /dev/null 2>&1
# The CPU reference run (CPU_STEPS > 0) overlaps the GPU work (12 of 16 cores).
CPU_PID=
[ "${CPU_STEPS:-60}" -gt 0 ] && (timeout ${CPU_TIMEOUT:-300} $E train --train-data /tmp/corpus --valid-data /tmp/corpus_valid --preset 8M \
  --backend cpu --precision 32 --threads 12 --num-steps 200 --early-stop-on-step ${CPU_STEPS:-60} \
  --warmup-steps 20 --micro-batch-tokens 16384 --val-check-interval 100 --limit-val-batches 2 \
  --log-every-n-steps 10 --result-dir /tmp/runs --experiment-name cpu8M --seed 1 > /tmp/train_cpu.log 2>&1) &
[ "${CPU_STEPS:-60}" -gt 0 ] && CPU_PID=$!
timeout 200 ./build/cuda_backend_test 2>&1 | tee "$OUT/cuda_test.log" |
  grep -E "^\[  (FAILED|PASSED|  OK) |Failure|error|Expected|Which|actual" | head -80
timeout 120 ./build/cuda_attention_bench --benchmark_min_time=0.5s 2>&1 | tee -a "$OUT/run.log" | tail -8
for spec in "8M 65536" "8M 16384" "650M 32768"; do
  set -- $spec
  timeout 150 $E bench --backend cuda --preset $1 --micro-batch-tokens $2 --data /tmp/corpus \
    --steps ${BENCH_STEPS:-5} --warmup 2 --peak-tflops 989 --json "$OUT/bench_${1}_$2.json" 2>&1 |
    tee -a "$OUT/run.log"
done
# Kernel time breakdown of a few 8M and 650M steps (nsys), when asked for.
if [ "${PROFILE:-0}" = 1 ] && command -v nsys > /dev/null; then
  for spec in "8M 65536" "650M 16384"; do
    set -- $spec
    timeout 120 nsys profile -o /tmp/prof_$1 --force-overwrite true --trace cuda $E bench --backend cuda --preset $1 \
      --micro-batch-tokens $2 --data /tmp/corpus --steps 3 --warmup 1 > /dev/null 2>&1
    nsys stats --report cuda_gpu_kern_sum --format csv /tmp/prof_$1.nsys-rep 2>/dev/null |
      head -40 > "$OUT/profile_$1.csv"
  done
fi
timeout 120 $E train --train-data /tmp/corpus --valid-data /tmp/corpus_valid --preset 8M --backend cuda \
  --num-steps 200 --warmup-steps 20 --micro-batch-tokens 16384 --val-check-interval 100 --limit-val-batches 2 \
  --log-every-n-steps 10 --result-dir /tmp/runs --experiment-name gpu8M --seed 1 > /tmp/train_gpu.log 2>&1
tail -5 /tmp/train_gpu.log | tee -a "$OUT/run.log"
if [ -n "$CPU_PID" ]; then
  wait $CPU_PID
  tail -3 /tmp/train_cpu.log | tee -a "$OUT/run.log"
fi
cp /tmp/train_gpu.log /tmp/train_cpu.log /tmp/runs/ 2>/dev/null
tar -czf "$OUT/train_runs.tgz" -C /tmp/runs --exclude='*.safetensors' --exclude='*.bin' . 2>/dev/null
ls -la "$OUT"

#!/usr/bin/env bash
# A/B on 2 GPUs: --overlap-param-gather (gathers during the gap between steps, landing before the next
# forward) vs the default end-of-step gather; 8M exactness vs no overlap; 650M 60 steps x 2 interleaved.
set -u
mkdir -p /tmp/deps /tmp/ov; for f in .carry/deps/*.deb; do dpkg -x "$f" /tmp/deps; done
export PATH=/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
(cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_CUDA=ON -DESM2_BUILD_BENCH=OFF -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so && ninja -C build -j32 esm2) > /tmp/ov/build.log 2>&1 || tail -30 /tmp/ov/build.log
E=./build/esm2
$E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv --output /tmp/ov/corpus --force > /dev/null 2>&1
C="--train-data /tmp/ov/corpus --backend cuda --precision bf16-mixed --micro-batch-tokens 16384 --max-seq-length 1024 --seed 7 --log-every-n-steps 1 --no-report --no-tensorboard --result-dir /tmp/ov/r --gpus 2"
A8="--preset 8M --num-steps 30 --warmup-steps 5 --lr 4e-4 --val-check-interval 30 --ddp-bucket-size 500000 $C"
timeout 100 $E train $A8 --no-overlap-grad-reduce --experiment-name e_plain > /tmp/ov/e1.log 2>&1; echo "e_plain $?"
timeout 100 $E train $A8 --overlap-param-gather --experiment-name e_pg > /tmp/ov/e2.log 2>&1; echo "e_pg $?"
grep -h "parameter all-gather" /tmp/ov/e2.log
for f in model.safetensors trainer_state/optimizer.safetensors; do cmp -s /tmp/ov/r/e_plain/checkpoints/step-00000030/$f /tmp/ov/r/e_pg/checkpoints/step-00000030/$f && echo "$f bitwise equal" || echo "$f DIFFERS"; done
B="--preset 650M --num-steps 60 --warmup-steps 5 --lr 1e-4 --val-check-interval 1000 --disable-checkpointing $C"
for rep in 1 2; do  # d: default (gradient overlap, end-of-step gather); g: per-layer gather overlap
  timeout 120 $E train $B --experiment-name d_$rep > /tmp/ov/d_$rep.log 2>&1; echo "d_$rep $?"
  timeout 120 $E train $B --overlap-param-gather --experiment-name g_$rep > /tmp/ov/g_$rep.log 2>&1; echo "g_$rep $?"
done
python3 - <<'EOF' | tee $OUT/ab2.txt
import re, statistics
for n in ("d_1", "g_1", "d_2", "g_2"):
    v = [float(m.group(2)) for l in open(f"/tmp/ov/{n}.log") for m in [re.match(r"step +(\d+)/60 .*\|\s+(\d+) tok/s", l)] if m and int(m.group(1)) > 5]
    print(n, len(v), statistics.median(v) if v else None)
EOF
cp /tmp/ov/e2.log /tmp/ov/g_1.log /tmp/ov/d_1.log $OUT/

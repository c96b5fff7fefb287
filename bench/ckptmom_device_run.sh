#!/usr/bin/env bash
# ZeRO-1 checkpoints on 2 GPUs after the piecewise moments (docs/readme/ckptmom.md): the NCCL path of
# ZeroAdamW::read_moments (request broadcast, point-to-point parts through device staging) and
# load_moments. Checks: exact resume at DP=2 (uninterrupted vs stopped at step 3 and resumed: step-6 files bitwise); the DP=2
# checkpoint resumed on one GPU; the NCCL ZeRO-1 unit test; and the peak RSS / wall time of a 650M DP=2
# run that saves once and of its resume (CKPT_BIG=0 skips them). Logs and results under $OUT.
set -u
mkdir -p /tmp/deps /tmp/ck "$OUT"; for f in .carry/deps/*.deb; do [ -e "$f" ] && dpkg -x "$f" /tmp/deps; done
export PATH=/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
echo "== build"; (cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_CUDA=ON -DESM2_BUILD_BENCH=OFF -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so && ninja -C build -j16 esm2 nccl_communicator_test) > $OUT/build.log 2>&1 || tail -30 $OUT/build.log
E=./build/esm2
echo "== nccl_communicator_test (ZeRO-1 moments read piecewise)"
timeout 120 ./build/nccl_communicator_test > $OUT/nccl_test.log 2>&1; echo "nccl_communicator_test rc $?" | tee -a $OUT/results.txt
echo "== prepare"; $E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv --output /tmp/ck/corpus --force > $OUT/prepare.log 2>&1; echo "prepare rc $?"
C="--train-data /tmp/ck/corpus --backend cuda --precision bf16-mixed --micro-batch-tokens 8192 --max-seq-length 512 --seed 7 --log-every-n-steps 1 --no-report --no-tensorboard --result-dir /tmp/ck/r"
# Small buckets: the 8M model spans several, so a piece of the save crosses owners and buckets.
S="--preset 8M --num-steps 6 --warmup-steps 2 --lr 4e-4 --val-check-interval 3 --limit-val-batches 2 --ddp-bucket-size 1000003 $C"
echo "== ZeRO-1 at DP=2, uninterrupted"
timeout 150 $E train $S --gpus 2 --experiment-name zero_full > $OUT/zero_full.log 2>&1; echo "zero_full rc $?"
grep -m1 "optimizer" $OUT/zero_full.log | tee -a $OUT/results.txt
echo "== exact resume at DP=2 (ZeRO-1)"
timeout 150 $E train $S --gpus 2 --experiment-name zero_split --early-stop-on-step 3 > $OUT/zero_part1.log 2>&1; echo "zero_part1 rc $?"
timeout 150 $E train $S --gpus 2 --experiment-name zero_split --resume-if-exists > $OUT/zero_part2.log 2>&1; echo "zero_part2 rc $?"
for k in 3 6; do for f in model.safetensors trainer_state/optimizer.safetensors; do
  cmp -s /tmp/ck/r/zero_full/checkpoints/step-0000000$k/$f /tmp/ck/r/zero_split/checkpoints/step-0000000$k/$f && echo "zero resume step $k $f bitwise equal" || echo "zero resume step $k $f DIFFERS"
done; done | tee -a $OUT/results.txt
echo "== DP=2 checkpoint resumed on one GPU"
timeout 150 $E train $S --experiment-name dp1_from_dp2 --restore-from-checkpoint-path /tmp/ck/r/zero_full/checkpoints/step-00000003 > $OUT/dp1_from_dp2.log 2>&1
echo "dp1_from_dp2 rc $?" | tee -a $OUT/results.txt
[ "${CKPT_BIG:-1}" = 0 ] && { echo "650M part skipped (CKPT_BIG=0)"; exit 0; }
echo "== 650M DP=2 ZeRO-1, one save: peak RSS (largest process) and wall time"
B="--preset 650M --num-steps 4 --warmup-steps 2 --lr 1e-4 --val-check-interval 4 --limit-val-batches 1 $C"
/usr/bin/time -v timeout 300 $E train $B --gpus 2 --experiment-name big > $OUT/big.log 2> $OUT/big.time; echo "big rc $?"
grep -E "Maximum resident|Elapsed" $OUT/big.time | tee -a $OUT/results.txt
grep -iE "checkpoint" $OUT/big.log | tail -3 >> $OUT/results.txt
echo "== 650M resume of that checkpoint at DP=2, one more step"
/usr/bin/time -v timeout 300 $E train ${B/--num-steps 4/--num-steps 5} --gpus 2 --experiment-name big2 --restore-from-checkpoint-path /tmp/ck/r/big/checkpoints/step-00000004 > $OUT/big2.log 2> $OUT/big2.time; echo "big2 rc $?"
grep -E "Maximum resident|Elapsed" $OUT/big2.time | tee -a $OUT/results.txt

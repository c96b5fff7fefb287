#!/usr/bin/env bash
# Checkpoints on 2 GPUs after the streaming save / sliced load (docs/readme/ckptmem.md): the NCCL path of
# FullStateGather (point-to-point pieces through device staging). Exact resume at TP=2 and PP=2
# (uninterrupted vs stopped at step 3 and resumed: step-6 files bitwise), a TP=2 checkpoint resumed on
# one GPU, and the peak RSS / wall time of a 650M TP=2 run that saves once (CKPT_BIG=0 skips it). Logs
# and results under $OUT.
set -u
mkdir -p /tmp/deps /tmp/ck "$OUT"; for f in .carry/deps/*.deb; do [ -e "$f" ] && dpkg -x "$f" /tmp/deps; done
export PATH=/usr/local/cuda/bin:$PATH LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-} NCCL_NVLS_ENABLE=0
echo "== build"; (cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_CUDA=ON -DESM2_BUILD_BENCH=OFF -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so && ninja -C build -j16 esm2) > $OUT/build.log 2>&1 || tail -30 $OUT/build.log
E=./build/esm2
echo "== prepare"; $E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv --output /tmp/ck/corpus --force > $OUT/prepare.log 2>&1; echo "prepare rc $?"
C="--train-data /tmp/ck/corpus --backend cuda --precision bf16-mixed --micro-batch-tokens 8192 --max-seq-length 512 --seed 7 --log-every-n-steps 1 --no-report --no-tensorboard --result-dir /tmp/ck/r"
S="--preset 8M --num-steps 6 --warmup-steps 2 --lr 4e-4 --val-check-interval 3 --limit-val-batches 2 $C"
for split in "tp2:--tensor-model-parallel-size 2" "pp2:--pipeline-model-parallel-size 2"; do
  n=${split%%:*}; flags=${split#*:}
  echo "== exact resume $n"
  timeout 150 $E train $S $flags --gpus 2 --experiment-name ${n}_full > $OUT/${n}_full.log 2>&1; echo "${n}_full rc $?"
  timeout 150 $E train $S $flags --gpus 2 --experiment-name ${n}_split --early-stop-on-step 3 > $OUT/${n}_part1.log 2>&1; echo "${n}_part1 rc $?"
  timeout 150 $E train $S $flags --gpus 2 --experiment-name ${n}_split --resume-if-exists > $OUT/${n}_part2.log 2>&1; echo "${n}_part2 rc $?"
  for f in model.safetensors trainer_state/optimizer.safetensors; do
    cmp -s /tmp/ck/r/${n}_full/checkpoints/step-00000006/$f /tmp/ck/r/${n}_split/checkpoints/step-00000006/$f && echo "$n $f bitwise equal" || echo "$n $f DIFFERS"
  done | tee -a $OUT/results.txt
done
echo "== TP=2 checkpoint resumed on one GPU"
timeout 150 $E train $S --experiment-name tp1_from_tp2 --restore-from-checkpoint-path /tmp/ck/r/tp2_full/checkpoints/step-00000003 > $OUT/tp1_from_tp2.log 2>&1
echo "tp1_from_tp2 rc $?" | tee -a $OUT/results.txt
[ "${CKPT_BIG:-1}" = 0 ] && { echo "650M part skipped (CKPT_BIG=0)"; exit 0; }
echo "== 650M TP=2, one save: peak RSS (largest process) and wall time"
B="--preset 650M --num-steps 4 --warmup-steps 2 --lr 1e-4 --val-check-interval 4 --limit-val-batches 1 $C"
/usr/bin/time -v timeout 300 $E train $B --tensor-model-parallel-size 2 --gpus 2 --experiment-name big > $OUT/big.log 2> $OUT/big.time; echo "big rc $?"
grep -E "Maximum resident|Elapsed" $OUT/big.time | tee -a $OUT/results.txt
ls -la /tmp/ck/r/big/checkpoints/step-00000004/ /tmp/ck/r/big/checkpoints/step-00000004/trainer_state >> $OUT/results.txt 2>&1
echo "== 650M resume of that checkpoint at TP=2 (sliced load), one more step"
/usr/bin/time -v timeout 300 $E train ${B/--num-steps 4/--num-steps 5} --tensor-model-parallel-size 2 --gpus 2 --experiment-name big2 --restore-from-checkpoint-path /tmp/ck/r/big/checkpoints/step-00000004 > $OUT/big2.log 2> $OUT/big2.time; echo "big2 rc $?"
grep -E "Maximum resident|Elapsed" $OUT/big2.time | tee -a $OUT/results.txt

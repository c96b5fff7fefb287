#!/bin/bash
# Run on the GPU machine (it has transformers and tensorboard) over a folder prepared here with:
#   ckpt/ (a checkpoint written by `esm2 train`), inputs.safetensors (tools/hf_check_inputs ckpt CORPUS 6 200),
#   tensorboard/ + metrics.jsonl (the same run), verify-hf-load.py, verify-tensorboard.py, this script.
# Verification: transformers loads a checkpoint written by `esm2 train` and
# its logits match ours; TensorBoard's EventAccumulator reads our event files and matches metrics.jsonl.
cd "$(dirname "$0")"
PY=/opt/torch/.venv/bin/python3
export PYTHONUNBUFFERED=1
echo "== verify-hf-load (fp32)"; $PY verify-hf-load.py ckpt inputs.safetensors --tol 1e-4 2>&1 | tee $OUT/verify_hf_load.log; echo "rc=${PIPESTATUS[0]}" | tee -a $OUT/verify_hf_load.log
echo "== verify-tensorboard"; $PY verify-tensorboard.py tensorboard --expected metrics.jsonl \
  --map train_loss=train/loss --map train_ppl=train/perplexity --map lr=train/lr \
  --map grad_norm=train/grad_norm --map tokens_per_s=train/real_tokens_per_s \
  --map val_loss=val/loss --map val_ppl=val/perplexity \
  --ignore packing_efficiency --ignore consumed_tokens --ignore val_labels 2>&1 | tee $OUT/verify_tensorboard.log; echo "rc=${PIPESTATUS[0]}" | tee -a $OUT/verify_tensorboard.log

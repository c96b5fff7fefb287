#!/usr/bin/env bash
# Behaviour identity check between two esm2 binaries (issue 18: a refactoring must not change a bit).
# Both binaries prepare the bundled Swiss-Prot sample and train the same seeded CPU run (demo preset,
# 40 steps, validation every 20, a checkpoint at steps 20 and 40); then this compares, byte for byte:
#   - every file of both prepared corpora (manifest.json as JSON without "created_utc" and "command",
#     which holds the output path);
#   - metrics.jsonl, every record and every field except the run-dependent ones named in
#     RUN_DEPENDENT below (wall-clock time and throughput);
#   - every file of every checkpoint directory (model.safetensors, config/tokenizer files, the
#     optimizer moments), except trainer_state/state.json, compared as JSON without the same
#     run-dependent fields inside its metric history.
# Usage: scripts/identity-check.sh BEFORE_ESM2 AFTER_ESM2 [WORKDIR]   (exit 0: identical)
set -euo pipefail
cd "$(dirname "$0")/.."
before=$(realpath "$1") after=$(realpath "$2")
work=${3:-$(mktemp -d -t esm2-identity-XXXXXX)}
steps=40
sample=data/swissprot-sample
for side in before after; do
  bin=${!side}
  out=$work/$side
  rm -rf "$out" && mkdir -p "$out"
  "$bin" prepare --force --fasta $sample/train.fasta.gz --clusters $sample/train_clusters.tsv \
    --output "$out/corpus-train" >"$out/prepare.log" 2>&1
  "$bin" prepare --force --fasta $sample/valid.fasta.gz --output "$out/corpus-valid" >>"$out/prepare.log" 2>&1
  OMP_NUM_THREADS=2 "$bin" train --train-data "$out/corpus-train" --valid-data "$out/corpus-valid" \
    --backend cpu --threads 2 --preset demo --max-seq-length 256 --micro-batch-tokens 4096 --seed 1234 \
    --num-steps $steps --warmup-steps 5 --lr 2e-3 --val-check-interval 20 --limit-val-batches 4 \
    --log-every-n-steps 1 --save-top-k -1 --result-dir "$out/runs" --experiment-name identity \
    >"$out/train.log" 2>&1
done

python3 - "$work/before" "$work/after" "$steps" <<'PY'
import json, os, sys

before, after, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Fields that legitimately differ between two runs of the same binary: wall-clock time and the
# throughput derived from it. Everything else must be equal.
RUN_DEPENDENT = {"time", "timestamp", "wall_time", "elapsed_s", "step_time_s", "train_step_timing",
                 "tokens_per_s", "real_tokens_per_s", "samples_per_s", "throughput", "mfu"}

def files(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(out)

def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in RUN_DEPENDENT}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x

failures, compared_bytes, compared_files = [], 0, 0

def same_bytes(rel_a, rel_b, label):
    global compared_bytes, compared_files
    a, b = open(rel_a, "rb").read(), open(rel_b, "rb").read()
    compared_bytes += len(a)
    compared_files += 1
    if a != b:
        failures.append(f"{label}: bytes differ ({len(a)} vs {len(b)})")

for corpus in ("corpus-train", "corpus-valid"):
    fa, fb = files(f"{before}/{corpus}"), files(f"{after}/{corpus}")
    if fa != fb:
        failures.append(f"{corpus}: file lists differ: {fa} vs {fb}")
    for f in sorted(set(fa) & set(fb)):
        if f == "manifest.json":
            ja, jb = (json.load(open(f"{side}/{corpus}/{f}")) for side in (before, after))
            for j in (ja, jb):
                j.pop("created_utc", None)
                j.pop("command", None)
            if ja != jb:
                failures.append(f"{corpus}/manifest.json: differs beyond created_utc/command")
        else:
            same_bytes(f"{before}/{corpus}/{f}", f"{after}/{corpus}/{f}", f"{corpus}/{f}")

run_a, run_b = f"{before}/runs/identity", f"{after}/runs/identity"
ma = [json.loads(l) for l in open(f"{run_a}/metrics.jsonl")]
mb = [json.loads(l) for l in open(f"{run_b}/metrics.jsonl")]
loss_records = [r for r in ma if "train_loss" in r]
if len(loss_records) != steps:
    failures.append(f"metrics.jsonl: {len(loss_records)} train_loss records, expected {steps}")
if [strip(r) for r in ma] != [strip(r) for r in mb]:
    for i, (ra, rb) in enumerate(zip(ma, mb)):
        if strip(ra) != strip(rb):
            failures.append(f"metrics.jsonl record {i}: {strip(ra)} != {strip(rb)}")
            break
    else:
        failures.append(f"metrics.jsonl: {len(ma)} vs {len(mb)} records")
ignored = sorted({k for r in ma for k in r if k in RUN_DEPENDENT})

ckpt_a, ckpt_b = f"{run_a}/checkpoints", f"{run_b}/checkpoints"
fa, fb = files(ckpt_a), files(ckpt_b)
if fa != fb:
    failures.append(f"checkpoints: file lists differ: {fa} vs {fb}")
checkpoints = sorted({f.split("/")[0] for f in fa if "/" in f})
for f in sorted(set(fa) & set(fb)):
    if f.endswith("trainer_state/state.json"):
        sa, sb = json.load(open(f"{ckpt_a}/{f}")), json.load(open(f"{ckpt_b}/{f}"))
        if strip(sa) != strip(sb):
            failures.append(f"checkpoints/{f}: differs beyond run-dependent fields")
    else:
        same_bytes(f"{ckpt_a}/{f}", f"{ckpt_b}/{f}", f"checkpoints/{f}")

losses = [r["train_loss"] for r in loss_records]
print(f"identity check: {len(losses)} steps, train_loss first {losses[0]!r} last {losses[-1]!r}; "
      f"val_loss {[r['val_loss'] for r in ma if 'val_loss' in r]}")
print(f"  metrics.jsonl: {len(ma)} records equal (ignored run-dependent fields: {ignored or 'none present'})")
print(f"  checkpoints {checkpoints}: {compared_files} files (corpora included), {compared_bytes} bytes compared "
      f"byte for byte; trainer_state/state.json and the corpus manifests compared as JSON without "
      f"run-dependent fields")
if failures:
    print("DIFFERENT:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("IDENTICAL")
PY

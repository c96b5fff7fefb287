#!/usr/bin/env bash
# Issue 9 item 4, on the GPU machine: pretrain the 8M preset on the FULL Swiss-Prot corpus with
# `esm2 train` (CUDA, bf16-mixed, packed) for a fixed wall time, train transformers' EsmForMaskedLM of
# the same shape on the same corpus for the same wall time (scripts/hf_pretrain_baseline.py), then
# evaluate both checkpoints with `esm2 eval` on the same validation corpus (identical masks).
#
# Usage (repository root on the device):
#   PHASE=1 bench/pretrain_device_run.sh [--max-time SECONDS]      # first call: build, prepare, train
#   PHASE=2 bench/pretrain_device_run.sh [--max-time SECONDS]      # second call: both runs resume
# --max-time (default 150) is the training wall time of EACH run in EACH phase (phase 2 takes phase 1's);
# the schedules of both runs span PHASES (default 2) phases. One GPU: ours, then HF (≈ 2×max-time + ~1.5 min + the build);
# two GPUs: HF on GPU 1 beside ours on GPU 0. With a 10-minute call and a cold build, keep
# --max-time <= 150 on one GPU in phase 1; phase 2 reuses the build (up to ~240).
#
# The carry (the lead's run call; the device call may carry ~55 MiB with the working tree), made here
# from runs/swissprot (scripts/fetch-swissprot.sh) by  bench/pretrain_device_run.sh --make-carry [runs/swissprot]:
#   .carry/deps/*.deb                     libsqlite3-0/-dev, libsnappy1v5/-dev (1.9 MB; the GPU machine lacks them;
#                                         not made by --make-carry: `apt-get download` them, see cuda_device_run.sh)
#   .carry/swissprot/train_seqs.xz        the training sequences, one per line, in the member order of
#                                         train_clusters.tsv (so homologs are neighbours), xz -9e
#   .carry/swissprot/train_clusters.tsv.xz, valid.fasta.xz   xz -9e
# Why this layout: protein letters hold ~4.17 bits each (order-0 and order-1 entropy of this corpus:
# >= 60 MB for a coder of single residues), and xz -9e of the sequences in the FASTA's own order reaches
# ~3.7 bits per residue (~53 MB, too much with the tree); ordered by UR50 cluster, the 50-90%-identical members sit within xz's 64 MiB window and xz -9e gets 2.90 bits per
# residue (42.0 MB; 53.9 MiB carried in all with the tree and the debs). The ids are not stored twice:
# the device rebuilds train.fasta from the TSV's member column.
# State between the two calls lives in runs/pretrain/ (git-ignored, so a warm machine keeps it, like
# build/). PHASE=2 on a machine that lost it stops with a message instead of silently starting over.
# Recipes (issue 20): OURS_RECIPE=short-run (default: `--preset 8M` with the short-run recipe's defaults,
# src/train/recipe.cpp: no lr/warm-up/schedule flags, its batch 65,536 × 2 passed explicitly so the plan
# below knows it) or readme (the former README recipe: lr 4e-4, 100 warm-up steps, 65,536 × 4).
# HF_RECIPE=hf (default: what a Hugging Face user runs: padded batches of 64 sequences, lr 4e-4, 500
# warm-up steps, linear decay to 0) or ours (the HF model on our batch size and schedule, as before).
# With PHASES=1 (one call) ours runs under `--time-budget MAX_TIME`: its start-up, validations and
# final checkpoint are inside the same wall time as HF's --max-time (which starts after Python's
# imports and model set-up, and includes torch.compile). For the issue-20 comparison on one call:
#   PHASES=1 PHASE=1 bench/pretrain_device_run.sh --max-time 200     (2 GPUs: ~6 min; 1 GPU: ~9 min)
# Writes under $OUT: pretrain_phase<P>.json (both runs: steps, tokens, time, validation curves, the
# esm2 eval results), pretrain_phase<P>.log, the runs' metrics.jsonl, train logs, our report.html + PNGs.
set -uo pipefail
MAX_TIME=150
MAKE_CARRY=
while [ $# -gt 0 ]; do
  case $1 in
    --max-time) MAX_TIME=$2; shift 2 ;;
    --make-carry) MAKE_CARRY=${2:-runs/swissprot}; shift $(( $# >= 2 ? 2 : 1 )) ;;
    *) echo "pretrain_device_run.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

if [ -n "$MAKE_CARRY" ]; then
  # CARRY: measured on runs/swissprot (fetch-swissprot v1, 2026-11-25), see docs/hf-peer.md.
  set -e
  mkdir -p .carry/swissprot
  # id -> unwrapped sequence from the FASTA, then the sequences in the TSV's member order
  awk 'NR==FNR{if(/^>/){if(id!="")seq[id]=s; id=substr($1,2); s=""}else{s=s $0}; next}
       FNR==1{seq[id]=s} {if(!($2 in seq)){print "no sequence for " $2 > "/dev/stderr"; exit 1}; print seq[$2]}' \
    "$MAKE_CARRY/train.fasta" "$MAKE_CARRY/train_clusters.tsv" | xz -9e -T1 > .carry/swissprot/train_seqs.xz
  xz -9e -T1 -c "$MAKE_CARRY/train_clusters.tsv" > .carry/swissprot/train_clusters.tsv.xz
  xz -9e -T1 -c "$MAKE_CARRY/valid.fasta" > .carry/swissprot/valid.fasta.xz
  ls -l .carry/swissprot
  exit 0
fi

PHASE=${PHASE:-1}
PHASES=${PHASES:-2}
OUT=${OUT:-/tmp/out}
DEPS=${DEPS:-.carry/deps}
DATA=${DATA:-.carry/swissprot}
W=runs/pretrain                       # state kept between the calls
OURS_RECIPE=${OURS_RECIPE:-short-run}
HF_RECIPE=${HF_RECIPE:-hf}
MBT=${MBT:-65536}                     # our packed micro-batch (tokens)
if [ "$OURS_RECIPE" = short-run ]; then
  ACC=${ACC:-2}                       # the short-run 8M row: 65,536 x 2 = 131,072 tokens per step
  OURS_FLAGS=(--recipe short-run)    # lr, warm-up, schedule, AdamW: the recipe's
else
  ACC=${ACC:-4}                       # accumulation: global batch MBT x ACC = 262,144 tokens
  OURS_FLAGS=(--recipe esm2-paper --lr "${LR:-4e-4}" --warmup-steps "${WARMUP:-100}")
fi
LR=${LR:-4e-4}
WARMUP=${WARMUP:-100}
if [ "$HF_RECIPE" = hf ]; then
  HF_FLAGS=(--sequences-per-step 64 --micro-batch-size 64 --lr 4e-4 --warmup-steps 500 --min-lr 0)
else
  HF_FLAGS=(--tokens-per-step $((MBT * ACC)) --micro-batch-size "${HF_MBS:-128}" --lr "$LR" --warmup-steps "$WARMUP")
fi
HF_COMPILE=${HF_COMPILE:-1}
PY=${PY:-/opt/torch/.venv/bin/python3}
mkdir -p "$OUT" "$W"
LOG="$OUT/pretrain_phase$PHASE.log"
step() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,memory.total --format=csv >> "$LOG" 2>&1
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
step "phase $PHASE of $PHASES, --max-time $MAX_TIME s per run, $NGPU GPU(s), ours: $OURS_RECIPE recipe, HF: $HF_RECIPE recipe"
export OURS_RECIPE HF_RECIPE

step "build"
mkdir -p /tmp/deps
for f in "$DEPS"/*.deb; do [ -f "$f" ] && dpkg -x "$f" /tmp/deps; done
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
{
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_BUILD_BENCH=OFF \
    -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include \
    -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so && time ninja -C build -j16 esm2
} > "$OUT/build.log" 2>&1 || { step "build FAILED"; tail -30 "$OUT/build.log"; exit 1; }
E=$PWD/build/esm2

unxz_to() {  # decompress $1 into $2 with xz, or Python's lzma where the xz tool is missing
  if command -v xz > /dev/null; then xz -dc "$1" > "$2"; else $PY -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; fi
}

if [ "$PHASE" = 1 ]; then
  rm -rf "$W/ours" "$W/hf" "$W/plan.env" "$W/hf_eager" "$W/eval"
  step "decompress + esm2 prepare the full corpus"
  mkdir -p /tmp/swissprot
  for f in train_seqs train_clusters.tsv valid.fasta; do
    unxz_to "$DATA/$f.xz" "/tmp/swissprot/$f" || step "decompress $f FAILED"
  done
  # train.fasta again: ids from the TSV's member column, sequences in the same order
  paste -d '\n' <(cut -f2 /tmp/swissprot/train_clusters.tsv | sed 's/^/>/') /tmp/swissprot/train_seqs \
    > /tmp/swissprot/train.fasta || step "rebuild train.fasta FAILED"
  ls -l /tmp/swissprot >> "$LOG"
  { time $E prepare --fasta /tmp/swissprot/train.fasta --clusters /tmp/swissprot/train_clusters.tsv \
      --output "$W/corpus/train" --force; } >> "$LOG" 2>&1 || step "prepare train FAILED"
  $E prepare --fasta /tmp/swissprot/valid.fasta --output "$W/corpus/valid" --force >> "$LOG" 2>&1 ||
    step "prepare valid FAILED"
  # Schedule: steps = what our measured rate does in PHASES x MAX_TIME, less 10% for validation and
  # checkpoints; both phases train under this one schedule.
  step "calibrate: esm2 bench 8M --micro-batch-tokens $MBT"
  CUDA_VISIBLE_DEVICES=0 timeout 120 $E bench --backend cuda --preset 8M --micro-batch-tokens "$MBT" \
    --data "$W/corpus/train" --steps 10 --warmup 3 --peak-tflops 989 --json "$OUT/bench_8M.json" >> "$LOG" 2>&1 ||
    step "bench FAILED"
  TPS=$($PY -c "import json; print(json.load(open('$OUT/bench_8M.json'))['real_tokens_per_s'])" 2>/dev/null || echo 1000000)
  NUM_STEPS=$($PY -c "print(max(int(0.9 * $TPS * $MAX_TIME * $PHASES / ($MBT * $ACC)), 120))")
  VAL_EVERY=$(( NUM_STEPS / (5 * PHASES) > 0 ? NUM_STEPS / (5 * PHASES) : 1 ))
  printf 'NUM_STEPS=%s\nVAL_EVERY=%s\nSCHEDULE_TIME=%s\nPLAN_MAX_TIME=%s\n' "$NUM_STEPS" "$VAL_EVERY" \
    "$((MAX_TIME * PHASES))" "$MAX_TIME" > "$W/plan.env"
  step "plan: $TPS tokens/s measured -> $NUM_STEPS steps of $((MBT * ACC)) tokens, validation every $VAL_EVERY"
else
  if [ ! -f "$W/plan.env" ] || [ ! -f "$W/ours/checkpoints/latest" ] || [ ! -f "$W/hf/state/trainer_state.pt" ]; then
    step "PHASE=2: no phase-1 state under $W (a fresh machine, not the warm one of phase 1): run PHASE=1 first"
    exit 1
  fi
fi
. "$W/plan.env"
if [ "$MAX_TIME" != "$PLAN_MAX_TIME" ]; then  # both schedules were sized for PHASES x phase 1's time
  step "--max-time $MAX_TIME differs from phase 1's $PLAN_MAX_TIME: using $PLAN_MAX_TIME so the schedules end together"
  MAX_TIME=$PLAN_MAX_TIME
fi

train_ours() {
  local t0=$SECONDS length
  # One call: the whole run inside --time-budget; two: a schedule over both calls, each stopped by --max-time.
  if [ "$PHASES" = 1 ]; then length=(--time-budget "$MAX_TIME"); else length=(--num-steps "$NUM_STEPS" --max-time "$MAX_TIME"); fi
  CUDA_VISIBLE_DEVICES=0 timeout $((MAX_TIME + 180)) $E train --train-data "$W/corpus/train" \
    --valid-data "$W/corpus/valid" --preset 8M --backend cuda --precision bf16-mixed \
    --micro-batch-tokens "$MBT" --accumulate-grad-batches "$ACC" "${length[@]}" "${OURS_FLAGS[@]}" \
    --val-check-interval "$VAL_EVERY" --limit-val-batches 100000 \
    --log-every-n-steps 20 --result-dir "$W" --experiment-name ours --seed 1 \
    --resume-if-exists > "$OUT/train_ours_phase$PHASE.log" 2>&1
  echo "ours exit $?" >> "$LOG"
  echo "$((SECONDS - t0))" > "$W/ours_wall_phase$PHASE"  # process wall time incl. start-up and the last save
}
train_hf() {  # $1: GPU index
  local resume= compile= rc t0=$SECONDS
  [ "$PHASE" != 1 ] && resume=--resume
  [ "$HF_COMPILE" = 1 ] && [ ! -f "$W/hf_eager" ] && compile=--compile
  run_hf() {
    CUDA_VISIBLE_DEVICES=$1 timeout $((MAX_TIME + 240)) $PY scripts/hf_pretrain_baseline.py \
      --train-data "$W/corpus/train" --preset 8M --out "$W/hf" --max-time "$MAX_TIME" $resume $2 \
      "${HF_FLAGS[@]}" --num-steps 0 --schedule-time "$SCHEDULE_TIME" --save-every $((SCHEDULE_TIME / (5 * PHASES))) \
      --log-every 10 >> "$OUT/train_hf_phase$PHASE.log" 2>&1
  }
  run_hf "$1" "$compile"
  rc=$?
  echo "hf exit $rc" >> "$LOG"
  # A torch.compile failure before the first state was saved must not lose the baseline: train eager
  # instead (and in phase 2 too, marked by $W/hf_eager).
  if [ $rc != 0 ] && [ -n "$compile" ] && [ ! -f "$W/hf/state/trainer_state.pt" ]; then
    echo "[$(date +%T)] HF with --compile failed (exit $rc): training eager instead" | tee -a "$LOG"
    rm -rf "$W/hf"
    touch "$W/hf_eager"
    run_hf "$1" ""
    echo "hf (eager) exit $?" >> "$LOG"
  fi
  echo "$((SECONDS - t0))" > "$W/hf_wall_phase$PHASE"
}

if [ "$NGPU" -ge 2 ]; then
  step "train: ours on GPU 0 and HF on GPU 1 concurrently, $MAX_TIME s each"
  train_hf 1 &
  HF_PID=$!
  train_ours
  wait $HF_PID
else
  step "train: ours ($MAX_TIME s)"
  train_ours
  step "train: HF ($MAX_TIME s)"
  train_hf 0
fi
tail -3 "$OUT/train_ours_phase$PHASE.log" | tee -a "$LOG"
tail -3 "$OUT/train_hf_phase$PHASE.log" | tee -a "$LOG"

step "esm2 eval: both final checkpoints and HF's intermediate ones, same validation corpus and masks"
evaluate() {  # $1: checkpoint dir, $2: json
  CUDA_VISIBLE_DEVICES=0 timeout 120 $E eval --checkpoint "$1" --data "$W/corpus/valid" --micro-batch-tokens "$MBT" \
    --json "$2" >> "$LOG" 2>&1 || step "eval $1 FAILED"
}
mkdir -p "$W/eval"
OURS_CKPT="$W/ours/checkpoints/$(cat "$W/ours/checkpoints/latest" 2>/dev/null)"
evaluate "$OURS_CKPT" "$OUT/eval_ours_phase$PHASE.json"
for d in "$W"/hf/checkpoints/step-*; do
  [ -d "$d" ] || continue
  n=$(basename "$d")
  [ -f "$W/eval/hf_$n.json" ] || evaluate "$d" "$W/eval/hf_$n.json"
done
HF_LAST="$W/hf/checkpoints/$(cat "$W/hf/checkpoints/latest" 2>/dev/null)"
cp "$W/eval/hf_$(basename "$HF_LAST").json" "$OUT/eval_hf_phase$PHASE.json" 2>/dev/null

step "report"
cp "$W/ours/metrics.jsonl" "$OUT/metrics_ours.jsonl" 2>/dev/null
cp "$W/hf/metrics.jsonl" "$OUT/metrics_hf.jsonl" 2>/dev/null
cp "$W"/ours/report.html "$W"/ours/*.png "$OUT/" 2>/dev/null
$PY - "$W" "$OUT" "$PHASE" "$MAX_TIME" "$NGPU" "$NUM_STEPS" "$((MBT * ACC))" <<'PY' 2>&1 | tee -a "$LOG"
import glob, json, os, sys
w, out, phase, max_time, ngpu = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
num_steps, global_batch = int(sys.argv[6]), int(sys.argv[7])
def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def jsonl(p):
    try:
        return [json.loads(l) for l in open(p) if l.strip()]
    except OSError:
        return []
def val_of(e):
    if not e:
        return None
    r = e["files"][0]  # esm2 eval --json: {"checkpoint", ..., "files": [{"val_loss", "val_ppl", ...}]}
    return {k: r.get(k) for k in ("val_loss", "val_ppl", "masked_tokens", "sequences")}
om = jsonl(os.path.join(w, "ours", "metrics.jsonl"))
ours_train = [m for m in om if "train_loss" in m]
eff = ours_train[-1].get("packing_efficiency", 1.0) if ours_train else 1.0
ours = {"steps": ours_train[-1]["step"] if ours_train else None, "num_steps": num_steps,
        "global_batch_tokens": global_batch,
        "consumed_tokens": ours_train[-1]["consumed_tokens"] if ours_train else None,
        # tokens at a validation: steps x global batch x packing efficiency (metrics.jsonl logs tokens
        # only at logging steps)
        "val_curve": [{"step": m["step"], "tokens_approx": int(m["step"] * global_batch * eff), "val_ppl": m["val_ppl"]}
                      for m in om if "val_ppl" in m],
        "eval": val_of(load(os.path.join(out, f"eval_ours_phase{phase}.json")))}
hm = jsonl(os.path.join(w, "hf", "metrics.jsonl"))
hf_curve = []
for d in sorted(glob.glob(os.path.join(w, "hf", "checkpoints", "step-*"))):
    p, e = load(os.path.join(d, "progress.json")), val_of(load(os.path.join(w, "eval", f"hf_{os.path.basename(d)}.json")))
    if p and e:
        hf_curve.append({**p, "val_ppl": e["val_ppl"]})
hf = {"summary": load(os.path.join(w, "hf", "summary.json")), "val_curve": hf_curve,
      "eval": val_of(load(os.path.join(out, f"eval_hf_phase{phase}.json")))}
def wall(name):
    try:
        return int(open(os.path.join(w, f"{name}_wall_phase{phase}")).read())
    except (OSError, ValueError):
        return None
ours["process_wall_s"], hf["process_wall_s"] = wall("ours"), wall("hf")
res = {"phase": phase, "max_time_s_per_run": max_time, "ours_recipe": os.environ.get("OURS_RECIPE"),
       "hf_recipe": os.environ.get("HF_RECIPE"), "gpus": ngpu,
       "concurrent": ngpu >= 2, "bench": load(os.path.join(out, "bench_8M.json")), "ours": ours, "hf": hf}
if ours["eval"] and hf["eval"]:
    res["ours_lower_ppl"] = ours["eval"]["val_ppl"] < hf["eval"]["val_ppl"]
with open(os.path.join(out, f"pretrain_phase{phase}.json"), "w") as f:
    json.dump(res, f, indent=1)
s = hf["summary"] or {}
print(f"phase {phase}: ours {ours['steps']}/{ours['num_steps']} steps, {ours['consumed_tokens']} tokens, "
      f"val ppl {ours['eval'] and ours['eval']['val_ppl']}")
print(f"phase {phase}: HF   {s.get('step')}/{s.get('num_steps')} steps, {s.get('consumed_tokens')} tokens, "
      f"{s.get('elapsed_s')} s, val ppl {hf['eval'] and hf['eval']['val_ppl']}")
print("ours lower:", res.get("ours_lower_ppl"))
PY
ls -la "$OUT"

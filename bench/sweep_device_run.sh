#!/usr/bin/env bash
# Issue 20 (time to quality), ONE device call on one H100: which recipe gives the lowest held-out
# perplexity for a fixed wall time. Builds esm2, prepares the FULL Swiss-Prot corpus (its 1% UR50
# hold-out is the validation set), times each (preset, micro-batch) once with `esm2 bench`, turns every
# config's wall budget into a fixed step count (the formula of `esm2 train --time-budget`), trains the
# configs CONCURRENTLY on the GPU in waves of $CONC processes, and scores every final checkpoint with
# `esm2 eval` (the same masks for all). A run's result depends only on its step count, so concurrency
# changes the wall time of the sweep, not the quality of a run; a run's budget is its wall time ALONE
# on the GPU, start-up and validations included.
#
# Takes: ~9 minutes (DEADLINE_S=530 s from its start, then it stops launching; the table is written
# after every wave and at the end whatever happens): build ~45-60 s, corpus ~10 s, a 30 s
# `esm2 train --time-budget 30` check alone on the GPU (TB_CHECK=0 skips it), one bench per
# (preset, micro-batch) ~15 s, then waves of 2 × 60 s configs (~2 min a wave with no concurrency gain,
# less with) and ~5 s of `esm2 eval` per run. Adaptive: a wave is launched only when the time it is
# predicted to take (the first wave measures how much concurrency gains) fits before the deadline; a
# config that does not fit is listed as skipped; a run still going at the deadline gets SIGTERM (it
# saves a checkpoint, is evaluated and marked "cut").
#
# Usage (repository root on the device; the run's command):
#   bench/sweep_device_run.sh                       # PLAN=sweep: the 60 s grid below, in priority order
#   PLAN=confirm BEST="--lr 2e-3" bench/sweep_device_run.sh   # 200 s: short-run, README recipe, short-run+BEST
#   PLAN=long bench/sweep_device_run.sh             # 200 s: 8M's batch and window levers (two calls)
#   CONFIGS=my.txt bench/sweep_device_run.sh        # lines "name budget_s preset micro_tokens accumulation [flags]"
# Env: DEADLINE_S (530), CONC (2 concurrent trainings), VALS (5 validations per run), GPU (0).
# A dry run of the orchestration without a GPU (what was run before committing it):
#   ESM2=build/esm2 CORPUS=dir-with-train-and-valid BACKEND=cpu CONFIGS=tiny.txt DEADLINE_S=150 VALS=2 \
#     TB_CHECK=10 TB_PRESET=demo TB_FLAGS="--micro-batch-tokens 1024" PY=python3 bench/sweep_device_run.sh
# Flags of a config may hold warmup=F (warm-up = F × the planned steps, as --warmup-steps) and steps=N
# (the step count, instead of the one the budget gives: replays an earlier run's plan).
# Carry (made here): .carry/deps/*.deb (libsqlite3-0/-dev, libsnappy1v5/-dev: the device lacks them) and
# .carry/swissprot/ (scripts/fetch-swissprot.sh, then bench/pretrain_device_run.sh --make-carry
# runs/swissprot: 42 MB of xz).
# Writes under $OUT (≤ 6 files): sweep.tsv (config → validation perplexity, one row per config and
# budget, plus its share vs the README recipe at the same budget), sweep.json (everything: bench,
# plans, eval results, per-run validation curves), curves.tar.gz (every run's metrics.jsonl and train
# log), sweep.log, build.log (on a build failure).
set -uo pipefail
T0=$(date +%s)
DEADLINE_S=${DEADLINE_S:-530}
PLAN=${PLAN:-sweep}
OUT=${OUT:-/tmp/out}
DEPS=${DEPS:-.carry/deps}
DATA=${DATA:-.carry/swissprot}
PY=${PY:-/opt/torch/.venv/bin/python3}
W=/tmp/sweep
rm -rf "$W/runs" "$W"/eval_*.json "$W"/bench_*.json "$W"/tb_check.*  # a warm machine keeps /tmp: no stale run may enter the table
mkdir -p "$OUT" "$W"
LOG="$OUT/sweep.log"
step() { echo "[$(date -u +%T) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,memory.total --format=csv >> "$LOG" 2>&1

if [ -n "${ESM2:-}" ]; then
  E=$(realpath "$ESM2")
else
step "build"
mkdir -p /tmp/deps
for f in "$DEPS"/*.deb; do [ -f "$f" ] && dpkg -x "$f" /tmp/deps; done
export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
{
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_BUILD_BENCH=OFF -DCMAKE_CUDA_ARCHITECTURES=90a \
    -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include \
    -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so && time ninja -C build -j16 esm2
} > /tmp/sweep_build.log 2>&1 || { step "build FAILED"; tail -60 /tmp/sweep_build.log > "$OUT/build.log"; exit 1; }
E=$PWD/build/esm2
fi

if [ -n "${CORPUS:-}" ]; then
  mkdir -p "$W/corpus" && rm -rf "$W/corpus/train" "$W/corpus/valid"
  cp -r "$CORPUS/train" "$CORPUS/valid" "$W/corpus/"
else
step "decompress + esm2 prepare the full corpus"
unxz_to() {  # xz, or Python's lzma where the xz tool is missing
  if command -v xz > /dev/null; then xz -dc "$1" > "$2"; else $PY -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$1" "$2"; fi
}
mkdir -p /tmp/swissprot
for f in train_seqs train_clusters.tsv valid.fasta; do
  unxz_to "$DATA/$f.xz" "/tmp/swissprot/$f" || { step "decompress $f FAILED"; exit 1; }
done
# train.fasta again: ids from the TSV's member column, sequences in the same order (see --make-carry)
paste -d '\n' <(cut -f2 /tmp/swissprot/train_clusters.tsv | sed 's/^/>/') /tmp/swissprot/train_seqs \
  > /tmp/swissprot/train.fasta
$E prepare --fasta /tmp/swissprot/train.fasta --clusters /tmp/swissprot/train_clusters.tsv \
  --output "$W/corpus/train" --force >> "$LOG" 2>&1 || { step "prepare train FAILED"; exit 1; }
$E prepare --fasta /tmp/swissprot/valid.fasta --output "$W/corpus/valid" --force >> "$LOG" 2>&1 ||
  { step "prepare valid FAILED"; exit 1; }
fi

# The configs, most important first. The short-run rows of src/train/recipe.cpp are what `--recipe short-run`
# gives (esm2-paper is the default, so those configs name it); every config passes its batch explicitly.
if [ -n "${CONFIGS:-}" ]; then
  cp "$CONFIGS" "$W/configs.txt"
elif [ "$PLAN" = long ]; then
  # 200 s, the levers the 60 s sweep left open for 8M (issue 20's 5% target): half the tokens per step
  # (twice the steps) at the default lr, and 512-token windows (more sequences per step, less attention
  # per token; `esm2 eval` scores every run on the same full-length hold-out). ~2 calls: the runs that do
  # not fit the first are listed as skipped; rerun them with CONFIGS.
  cat > "$W/configs.txt" <<'EOF'
short-run-8M         200 8M  65536 2 --recipe short-run
tok65k-8M            200 8M  65536 1 --recipe short-run
seq512-8M            200 8M  65536 2 --recipe short-run --max-seq-length 512
readme-8M            200 8M  65536 4 --recipe esm2-paper --lr 4e-4 warmup=0.083
EOF
elif [ "$PLAN" = confirm ]; then
  cat > "$W/configs.txt" <<EOF
short-run-8M         200 8M  65536 2 --recipe short-run
readme-8M        200 8M  65536 4 --recipe esm2-paper --lr 4e-4 warmup=0.083
${BEST:+best-8M          200 8M  65536 2 --recipe short-run $BEST}
EOF
else
  # readme: the README's "Train on real data" recipe (esm2-paper, lr 4e-4, 262,144 tokens per step,
  # 100 warm-up steps of 1,200 = 8.3%). The rest vary one thing of a short-run row at a time. The first
  # sweep (2026-12-07, bench/results/recipes-8M-swissprot) settled the 8M row's lr (1e-3), batch, schedule
  # shape, β2 and weight decay; what it did not reach comes first now: 35M, then 8M's warm-up and decay.
  cat > "$W/configs.txt" <<'EOF'
readme-35M       60 35M 65536 4 --recipe esm2-paper --lr 4e-4 warmup=0.083
short-run-35M        60 35M 65536 4 --recipe short-run
lr2e-3-35M       60 35M 65536 4 --lr 2e-3 --recipe short-run
lr5e-4-35M       60 35M 65536 4 --lr 5e-4 --recipe short-run
readme-8M        60 8M  65536 4 --recipe esm2-paper --lr 4e-4 warmup=0.083
short-run-8M         60 8M  65536 2 --recipe short-run
warm2pct-8M      60 8M  65536 2 warmup=0.02 --recipe short-run
decay40-8M       60 8M  65536 2 --lr-decay-fraction 0.4 --recipe short-run
lr5e-4-8M        60 8M  65536 2 --lr 5e-4 --recipe short-run
lr2e-3-8M        60 8M  65536 2 --lr 2e-3 --recipe short-run
EOF
fi
# `esm2 train --time-budget` itself on the GPU, alone: the run must end within its budget, start-up
# included (the process's wall time is measured outside it); its plan line shows the step time it timed.
TB_CHECK=${TB_CHECK:-30}
if [ "$TB_CHECK" != 0 ]; then
  step "check: esm2 train --preset ${TB_PRESET:-8M} --time-budget $TB_CHECK ${TB_FLAGS:-} (its recipe), alone on the GPU"
  t0=$(date +%s%N)
  CUDA_VISIBLE_DEVICES=${GPU:-0} timeout -k 10 $((TB_CHECK + 60)) $E train --train-data "$W/corpus/train" \
    --valid-data "$W/corpus/valid" --preset "${TB_PRESET:-8M}" --backend "${BACKEND:-cuda}" --time-budget "$TB_CHECK" \
    --limit-val-batches 100000 --log-every-n-steps 10 --seed 1 --no-tensorboard --result-dir "$W/runs" \
    --experiment-name time-budget-check --force ${TB_FLAGS:-} > "$W/tb_check.log" 2>&1
  rc=$?
  wall=$(( ($(date +%s%N) - t0) / 1000000 ))
  { echo "exit $rc, process wall $wall ms for --time-budget $TB_CHECK s"; grep -E "^time budget|slower than planned|^esm2 train: done" "$W/tb_check.log"; } |
    tee "$W/tb_check.txt" | tee -a "$LOG"
fi

step "plan $PLAN: $(grep -c . "$W/configs.txt") configs, ${CONC:-2} at a time, deadline +${DEADLINE_S}s"

$PY - "$E" "$W" "$OUT" "$((T0 + DEADLINE_S))" "${CONC:-2}" "${VALS:-5}" "${GPU:-0}" "${BACKEND:-cuda}" <<'PY' 2>&1 | tee -a "$LOG"
import json, math, os, shlex, signal, subprocess, sys, tarfile, time
E, W, OUT = sys.argv[1], sys.argv[2], sys.argv[3]
DEADLINE, CONC, VALS, GPU, BACKEND = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], sys.argv[8]
RESERVE = 20.0        # after the last wave: its evals, the table, the tar
EVAL_S = 5.0          # one `esm2 eval` of the hold-out, start-up included (predicted)
VAL_S = 1.0           # one validation + checkpoint inside a run (predicted; 8M-35M)
env = dict(os.environ, CUDA_VISIBLE_DEVICES=GPU)
T, V = os.path.join(W, "corpus", "train"), os.path.join(W, "corpus", "valid")

def left():
    return DEADLINE - time.time()

def log(m):
    print(f"[sweep {time.strftime('%H:%M:%S', time.gmtime())}, {left():.0f} s left] {m}", flush=True)

configs = []
for line in open(os.path.join(W, "configs.txt")):
    f = line.split("#")[0].split()
    if len(f) < 5:
        continue
    configs.append({"name": f[0], "budget_s": float(f[1]), "preset": f[2], "micro": int(f[3]), "acc": int(f[4]),
                    "flags": f[5:]})

bench = {}
def throughput(preset, micro, seqlen="1024"):
    """Seconds per micro-batch and the process start-up, from one `esm2 bench` alone on the GPU."""
    key = f"{preset}/{micro}" + ("" if seqlen == "1024" else f"/len{seqlen}")
    if key in bench:
        return bench[key]
    j = os.path.join(W, f"bench_{key.replace('/', '_')}.json")
    t0 = time.time()
    try:
        r = subprocess.run([E, "bench", "--backend", BACKEND, "--preset", preset, "--micro-batch-tokens", str(micro),
                            "--data", T, "--max-seq-length", seqlen, "--steps", "8", "--warmup", "3", "--json", j,
                            "--force"],
                           env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        r = subprocess.CompletedProcess([], 124, "timed out", "")
    wall = time.time() - t0
    if r.returncode != 0:
        log(f"bench {key} FAILED: {r.stdout[-500:]} {r.stderr[-500:]}")
        bench[key] = None
        return None
    b = json.load(open(j))
    b["process_wall_s"] = wall
    # Start-up: the process's wall time less its 11 steps (the untimed ones cost about as much).
    b["startup_s"] = max(wall - 11 * b["step_seconds"], 2.0)
    bench[key] = b
    log(f"bench {key}: {b['real_tokens_per_s']:,.0f} real tokens/s, {b['step_seconds']:.4f} s per micro-batch, "
        f"start-up ~{b['startup_s']:.1f} s")
    return b

def plan(c):
    """The steps a run of this config does in its budget alone on the GPU (esm2 train --time-budget's formula)."""
    # a config's --max-seq-length changes its step time: it is timed at its own length
    fl = c["flags"]
    seqlen = fl[fl.index("--max-seq-length") + 1] if "--max-seq-length" in fl[:-1] else "1024"
    b = throughput(c["preset"], c["micro"], seqlen)
    if b is None:
        return None
    step_s = b["step_seconds"] * c["acc"]
    B = c["budget_s"]
    usable = B - b["startup_s"] - (0.5 + 0.02 * B) - VALS * VAL_S
    n = int(usable // step_s)
    # steps=N pins the step count (to replay an earlier run's plan: its learning rate at every step
    # depends on the planned length); the budget still labels the row and predicts its wall time
    pinned = [int(x[6:]) for x in c["flags"] if x.startswith("steps=")]
    if pinned:
        n = pinned[-1]
    if n < 20:
        return None
    flags = []
    for x in c["flags"]:
        if x.startswith("steps="):
            continue
        if x.startswith("warmup="):
            flags += ["--warmup-steps", str(int(round(float(x[7:]) * n)))]
        else:
            flags.append(x)
    return {"steps": n, "step_s": step_s, "tokens_per_step": c["micro"] * c["acc"], "val_every": math.ceil(n / VALS),
            "flags": flags, "startup_s": b["startup_s"]}

def launch(c):
    p = c["plan"]
    d = os.path.join(W, "runs")
    os.makedirs(d, exist_ok=True)
    cmd = [E, "train", "--train-data", T, "--valid-data", V, "--preset", c["preset"], "--backend", BACKEND,
           "--micro-batch-tokens", str(c["micro"]), "--accumulate-grad-batches", str(c["acc"]),
           "--num-steps", str(p["steps"]), "--val-check-interval", str(p["val_every"]), "--limit-val-batches", "100000",
           "--log-every-n-steps", "10", "--seed", "1", "--no-report", "--no-tensorboard", "--no-save-best-checkpoint",
           "--result-dir", d, "--experiment-name", c["name"], "--force"] + p["flags"]
    c["command"] = " ".join(shlex.quote(x) for x in cmd)
    c["log"] = os.path.join(d, c["name"] + ".log")
    c["t_start"] = time.time()
    c["proc"] = subprocess.Popen(cmd, env=env, stdout=open(c["log"], "w"), stderr=subprocess.STDOUT)

def evaluate(c):
    run = os.path.join(W, "runs", c["name"])
    try:
        ck = os.path.join(run, "checkpoints", open(os.path.join(run, "checkpoints", "latest")).read().strip())
    except OSError:
        c["status"] = c.get("status", "") + " no-checkpoint"
        return
    j = os.path.join(W, f"eval_{c['name']}.json")
    try:  # the table must be written in time: an eval gets what is left, at least 10 s
        r = subprocess.run([E, "eval", "--checkpoint", ck, "--data", V, "--micro-batch-tokens", "65536", "--json", j,
                            "--force", "--backend", BACKEND], env=env, capture_output=True, text=True,
                           timeout=max(10.0, min(120.0, left() - 5)))
    except subprocess.TimeoutExpired:
        r = subprocess.CompletedProcess([], 124, "timed out", "")
    if r.returncode == 0:
        e = json.load(open(j))["files"][0]
        c["eval"] = {k: e.get(k) for k in ("val_loss", "val_ppl", "masked_tokens", "sequences")}
        c["eval"]["checkpoint"] = os.path.basename(ck)
    else:
        c["status"] = c.get("status", "") + " eval-failed"
        log(f"eval {c['name']} FAILED: {r.stdout[-300:]} {r.stderr[-300:]}")

def curves(c):
    out, p = [], os.path.join(W, "runs", c["name"], "metrics.jsonl")
    if os.path.exists(p):
        for l in open(p):
            if l.strip():
                m = json.loads(l)
                if "val_ppl" in m:
                    out.append({"step": m["step"], "val_ppl": m["val_ppl"]})
    return out

def write_table():
    ref = {}
    for c in configs:
        if c["name"].startswith("readme") and c.get("eval"):
            ref[(c["preset"], c["budget_s"])] = c["eval"]["val_ppl"]
    rows = ["config\tpreset\tbudget_s\ttokens_per_step\tsteps\tsteps_done\teval_val_ppl\tvs_readme\ttrain_final_val_ppl"
            "\tprocess_wall_s\tstatus\tflags"]
    for c in configs:
        p, e, cv = c.get("plan") or {}, c.get("eval") or {}, curves(c)
        ppl = e.get("val_ppl")
        r = ref.get((c["preset"], c["budget_s"]))
        vs = f"{100 * (ppl / r - 1):+.2f}%" if ppl and r else ""
        rows.append("\t".join(str(x) for x in [
            c["name"], c["preset"], int(c["budget_s"]), c["micro"] * c["acc"], p.get("steps", ""), c.get("steps_done", ""),
            f"{ppl:.4f}" if ppl else "", vs, f"{cv[-1]['val_ppl']:.4f}" if cv else "",
            f"{c['wall_s']:.1f}" if "wall_s" in c else "", c.get("status", "queued").strip(),
            " ".join(p.get("flags", c["flags"]))]))
    with open(os.path.join(OUT, "sweep.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    js = [{k: v for k, v in c.items() if k not in ("proc",)} | {"val_curve": curves(c)} for c in configs]
    tb = os.path.join(W, "tb_check.txt")
    tb = open(tb).read() if os.path.exists(tb) else None
    with open(os.path.join(OUT, "sweep.json"), "w") as f:
        json.dump({"time_budget_check": tb, "bench": bench, "concurrency": CONC, "validations_per_run": VALS,
                   "configs": js}, f, indent=1)

for c in configs:
    c["status"] = "queued"
ratio = 1.0   # a wave's wall time / the sum of its runs' budgets (1: no gain from concurrency)
while True:
    # The next wave: queued configs in priority order, as many as run together and fit before the deadline.
    wave = []
    for c in configs:
        if c["status"] != "queued" or len(wave) >= CONC:
            continue
        if "plan" not in c:
            if left() < RESERVE + 60:  # no time for a bench and a run
                continue
            c["plan"] = plan(c)
            if c["plan"] is None:
                c["status"] = "no plan (bench failed or budget too short)"
                continue
        need = ratio * sum(x["budget_s"] for x in wave + [c]) + EVAL_S * (len(wave) + 1)
        if need <= left() - RESERVE:
            wave.append(c)
    if not wave:
        break
    log(f"wave: {', '.join(c['name'] for c in wave)} ({', '.join(str(c['plan']['steps']) for c in wave)} steps); "
        f"predicted {ratio * sum(c['budget_s'] for c in wave):.0f} s")
    t0 = time.time()
    for c in wave:
        c["status"] = "running"
        launch(c)
    cut = False
    while True:
        for c in wave:
            if "wall_s" not in c and c["proc"].poll() is not None:
                c["wall_s"] = time.time() - c["t_start"]
        if all("wall_s" in c for c in wave):
            break
        if left() < RESERVE - 5 and not cut:
            log("deadline: SIGTERM to the runs still going (they checkpoint and stop)")
            for c in wave:
                if c["proc"].poll() is None:
                    c["proc"].send_signal(signal.SIGTERM)
                    c["status"] = "cut"
            cut = True
        if cut and left() < 5:
            for c in wave:
                if c["proc"].poll() is None:
                    c["proc"].kill()
        time.sleep(0.5)
    wall = time.time() - t0
    ratio = max(wall / sum(c["budget_s"] for c in wave), 0.2)
    for c in wave:
        c["rc"] = c["proc"].returncode
        if c["status"] != "cut":
            c["status"] = "done" if c["rc"] == 0 else f"exit {c['rc']}"
        m = os.path.join(W, "runs", c["name"], "metrics.jsonl")
        ms = [json.loads(l) for l in open(m) if l.strip()] if os.path.exists(m) else []
        c["steps_done"] = max([x["step"] for x in ms if "train_loss" in x], default=0)
        evaluate(c)
        log(f"  {c['name']}: {c['status']}, {c['steps_done']}/{c['plan']['steps']} steps in {c['wall_s']:.0f} s, "
            f"eval ppl {c.get('eval', {}).get('val_ppl')}")
    log(f"wave took {wall:.0f} s for {sum(c['budget_s'] for c in wave):.0f} s of budgets (ratio {ratio:.2f})")
    write_table()
for c in configs:
    if c["status"] == "queued":
        c["status"] = "skipped (time)"
write_table()
with tarfile.open(os.path.join(OUT, "curves.tar.gz"), "w:gz") as tf:
    for c in configs:
        for suffix in (os.path.join(c["name"], "metrics.jsonl"), c["name"] + ".log"):
            p = os.path.join(W, "runs", suffix)
            if os.path.exists(p):
                tf.add(p, arcname=suffix)
    for p, name in ((os.path.join(W, "tb_check.log"), "time-budget-check.log"),
                    (os.path.join(W, "runs", "time-budget-check", "metrics.jsonl"), "time-budget-check/metrics.jsonl")):
        if os.path.exists(p):
            tf.add(p, arcname=name)
print(open(os.path.join(OUT, "sweep.tsv")).read())
PY
step "done"
ls -la "$OUT" >> "$LOG"

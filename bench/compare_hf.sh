#!/usr/bin/env bash
# Peer comparison (issue 6, item 3), ONE device call on the GPU machine: `esm2 bench` (ours) and
# transformers' EsmForMaskedLM (bench/hf_throughput.py: bf16 autocast, SDPA, fused AdamW, eager and
# torch.compile) for the 8M, 150M and 650M presets on the same corpus's length distribution, same machine,
# same call. Prints a table and writes $OUT/hf_compare.json (ours/theirs ratios) plus the raw JSON and
# logs of every step.
# Usage (repository root on the device):  bench/compare_hf.sh [DEPS_DIR]
#   DEPS_DIR  the carried libsqlite3/libsnappy .debs (as bench/cuda_device_run.sh); default .carry/deps
# Environment: ESM2_BIN (an esm2 binary to use instead of building one), OUT (default /tmp/out), PRESETS (default "8M 150M 650M"), CORPUS (a prepared corpus to use
#   instead of preparing data/swissprot-sample's training FASTA), STEPS (timed steps, default 8),
#   HF_TIMEOUT (seconds per HF process, default 200: torch.compile of 650M needs ~2 minutes), BUDGET (seconds for everything after the build,
#   default 470: an HF process gets at most what is left of it, less 20 s for the summary).
# Each step is logged; a failing step does not stop the others. Wall time on an H100 with the build
# already there: about 8 minutes (torch.compile of 650M is the longest part).
set -uo pipefail
DEPS=${1:-.carry/deps}
OUT=${OUT:-/tmp/out}
PRESETS=${PRESETS:-"8M 150M 650M"}
STEPS=${STEPS:-8}
HF_TIMEOUT=${HF_TIMEOUT:-200}
BUDGET=${BUDGET:-470}
PY=${PY:-/opt/torch/.venv/bin/python3}
mkdir -p "$OUT"
LOG="$OUT/compare_hf.log"
step() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
export PATH=/opt/torch/.venv/bin:/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >> "$LOG" 2>&1

if [ -d "$DEPS" ]; then
  mkdir -p /tmp/deps
  for f in "$DEPS"/*.deb; do dpkg -x "$f" /tmp/deps; done
  export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
fi
if [ -x "${ESM2_BIN:-}" ]; then
  E=$ESM2_BIN  # a binary built earlier on this machine (e.g. by bench/int_device_run.sh)
  step "using $E"
else
  step "build"
  {
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DESM2_BUILD_BENCH=OFF -DCMAKE_CUDA_ARCHITECTURES=90a \
      -DCMAKE_PREFIX_PATH=/tmp/deps/usr -DSQLite3_INCLUDE_DIR=/tmp/deps/usr/include \
      -DSQLite3_LIBRARY=/tmp/deps/usr/lib/x86_64-linux-gnu/libsqlite3.so && time ninja -C build -j16 esm2
  } > "$OUT/build.log" 2>&1 || { step "build FAILED (tail of $OUT/build.log)"; tail -30 "$OUT/build.log"; exit 1; }
  E=./build/esm2
fi
T0=$SECONDS  # the budget starts after the build

if [ -z "${CORPUS:-}" ]; then
  CORPUS=/tmp/hfcmp_corpus
  step "prepare data/swissprot-sample (train) -> $CORPUS"
  $E prepare --fasta data/swissprot-sample/train.fasta.gz --clusters data/swissprot-sample/train_clusters.tsv \
    --output "$CORPUS" --force >> "$LOG" 2>&1 || step "prepare FAILED"
fi

# Ours: the packed token budget of one step equals the HF packed batch (rows x 1024), so the memory
# footprint is comparable; the padded HF batch holds fewer real tokens in the same slots.
for P in $PRESETS; do
  case $P in 8M) ROWS=64; BS=64 ;; 150M) ROWS=32; BS=32 ;; *) ROWS=16; BS=16 ;; esac
  step "ours: esm2 bench $P --micro-batch-tokens $((ROWS * 1024))"
  timeout 180 $E bench --backend cuda --preset "$P" --micro-batch-tokens $((ROWS * 1024)) --data "$CORPUS" \
    --steps "$STEPS" --warmup 2 --peak-tflops 989 --json "$OUT/ours_$P.json" >> "$LOG" 2>&1 || step "ours $P FAILED"
  tail -1 "$LOG"
  for C in 0 1; do
    FLAG=; [ $C = 1 ] && FLAG=--compile
    LEFT=$(( BUDGET - (SECONDS - T0) - 20 ))
    LIMIT=$(( LEFT < HF_TIMEOUT ? LEFT : HF_TIMEOUT ))
    if [ "$LIMIT" -lt 30 ]; then step "hf: $P compile=$C skipped: the ${BUDGET} s budget is spent"; continue; fi
    step "hf: $P compile=$C (batch $BS sequences padded; $ROWS full rows; limit $LIMIT s)"
    # With compile both modes have the shape [batch, 1024] (padded batches are padded to max length),
    # so the graph compiled for the first mode serves the second.
    timeout "$LIMIT" $PY bench/hf_throughput.py --corpus "$CORPUS" --preset "$P" $FLAG --modes packed,padded \
      --batch-size $BS --rows $ROWS --steps "$STEPS" --warmup 3 --json "$OUT/hf_${P}_c$C.json" >> "$LOG" 2>&1 ||
      step "hf $P compile=$C FAILED or timed out (partial JSON kept)"
    grep "hf_throughput: $P " "$LOG" | tail -2
  done
done

step "summary"
$PY - "$OUT" $PRESETS <<'PY' 2>&1 | tee -a "$LOG"
import json, os, sys
out, presets = sys.argv[1], sys.argv[2:]
def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
summary = {"machine": None, "presets": {}}
rows = []
for p in presets:
    ours = load(os.path.join(out, f"ours_{p}.json"))
    entry = {"ours": ours, "hf": []}
    o = ours["real_tokens_per_s"] if ours else None
    if ours:
        mib = ours.get("peak_device_memory_mib")
        rows.append((p, "esm2.cpp packed", ours["micro_batch_tokens"], o, ours.get("mfu"), None,
                     mib / 1024 if mib else None, "1.00"))
    for c in (0, 1):
        hf = load(os.path.join(out, f"hf_{p}_c{c}.json"))
        if not hf:
            continue
        summary["machine"] = hf.get("device")
        summary["torch"], summary["transformers"] = hf.get("torch"), hf.get("transformers")
        for r in hf["results"]:
            name = f"HF {'compile' if c else 'eager'} {r['mode']}"
            if "error" in r:
                rows.append((p, name, None, None, None, None, None, r["error"]))
                continue
            r["ours_over_theirs"] = o / r["real_tokens_per_s"] if o else None
            entry["hf"].append(r)
            rows.append((p, name, r["batch_size"], r["real_tokens_per_s"], r["mfu"], r["fill"], r.get("peak_gib"),
                         f"{r['ours_over_theirs']:.2f}" if o else "-"))
    summary["presets"][p] = entry
fmt = "| {:5} | {:20} | {:>7} | {:>14} | {:>6} | {:>6} | {:>8} | {:>12} |"
print(fmt.format("model", "system / batches", "batch", "real tokens/s", "MFU", "fill", "peak GiB", "ours/theirs"))
print(fmt.format("---", "---", "---:", "---:", "---:", "---:", "---:", "---:"))
for p, n, b, t, m, f, g, r in rows:
    print(fmt.format(p, n, b if b is not None else "-", f"{t:,.0f}" if t else "-", f"{m:.1%}" if m else "-",
                     f"{f:.0%}" if f else "-", f"{g:.1f}" if g else "-", r))
print(f"(machine: {summary['machine']}; batch = tokens per step for esm2.cpp, sequences / rows for HF)")
with open(os.path.join(out, "hf_compare.json"), "w") as f:
    json.dump(summary, f, indent=1)
PY
# At most 8 files come back from a device call: the JSON files travel as one archive.
(cd "$OUT" && tar -czf peers_json.tgz ./*.json && rm -f ./*.json)
ls -la "$OUT"

#!/usr/bin/env bash
# Where does a non-finite gradient with a finite loss come from? ONE device call (~4 minutes on an H100):
# trains 8M on the full Swiss-Prot corpus with a config that stopped on a NaN gradient in the 60 s sweep
# (bench/results/recipes-8M-swissprot: lr 4e-3; step 61, 70 or 166, by the planned length), then resumes from its last good state
# (`--on-nonfinite stop` saves the weights before the bad step) with ESM2_CHECK_FINITE=2: every tensor
# of forward and backward is read back and scanned (docs/reliability.md). Resume is bitwise, so the bad
# step repeats and the log names the first op and row (token, <pad>, labelled or not) that went
# non-finite.
# Usage (repository root on the device): DEPS=.carry/deps bench/nonfinite_device_run.sh
# Env: NF_CONFIG (the sweep config line, default below), NF_VALS (validations, hence checkpoints, per run).
# Writes under $OUT: sweep.log/sweep.tsv/sweep.json/curves.tar.gz (the run, by bench/sweep_device_run.sh),
# check.log (the resumed run up to its stop), check_full.log.gz (all of it).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
echo "${NF_CONFIG:-lr4e-3-8M 60 8M 65536 2 --lr 4e-3 --recipe short-run}" > /tmp/nf_configs.txt
CONFIGS=/tmp/nf_configs.txt TB_CHECK=0 CONC=1 VALS=${NF_VALS:-5} DEADLINE_S=${DEADLINE_S:-200} bench/sweep_device_run.sh
cmd=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['configs'][0]['command'])" "$OUT/sweep.json") ||
  { echo "no run command in sweep.json" >> "$OUT/sweep.log"; exit 1; }
cmd=${cmd/ --force/ --resume-if-exists}
echo "resume with ESM2_CHECK_FINITE=2: $cmd" > /tmp/check_raw.log
( export LD_LIBRARY_PATH=/tmp/deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}; ESM2_CHECK_FINITE=2 timeout 240 $cmd ) >> /tmp/check_raw.log 2>&1
echo "exit $?" >> /tmp/check_raw.log
# check.log: the resumed run up to its stop (the bad step's micro-batches); check_full.log.gz: everything
awk '{print} /^esm2: error/{exit}' /tmp/check_raw.log > "$OUT/check.log"
gzip -c /tmp/check_raw.log > "$OUT/check_full.log.gz"

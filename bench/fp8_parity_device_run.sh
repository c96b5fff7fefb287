#!/usr/bin/env bash
# Issue 19, parity on real data: 8M on the FULL Swiss-Prot corpus with the README's real-data recipe
# (docs/real-data.md: --preset 8M, the short-run recipe, planned for 200 s of wall time), once in
# bf16-mixed and once in fp8-mixed, with the SAME step count (planned from the bf16 throughput) and
# seed; both final checkpoints scored by `esm2 eval` on the 1% UR50 hold-out with the same masks.
# ONE device call of ~9 minutes on one H100 (both trainings side by side on the GPU: a run's result
# depends only on its steps; bench/sweep_device_run.sh does the work and writes its usual files).
# Usage (repository root on the device): DEPS=.carry/deps bench/fp8_parity_device_run.sh
# Carry: .carry/deps and .carry/swissprot (see bench/sweep_device_run.sh).
set -uo pipefail
B=${PARITY_BUDGET_S:-200}
cat > /tmp/fp8_parity_configs.txt <<CFG
readme-bf16 $B 8M 65536 2
readme-fp8 $B 8M 65536 2 --precision fp8-mixed
CFG
CONFIGS=/tmp/fp8_parity_configs.txt TB_CHECK=0 CONC=2 VALS=${VALS:-5} bench/sweep_device_run.sh

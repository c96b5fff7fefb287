#!/usr/bin/env bash
# The `esm2 prepare` scale benchmark: writes a synthetic UniRef-shaped input of N residues
# (scripts/make-uniref-like.py), prepares it from plain FASTA and from FASTA.gz (gzip -6, UniProt's
# level) with the UR50->UR90 TSV, and records wall time, residues/s, peak RSS (/usr/bin/time -v),
# corpus size, the machine load, then training start-up on the corpus (bench/train_start_bench:
# Corpus::open + sampler + first batch, with RSS) and `esm2 train` for one step on the CPU.
#   bench/prepare_scale.sh RESIDUES WORKDIR [BUILD_DIR=build]     e.g. bench/prepare_scale.sh 2e9 /tmp/ur2b
set -euo pipefail
N=${1:?residues}; W=${2:?work dir}; BUILD=${3:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$BUILD/esm2
mkdir -p "$W"
[ -f "$W/uniref90.fasta" ] || python3 "$ROOT/scripts/make-uniref-like.py" --residues "$N" --out "$W"
[ -f "$W/uniref90.fasta.gz" ] || gzip -6 -k "$W/uniref90.fasta"
ls -l "$W"
run() {  # label, prepare args...
  local label=$1; shift
  echo "== $label (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  /usr/bin/time -v "$B" prepare --force "$@" 2> "$W/time.txt" | tail -2
  grep -E "Elapsed|Maximum resident" "$W/time.txt"
}
run "plain FASTA + TSV" --fasta "$W/uniref90.fasta" --clusters "$W/uniref50_members.tsv" --output "$W/corpus"
echo "corpus: $(du -sb "$W/corpus" | cut -f1) bytes"
run "FASTA.gz + TSV" --fasta "$W/uniref90.fasta.gz" --clusters "$W/uniref50_members.tsv" --output "$W/corpus_gz"
cmp "$W/corpus/cluster_members.bin" "$W/corpus_gz/cluster_members.bin" && echo "gz corpus identical"
rm -rf "$W/corpus_gz"
echo "== train start-up (load: $(cut -d' ' -f1-3 /proc/loadavg))"
"$BUILD/train_start_bench" "$W/corpus"
"$B" prepare --force --fasta "$ROOT/data/swissprot-sample/valid.fasta.gz" --output "$W/valid" > /dev/null
/usr/bin/time -v "$B" train --train-data "$W/corpus" --valid-data "$W/valid" --preset demo --max-seq-length 512 \
  --micro-batch-tokens 2048 --num-steps 1 --warmup-steps 1 --val-check-interval 1 --limit-val-batches 1 \
  --disable-checkpointing --no-report --no-tensorboard --result-dir "$W/runs" --experiment-name scale \
  --backend cpu --threads 2 2> "$W/time.txt" | grep -E "train corpus|step "
grep -E "Elapsed|Maximum resident" "$W/time.txt"

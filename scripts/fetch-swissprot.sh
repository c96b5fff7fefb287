#!/usr/bin/env bash
# Builds the full UniRef-like Swiss-Prot corpus (the equivalent of the reference's
# download_bionemo_data) from Debian packages alone: GO-annotated UniProtKB/Swiss-Prot of January
# 2014 (metastudent-data), clustered like UniRef50/UniRef90 with mmseqs2 linclust.
#
#   scripts/fetch-swissprot.sh [--force] [--valid-clusters N] [OUTPUT_DIR]
#
# OUTPUT_DIR (default: runs/swissprot under the repository root) receives train.fasta,
# train_clusters.tsv, valid.fasta, train.db, validation.db, summary.tsv and README.md. The corpus is
# built in a temporary directory beside OUTPUT_DIR and renamed into place at the end, so OUTPUT_DIR
# is either absent or complete. See docs/fetch.md for the recipe and the measured numbers.
set -euo pipefail

readonly RECIPE="esm2.cpp fetch-swissprot v1"
readonly DATASET=/usr/share/metastudent-data/dataset_201401
readonly FILES=(train.fasta train_clusters.tsv valid.fasta train.db validation.db summary.tsv README.md)

usage() {
  cat <<EOF
usage: $0 [--force] [--valid-clusters N] [OUTPUT_DIR]
  OUTPUT_DIR          where the corpus goes (default: <repo>/runs/swissprot)
  --force             rebuild even if OUTPUT_DIR already holds a complete corpus
  --valid-clusters N  hold out N UR50 clusters for validation (default: 1% of them, rounded)
EOF
}

die() { echo "fetch-swissprot: $*" >&2; exit 1; }

force=0
valid_clusters=""
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --valid-clusters)
      [ $# -ge 2 ] || die "--valid-clusters needs a value"
      valid_clusters="$2"; shift ;;
    --valid-clusters=*) valid_clusters="${1#*=}" ;;
    -h|--help) usage; exit 0 ;;
    -*) usage >&2; die "unknown option '$1'" ;;
    *) [ -z "$out" ] || die "more than one OUTPUT_DIR given ('$out', '$1')"; out="$1" ;;
  esac
  shift
done
if [ -n "$valid_clusters" ]; then
  [[ "$valid_clusters" =~ ^[1-9][0-9]*$ ]] || die "--valid-clusters must be a positive integer, got '$valid_clusters'"
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${out:-$repo/runs/swissprot}"
out="${out%/}"
parent="$(dirname "$out")"
mkdir -p "$parent" || die "cannot create the output's parent directory '$parent'"
out="$(cd "$parent" && pwd)/$(basename "$out")"
parent="$(dirname "$out")"

# A corpus is complete when every file is there and summary.tsv names this recipe: the directory
# only ever appears by rename, so a present summary means the rest was written before it.
corpus_complete() {
  local f
  for f in "${FILES[@]}"; do [ -s "$1/$f" ] || return 1; done
  grep -qxF "recipe	$RECIPE" "$1/summary.tsv"
}
if [ -e "$out" ] && [ "$force" -eq 0 ]; then
  if corpus_complete "$out"; then
    echo "fetch-swissprot: $out already holds a complete corpus ($RECIPE); --force rebuilds it"
    exit 0
  fi
  die "$out exists but is not a complete corpus of '$RECIPE'; rerun with --force to replace it"
fi

t_start=$(date +%s)
step_name="setup"
step_log=/dev/null
work=""
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then
    echo "fetch-swissprot: step '$step_name' failed (exit $rc)" >&2
    if [ -s "$step_log" ]; then
      echo "fetch-swissprot: last lines of its log:" >&2
      tail -n 20 "$step_log" | sed 's/^/  | /' >&2
    fi
  fi
  if [ -n "$work" ] && [ -d "$work" ]; then rm -rf "$work"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() {
  step_name="$1"
  step_log="$work/logs/$(echo "$1" | tr ' /' '__').log"
  : >"$step_log"
  echo "fetch-swissprot: [$(( $(date +%s) - t_start ))s] $1"
}

# --- 1. Debian packages (idempotent; sudo only when not root) -----------------------------------
pkgs=(metastudent-data ncbi-blast+ mmseqs2 sqlite3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step_name="install ${missing[*]}"
  echo "fetch-swissprot: installing ${missing[*]} (metastudent-data is ~225 MB)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # Other processes may hold the dpkg lock for a while (e.g. a parallel install-deps.sh).
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi
for db in BPO MFO CCO; do
  [ -e "$DATASET/$db/goasp.fasta.pin" ] || die "missing BLAST database $DATASET/$db/goasp.fasta (metastudent-data)"
done

threads=$(nproc)
work="$(mktemp -d "$parent/.$(basename "$out").tmp.XXXXXX")"
mkdir -p "$work/logs" "$work/corpus"
corpus="$work/corpus"

# --- 2. Union of the three GO-annotated databases -----------------------------------------------
# Titles are "ACCESSION|GO:...,GO:..."; the same accession appears once per ontology, so only the
# first record of each is kept (BPO, then MFO, then CCO).
step "extract sequences (blastdbcmd)"
for db in BPO MFO CCO; do
  blastdbcmd -db "$DATASET/$db/goasp.fasta" -entry all -outfmt '%t	%s' 2>>"$step_log"
done | awk -F'\t' '
  NF != 2 || $2 == "" { printf "bad record %d: %s\n", NR, substr($0, 1, 80) > "/dev/stderr"; exit 1 }
  { split($1, a, "|"); if (!(a[1] in seen)) { seen[a[1]] = 1; print a[1] "\t" $2 } }' \
  >"$work/union.tsv" 2>>"$step_log"
awk -F'\t' '{ print ">" $1; print $2 }' "$work/union.tsv" >"$work/union.fasta"
n_union=$(wc -l <"$work/union.tsv")
[ "$n_union" -gt 0 ] || die "no sequences extracted from $DATASET"

# --- 3. UniRef-like clustering ------------------------------------------------------------------
for id in 90 50; do
  step "cluster at ${id}% identity (mmseqs easy-linclust, $threads threads)"
  mmseqs easy-linclust "$work/union.fasta" "$work/clu$id" "$work/mmseqs$id" \
    --min-seq-id "0.$id" -c 0.8 --cov-mode 1 --threads "$threads" >>"$step_log" 2>&1
  [ -s "$work/clu${id}_cluster.tsv" ] || die "mmseqs wrote no clu${id}_cluster.tsv"
  rm -rf "$work/mmseqs$id" "$work/clu${id}_all_seqs.fasta" "$work/clu${id}_rep_seq.fasta"
done

# --- 4. UR50 clusters over UR90 representatives, validation hold-out ----------------------------
step "split clusters"
# Every UR50 cluster gets a deterministic key: a polynomial hash (base 131, mod 2^31-1) of its
# representative's accession. The clusters with the smallest (key, accession) are held out whole;
# the key only depends on the accession, so the split is the same on every machine.
awk -F'\t' '
  BEGIN { for (i = 32; i < 127; i++) code[sprintf("%c", i)] = i }
  !($1 in seen) {
    seen[$1] = 1; h = 0
    for (i = 1; i <= length($1); i++) h = (h * 131 + code[substr($1, i, 1)]) % 2147483647
    print h "\t" $1
  }' "$work/clu50_cluster.tsv" | LC_ALL=C sort -t "$(printf '\t')" -k1,1n -k2,2 >"$work/ur50_keys.tsv"
n_ur50=$(wc -l <"$work/ur50_keys.tsv")
n_ur90=$(cut -f1 "$work/clu90_cluster.tsv" | LC_ALL=C sort -u | wc -l)
n_valid=${valid_clusters:-$(( (n_ur50 + 50) / 100 ))}
[ "$n_valid" -lt "$n_ur50" ] || die "--valid-clusters $n_valid leaves no training cluster (there are $n_ur50)"
head -n "$n_valid" "$work/ur50_keys.tsv" | cut -f2 >"$work/valid_ids.txt"

# Training members: the UR90 representatives whose UR50 cluster is not held out. A UR90 cluster
# that shares any sequence with a held-out UR50 cluster is dropped as well, since linclust runs
# the two identities independently and such a representative is >=90% identical to validation data.
awk -F'\t' -v out="$work/train_pairs.tsv" -v dropped="$work/dropped.txt" '
  FILENAME == ARGV[1] { valid[$1] = 1; next }
  FILENAME == ARGV[2] { ur50[$2] = $1; next }
  {
    ur90[$2] = $1
    if (!($1 in rep)) { rep[$1] = 1; reps[++n] = $1 }
    if (valid[ur50[$2]]) tainted[$1] = 1
  }
  END {
    for (i = 1; i <= n; i++) {
      r = reps[i]
      if (!(r in ur50)) { printf "UR90 representative %s has no UR50 cluster\n", r > "/dev/stderr"; exit 1 }
      if (valid[ur50[r]]) continue
      if (r in tainted) { print r > dropped; continue }
      print ur50[r] "\t" r > out
    }
  }' "$work/valid_ids.txt" "$work/clu50_cluster.tsv" "$work/clu90_cluster.tsv" 2>>"$step_log"
touch "$work/dropped.txt"
LC_ALL=C sort -t "$(printf '\t')" -k1,1 -k2,2 "$work/train_pairs.tsv" >"$corpus/train_clusters.tsv"
n_dropped=$(wc -l <"$work/dropped.txt")

# --- 5. Corpus files ----------------------------------------------------------------------------
step "write FASTA"
# FASTA wrapped at 60 columns like UniProt's; the TSV twins feed sqlite3's .import.
awk -F'\t' -v tf="$corpus/train.fasta" -v vf="$corpus/valid.fasta" \
    -v tt="$work/train.tsv" -v vt="$work/valid.tsv" '
  function fasta(file, id, seq,   i) {
    print ">" id > file
    for (i = 1; i <= length(seq); i += 60) print substr(seq, i, 60) > file
  }
  FILENAME == ARGV[1] { train[$2] = 1; next }
  FILENAME == ARGV[2] { valid[$1] = 1; next }
  $1 in train { fasta(tf, $1, $2); print > tt }
  $1 in valid { fasta(vf, $1, $2); print > vt }' \
  "$corpus/train_clusters.tsv" "$work/valid_ids.txt" "$work/union.tsv" 2>>"$step_log"

step "write SQLite (train.db, validation.db)"
for pair in train.tsv:train.db valid.tsv:validation.db; do
  sqlite3 -bail "$corpus/${pair#*:}" >>"$step_log" 2>&1 <<EOF
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
CREATE TABLE protein(id TEXT PRIMARY KEY, sequence TEXT);
.mode tabs
.import '$work/${pair%%:*}' protein
EOF
done

step "check and summarise"
count_fasta() { grep -c '^>' "$1"; }
db_count() { sqlite3 "$1" 'SELECT count(*) FROM protein'; }
residues() { awk -F'\t' '{ n += length($2) } END { print n + 0 }' "$1"; }
n_train=$(count_fasta "$corpus/train.fasta")
n_valid_seq=$(count_fasta "$corpus/valid.fasta")
n_pairs=$(wc -l <"$corpus/train_clusters.tsv")
n_train_clusters=$(cut -f1 "$corpus/train_clusters.tsv" | uniq | wc -l)
[ "$n_train" -eq "$n_pairs" ] || die "train.fasta has $n_train records but train_clusters.tsv $n_pairs members"
[ "$n_valid_seq" -eq "$n_valid" ] || die "valid.fasta has $n_valid_seq records, expected $n_valid"
[ "$(db_count "$corpus/train.db")" -eq "$n_train" ] || die "train.db row count differs from train.fasta"
[ "$(db_count "$corpus/validation.db")" -eq "$n_valid" ] || die "validation.db row count differs from valid.fasta"
overlap=$(LC_ALL=C comm -12 <(cut -f2 "$corpus/train_clusters.tsv" | LC_ALL=C sort) <(LC_ALL=C sort "$work/valid_ids.txt") | wc -l)
[ "$overlap" -eq 0 ] || die "$overlap validation sequences are also training sequences"
res_union=$(residues "$work/union.tsv")
res_train=$(residues "$work/train.tsv")
res_valid=$(residues "$work/valid.tsv")
n_empty=$(( n_ur50 - n_valid - n_train_clusters ))
{
  printf 'recipe\t%s\n' "$RECIPE"
  printf 'source\tmetastudent-data %s (%s/{BPO,MFO,CCO}/goasp.fasta)\n' \
    "$(dpkg-query -W -f='${Version}' metastudent-data)" "$DATASET"
  printf 'mmseqs2\t%s\n' "$(dpkg-query -W -f='${Version}' mmseqs2)"
  printf 'sequences\t%s\n' "$n_union"
  printf 'residues\t%s\n' "$res_union"
  printf 'ur90_clusters\t%s\n' "$n_ur90"
  printf 'ur50_clusters\t%s\n' "$n_ur50"
  printf 'valid_clusters\t%s\n' "$n_valid"
  printf 'valid_sequences\t%s\n' "$n_valid_seq"
  printf 'valid_residues\t%s\n' "$res_valid"
  printf 'train_clusters\t%s\n' "$n_train_clusters"
  printf 'train_sequences\t%s\n' "$n_train"
  printf 'train_residues\t%s\n' "$res_train"
  printf 'ur90_dropped_overlapping_valid\t%s\n' "$n_dropped"
  printf 'ur50_clusters_without_training_member\t%s\n' "$n_empty"
} >"$work/summary.tsv"
cat >"$corpus/README.md" <<EOF
# Swiss-Prot corpus (UniRef-like), built by scripts/fetch-swissprot.sh

Source: UniProtKB/Swiss-Prot, January 2014, GO-annotated subset shipped by the Debian package
metastudent-data (CC BY 4.0, The UniProt Consortium). Union of the BPO, MFO and CCO BLAST databases,
first record per accession; clustered with \`mmseqs easy-linclust --min-seq-id 0.9|0.5 -c 0.8
--cov-mode 1\`. A UR50 cluster's members are the UR90 representatives inside it.

Validation: $n_valid UR50 clusters held out whole (smallest polynomial hash of the representative's
accession), one sequence each (the UR50 representative). UR90 clusters sharing a sequence with a
held-out cluster are dropped from training ($n_dropped of them).

| file | content |
|---|---|
| train.fasta | $n_train UR90 representatives ($res_train residues) of $n_train_clusters training UR50 clusters |
| train_clusters.tsv | \`ur50_id<TAB>ur90_id\`, one line per member |
| valid.fasta | $n_valid_seq validation sequences ($res_valid residues) |
| train.db, validation.db | the same sequences, \`CREATE TABLE protein(id TEXT PRIMARY KEY, sequence TEXT)\` |
| summary.tsv | the counts, key<TAB>value |

Totals: $n_union sequences, $res_union residues, $n_ur90 UR90 clusters, $n_ur50 UR50 clusters.
EOF
# summary.tsv last: its recipe line is what marks the corpus complete.
mv "$work/summary.tsv" "$corpus/summary.tsv"

step "install into $out"
if [ -e "$out" ]; then mv "$out" "$work/previous"; fi
mv "$corpus" "$out"
step_name="done"
echo "fetch-swissprot: done in $(( $(date +%s) - t_start ))s -> $out"
sed 's/^/  /' "$out/summary.tsv"

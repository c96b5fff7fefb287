#!/usr/bin/env python3
"""Writes a synthetic UniRef-shaped input of about N residues for `esm2 prepare` scale tests.

Sequences are mutated copies of the bundled real Swiss-Prot sample (data/swissprot-sample): each
UR50-like cluster takes one real sequence as its seed, and each of its UR90-like members is the
seed with a substituted window (a random amino-acid substitution table over 5-30% of it), a small
insertion or deletion, and trimmed ends. Cluster sizes (UR90 members per UR50 cluster) are heavy-
tailed like UniRef's: P(size >= k) = k^-1.35, capped at 20,000, so ~60% of clusters are singletons
and the mean is ~3.5 members (UniRef50/90 hold ~60M/~200M clusters).

Output (in --out):
  uniref90.fasta          `>UniRef90_<acc> <name> n=<k> Tax=<taxon> TaxID=<id> RepID=<entry>` headers,
                          60 residues per line, records shuffled in windows of 4096 (UniRef's FASTA is
                          not grouped by UR50 cluster)
  uniref50_members.tsv    `UniRef50_<acc><TAB>UniRef90_<acc>`, one line per UR90 member, cluster order
  uniref50.xml[.gz]       with --xml: UniProt's uniref50.xml layout (schema uniref.xsd): one <entry> per
                          cluster, a <representativeMember> and <member>s whose dbReference
                          (UniProtKB ID / UniParc ID) carries <property type="UniRef90 ID">; 1-3
                          UniProtKB members per UR90 cluster, as in the real file
Deterministic for a given --seed. Python 3 standard library only.

  scripts/make-uniref-like.py --residues 200000000 --out /tmp/uniref200m [--xml] [--gzip-xml]
"""
import argparse
import gzip
import os
import random
import sys

AMINO = "LAGVSERTIDPKQNFYMHWC"
HERE = os.path.dirname(os.path.abspath(__file__))


def read_fasta_gz(path):
    seqs, cur = [], []
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith(">"):
                if cur:
                    seqs.append("".join(cur))
                cur = []
            else:
                cur.append(line.strip())
    if cur:
        seqs.append("".join(cur))
    return seqs


def accession(i):
    # UniProt-like: A0A + 7 upper-case base-36 characters, unique per index.
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = []
    for _ in range(7):
        i, r = divmod(i, 36)
        out.append(digits[r])
    return "A0A" + "".join(reversed(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--residues", type=float, required=True, help="about this many residues in all")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--xml", action="store_true", help="also write uniref50.xml")
    ap.add_argument("--gzip-xml", action="store_true", help="write the XML gzip-compressed (uniref50.xml.gz)")
    ap.add_argument("--sample", default=os.path.join(HERE, "..", "data", "swissprot-sample"))
    args = ap.parse_args()
    target = int(args.residues)
    rng = random.Random(args.seed)
    pool = read_fasta_gz(os.path.join(args.sample, "train.fasta.gz")) + read_fasta_gz(
        os.path.join(args.sample, "valid.fasta.gz"))
    pool = [s for s in pool if len(s) >= 30]
    tables = []
    for _ in range(64):
        perm = list(AMINO)
        rng.shuffle(perm)
        tables.append(str.maketrans(AMINO, "".join(perm)))
    taxa = [("Homo sapiens", 9606), ("Escherichia coli", 562), ("Mus musculus", 10090),
            ("Saccharomyces cerevisiae", 4932), ("Arabidopsis thaliana", 3702), ("Bacillus subtilis", 1423),
            ("Drosophila melanogaster", 7227), ("unclassified sequences", 12908)]

    os.makedirs(args.out, exist_ok=True)
    fa = open(os.path.join(args.out, "uniref90.fasta"), "w", buffering=1 << 22)
    tsv = open(os.path.join(args.out, "uniref50_members.tsv"), "w", buffering=1 << 22)
    xml = None
    if args.xml:
        if args.gzip_xml:
            xml = gzip.open(os.path.join(args.out, "uniref50.xml.gz"), "wt", compresslevel=1)
        else:
            xml = open(os.path.join(args.out, "uniref50.xml"), "w", buffering=1 << 22)
        xml.write('<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
                  '<UniRef50 xmlns="http://uniprot.org/uniref" '
                  'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                  'xsi:schemaLocation="http://uniprot.org/uniref http://www.uniprot.org/support/docs/uniref.xsd" '
                  'releaseDate="2026-01-01" version="synthetic">\n')

    window = []

    def flush_window():
        rng.shuffle(window)
        fa.write("".join(window))
        window.clear()

    residues = sequences = clusters = uniprot = 0
    while residues < target:
        seed_seq = pool[rng.randrange(len(pool))]
        size = min(int((1.0 - rng.random()) ** (-1 / 1.35)), 20000)
        rep50 = "UniRef50_" + accession(sequences)
        taxon, taxid = taxa[rng.randrange(len(taxa))]
        name = "Synthetic protein %d" % clusters
        if xml:
            xml.write('<entry id="%s" updated="2026-01-01">\n<name>Cluster: %s</name>\n'
                      '<property type="member count" value="%d"/>\n'
                      '<property type="common taxon" value="%s"/>\n<property type="common taxon ID" value="%d"/>\n'
                      % (rep50, name, size, taxon, taxid))
        for k in range(size):
            s = seed_seq
            if k > 0:  # the representative is the seed itself
                n = len(s)
                a = rng.randrange(n)
                b = min(n, a + max(1, int(n * rng.uniform(0.05, 0.3))))
                s = s[:a] + s[a:b].translate(tables[rng.randrange(64)]) + s[b:]
                p = rng.randrange(len(s))
                if rng.random() < 0.5:
                    s = s[:p] + s[p + rng.randrange(1, 10):]
                else:
                    s = s[:p] + "".join(rng.choice(AMINO) for _ in range(rng.randrange(1, 10))) + s[p:]
                lo, hi = rng.randrange(4), rng.randrange(4)
                s = s[lo:len(s) - hi] or seed_seq
            acc = accession(sequences)
            ur90 = "UniRef90_" + acc
            members90 = 1 + (rng.random() < 0.3) + (rng.random() < 0.1)
            body = "\n".join(s[i:i + 60] for i in range(0, len(s), 60))
            window.append(">%s %s n=%d Tax=%s TaxID=%d RepID=%s_SYNTH\n%s\n"
                          % (ur90, name, members90, taxon, taxid, acc, body))
            if len(window) >= 4096:
                flush_window()
            tsv.write("%s\t%s\n" % (rep50, ur90))
            if xml:
                for j in range(members90):
                    tag = "representativeMember" if (k == 0 and j == 0) else "member"
                    uid = "%s%d_SYNTH" % (acc, j)
                    kind, ref = ("UniProtKB ID", uid) if j < 2 else ("UniParc ID", "UPI%010X" % uniprot)
                    xml.write('<%s>\n<dbReference type="%s" id="%s">\n' % (tag, kind, ref))
                    if kind == "UniProtKB ID":
                        xml.write('<property type="UniProtKB accession" value="%s%d"/>\n' % (acc, j))
                    xml.write('<property type="UniParc ID" value="UPI%010X"/>\n'
                              '<property type="UniRef100 ID" value="UniRef100_%s%d"/>\n'
                              '<property type="UniRef90 ID" value="%s"/>\n'
                              '<property type="protein name" value="%s"/>\n'
                              '<property type="source organism" value="%s"/>\n'
                              '<property type="NCBI taxonomy" value="%d"/>\n'
                              '<property type="length" value="%d"/>\n</dbReference>\n'
                              % (uniprot, acc, j, ur90, name, taxon, taxid, len(s)))
                    if tag == "representativeMember":
                        xml.write('<sequence length="%d" checksum="0000000000000000">%s</sequence>\n' % (len(s), s))
                    xml.write("</%s>\n" % tag)
                    uniprot += 1
            residues += len(s)
            sequences += 1
        clusters += 1
        if xml:
            xml.write("</entry>\n")
    flush_window()
    if xml:
        xml.write("</UniRef50>\n")
        xml.close()
    fa.close()
    tsv.close()
    print("wrote %s: %d residues, %d UR90 sequences, %d UR50 clusters" % (args.out, residues, sequences, clusters),
          file=sys.stderr)


if __name__ == "__main__":
    main()

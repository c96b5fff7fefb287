#!/usr/bin/env python3
"""Writes the masked-marginal score fixture of tests/fixtures/score/ with Hugging Face transformers: the
independent oracle that tests/integration/score_fixture_test.cpp compares `esm2 score` against (issue 9,
item 3).

Masked-marginal scores (Meier et al. 2021), the definition `esm2 score` implements
(src/infer/inference.h): for a variant (one or more substitutions), mask ALL its positions at once in the
wild type (<cls> wt <eos>, batch of one, no padding), take log-softmax over the whole 33-token vocabulary
at each masked position and sum log p(mut) - log p(wt). The single-mutant matrix [L, 20] masks one
position at a time; column order is the token order L A G V S E R T I D P K Q N F Y M H W C; the wild
type's own entry is exactly 0.

The model is one of the committed HF fixture checkpoints (default tests/fixtures/hf/tiny-hd64/model,
written by transformers' save_pretrained), run in float64 with eager attention on the CPU, so the
fixture carries no float32 or kernel error of its own.
Needs torch + transformers (the GPU machine's /opt/torch/.venv/bin/python3; CPU only, seconds):
  make-score-fixture.py [--checkpoint tests/fixtures/hf/tiny-hd64/model] [--out tests/fixtures/score/tiny-hd64.json]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import transformers

VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K",
         "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]
CLS, EOS, MASK = 0, 2, 32
STANDARD = VOCAB[4:24]  # the matrix's 20 columns, in token order
# A real protein's N-terminal 60 residues (ubiquitin, 1-60, then a short tail of rarer letters) so that
# the tiny model's contexts hold every standard amino acid.
WILD_TYPE = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNWHCA"
# Singles, doubles, a triple, a repeated position set in a different order, the first and last residue.
VARIANTS = ["M1A", "Q2E", "K6R", "L8P", "E16D", "A64G", "C63W", "F4Y:V5I", "V5I:F4Y", "T7S:G10A:K11R",
            "I13V:E18K", "D21N:T22S:I23L:E24Q", "Y59F", "W61C", "H62Q"]


def token_ids(seq):
    return [VOCAB.index(c) for c in seq]


def masked_log_probs(model, wt_ids, positions):
    """[len(positions), 33] float64 log-softmax at the 0-based residue positions, all masked together."""
    ids = [CLS] + list(wt_ids) + [EOS]
    for p in positions:
        ids[p + 1] = MASK
    x = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    return lp[[p + 1 for p in positions]].numpy()


def parse(variant, wt):
    subs = []
    for s in variant.split(":"):
        w, pos, m = s[0], int(s[1:-1]), s[-1]
        assert wt[pos - 1] == w, f"{s}: wild type has {wt[pos - 1]} at {pos}"
        subs.append((pos - 1, w, m))
    return subs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--checkpoint", default=os.path.join(here, "..", "tests", "fixtures", "hf", "tiny-hd64", "model"))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "score", "tiny-hd64.json"))
    args = ap.parse_args()
    try:
        model = transformers.EsmForMaskedLM.from_pretrained(args.checkpoint, dtype=torch.float64,
                                                            attn_implementation="eager")
    except TypeError:  # transformers 4.x spells it torch_dtype
        model = transformers.EsmForMaskedLM.from_pretrained(args.checkpoint, torch_dtype=torch.float64,
                                                            attn_implementation="eager")
    model = model.double().eval()  # buffers too (the rotary inv_freq table)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    wt = token_ids(WILD_TYPE)

    variants = []
    for v in VARIANTS:
        subs = parse(v, WILD_TYPE)
        positions = sorted({p for p, _, _ in subs})
        lp = masked_log_probs(model, wt, positions)
        score = sum(lp[positions.index(p)][VOCAB.index(m)] - lp[positions.index(p)][VOCAB.index(w)]
                    for p, w, m in subs)
        variants.append({"variant": v, "score": float(score)})

    matrix = []
    for i in range(len(wt)):
        lp = masked_log_probs(model, wt, [i])[0]
        matrix.append([float(lp[VOCAB.index(a)] - lp[wt[i]]) for a in STANDARD])
    m = np.array(matrix)
    # Self-checks of the oracle: wild-type entries are 0; a single mutant's score is its matrix entry.
    for i, c in enumerate(WILD_TYPE):
        assert m[i, STANDARD.index(c)] == 0.0
    for v in variants:
        subs = parse(v["variant"], WILD_TYPE)
        if len(subs) == 1:
            p, _, mut = subs[0]
            assert abs(m[p, STANDARD.index(mut)] - v["score"]) < 1e-12, v

    rel = os.path.relpath(os.path.abspath(args.checkpoint), os.path.join(here, ".."))
    out = {
        "format": "esm2-score-fixture", "version": 1,
        "generator": "scripts/make-score-fixture.py", "transformers": transformers.__version__,
        "torch": torch.__version__, "dtype": "float64", "attn_implementation": "eager",
        "checkpoint": rel, "wild_type": WILD_TYPE,
        "definition": "sum over substitutions of log_softmax(logits)[mut] - [wt] at the variant's positions, "
                      "all masked at once; log-softmax over all 33 tokens",
        "variants": variants,
        "matrix_columns": STANDARD,
        "matrix": matrix,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"{args.out}: {len(variants)} variants, matrix {m.shape[0]} x {m.shape[1]}, "
          f"scores in [{m.min():.4f}, {m.max():.4f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

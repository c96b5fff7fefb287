#!/usr/bin/env python3
"""Checks that Hugging Face transformers loads an esm2.cpp checkpoint cleanly and reproduces our logits.

Usage:
  verify-hf-load.py CHECKPOINT_DIR INPUTS.safetensors [--tol 1e-4] [--dtype float32|bfloat16] [--device cpu]

CHECKPOINT_DIR is what our trainer writes (config.json, model.safetensors, vocab.txt, tokenizer files).
INPUTS.safetensors holds
  input_ids       int64 (or int32) [B, L]   token ids, right-padded with <pad>=1
  attention_mask  int64 (or int32) [B, L]   1 = real token, 0 = padding (optional: all ones)
  logits          float32 (or bf16) [B, L, V] our logits for the same inputs
The script loads EsmForMaskedLM.from_pretrained(dir) and AutoTokenizer.from_pretrained(dir) while capturing
every log record, warning and printed line; a missing / unexpected / mismatched key (in the loading info or
in any captured message) or a tokenizer whose vocabulary is not the ESM-2 one is a failure. It then runs the
inputs (eager attention) and compares logits at real (mask = 1) positions.
Exit status: 0 = loaded cleanly and max |ours - HF| <= tol; 1 = anything else (reason printed on stderr).
"""
import argparse
import contextlib
import io
import logging
import re
import sys
import warnings

ESM2_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K",
              "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]

# A message about weights that were not loaded, not used or loaded with the wrong shape.
KEY_PROBLEM = re.compile(r"missing|unexpected|mismatch|newly initiali[sz]ed|not initiali[sz]ed|were not used|"
                         r"not used when initiali[sz]ing", re.IGNORECASE)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"log {record.name} {record.levelname}: {record.getMessage()}")


def _load(checkpoint, dtype, transformers):
    """Loads model and tokenizer; returns (model, tokenizer, loading_info, captured messages)."""
    handler = _Collect()
    tlogger = logging.getLogger("transformers")
    tlogger.addHandler(handler)
    old_level = tlogger.level
    tlogger.setLevel(logging.WARNING)
    out, err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            kwargs = dict(attn_implementation="eager", output_loading_info=True)
            try:
                model, info = transformers.EsmForMaskedLM.from_pretrained(checkpoint, dtype=dtype, **kwargs)
            except TypeError:  # transformers 4.x spells it torch_dtype
                model, info = transformers.EsmForMaskedLM.from_pretrained(checkpoint, torch_dtype=dtype, **kwargs)
            tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    finally:
        tlogger.removeHandler(handler)
        tlogger.setLevel(old_level)
    messages = list(handler.messages)
    messages += [f"warning {w.category.__name__}: {w.message}" for w in caught]
    messages += [f"stdout: {line}" for line in out.getvalue().splitlines() if line.strip()]
    messages += [f"stderr: {line}" for line in err.getvalue().splitlines() if line.strip()]
    return model, tokenizer, info, messages


def _loading_problems(info, messages):
    problems = []
    for key, value in (info or {}).items():
        if value and re.search(r"missing|unexpected|mismatch|error", key, re.IGNORECASE):
            problems.append(f"loading info {key}: {sorted(map(str, value))}")
    problems += [m for m in messages if KEY_PROBLEM.search(m)]
    return problems


def _tokenizer_problems(tokenizer):
    problems = []
    vocab = tokenizer.get_vocab()
    order = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if order != ESM2_VOCAB:
        problems.append(f"tokenizer vocabulary differs from ESM-2's 33 tokens: {order}")
    ids = list(tokenizer("LAGVX")["input_ids"])
    if ids != [0, 4, 5, 6, 7, 24, 2]:
        problems.append(f"tokenizer encodes 'LAGVX' as {ids}, expected [0, 4, 5, 6, 7, 24, 2]")
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, tokenizer files)")
    ap.add_argument("inputs", help="safetensors with input_ids, attention_mask and our logits")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest accepted max |ours - HF| logit difference")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="dtype transformers loads the weights in and computes with")
    ap.add_argument("--device", default="cpu", help="torch device for the HF forward pass")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from safetensors.torch import load_file

    dtype = getattr(torch, args.dtype)
    try:
        model, tokenizer, info, messages = _load(args.checkpoint, dtype, transformers)
    except Exception as exc:  # a broken checkpoint must be one line, not a traceback
        print(f"FAIL {args.checkpoint}: transformers could not load it: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    for m in messages:
        print(f"captured {m}")
    problems = _loading_problems(info, messages) + _tokenizer_problems(tokenizer)

    tensors = load_file(args.inputs)
    for key in ("input_ids", "logits"):
        if key not in tensors:
            print(f"FAIL {args.inputs}: no tensor '{key}'", file=sys.stderr)
            return 1
    ids = tensors["input_ids"].long()
    mask = tensors.get("attention_mask", torch.ones_like(ids)).long()
    ours = tensors["logits"].float()
    vocab = model.config.vocab_size
    if ids.dim() != 2 or mask.shape != ids.shape or ours.shape != (*ids.shape, vocab):
        print(f"FAIL {args.inputs}: shapes input_ids {list(ids.shape)}, attention_mask {list(mask.shape)}, "
              f"logits {list(ours.shape)} do not fit [B, L] / [B, L, {vocab}]", file=sys.stderr)
        return 1

    model = model.to(args.device).eval()
    with torch.no_grad():
        hf = model(input_ids=ids.to(args.device), attention_mask=mask.to(args.device)).logits.float().cpu()
    real = mask.bool()
    diff = (hf - ours).abs()[real]
    max_diff = diff.max().item() if diff.numel() else 0.0
    mean_diff = diff.mean().item() if diff.numel() else 0.0
    print(f"transformers {transformers.__version__} dtype {args.dtype}: {int(real.sum())} positions, "
          f"max_abs_diff {max_diff:.3e}, mean_abs_diff {mean_diff:.3e}, tol {args.tol:.1e}")
    if not torch.isfinite(ours[real]).all():
        problems.append("our logits hold NaN or inf at real positions")
    if not max_diff <= args.tol:
        problems.append(f"max_abs_diff {max_diff:.3e} exceeds tol {args.tol:.1e}")
    for p in problems:
        print(f"FAIL {args.checkpoint}: {p}", file=sys.stderr)
    if problems:
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

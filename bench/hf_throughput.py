#!/usr/bin/env python3
"""Training throughput of Hugging Face transformers' EsmForMaskedLM on an esm2.cpp corpus's lengths.

The peer side of bench/compare_hf.sh (issue 6, item 3). Measures full training steps (forward +
backward + clip + fused AdamW) of a randomly initialised EsmForMaskedLM of a preset's shape
(src/model/config.cpp) the way an HF user trains: bf16 autocast over fp32 weights,
attn_implementation="sdpa", torch.optim.AdamW(fused=True), optionally torch.compile. Two batch modes:
  padded  random (not length-sorted) batches of --batch-size sequences drawn from the corpus with our
          sampler's recipe (scripts/esm2_corpus.py), right-padded to the longest (multiple of 8), or with
          --compile to --max-seq-length (one static shape): what HF training on this data really gets;
  packed  --rows rows of exactly --max-seq-length real tokens (sequences concatenated): the upper
          bound, every slot a real token (attention spans the row, so not correct packed training).
Throughput counts REAL tokens (non-pad, <cls>/<eos> included) per second of timed steps after
--warmup untimed ones; each step is bracketed by torch.cuda.synchronize(), batches are built before
timing and copied to the GPU inside the step. MFU uses performance.md's formula with seq_eff =
Σ L² / Σ L over the real sequences (padded) or the row length (packed).
  hf_throughput.py --corpus DIR --preset 8M [--compile] [--modes padded,packed] --json OUT.json
"""
import argparse
import json
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import esm2_corpus as ec  # noqa: E402


def log(msg):
    print(f"hf_throughput: {msg}", flush=True)


def make_batches(args, sampler, rng, mode, count):
    out = []
    for _ in range(count):
        if mode == "padded":
            samples = [ec.mask_tokens(sampler.next(), rng) for _ in range(args.batch_size)]
            # torch.compile: padding="max_length", one static shape compiled during warm-up; padding to
            # the longest changes the shape every batch and could recompile inside the timed steps.
            ids, att, lab = ec.pad_batch(samples, multiple=8, pad_to=args.max_seq_length if args.compile else None)
            lens = np.array([len(s[0]) for s in samples], dtype=np.float64)
            seq_eff = float((lens ** 2).sum() / lens.sum())
        else:
            ids, att, lab = ec.full_rows(sampler, rng, args.rows, args.max_seq_length)
            seq_eff = float(args.max_seq_length)
        out.append((ids, att, lab, seq_eff))
    return out


def run_mode(args, torch, model, mode, sampler, rng):
    dev = torch.device("cuda")
    batches = make_batches(args, sampler, rng, mode, args.warmup + args.steps)
    # Pinned host copies so the per-step host-to-device copy is the DataLoader(pin_memory=True) one.
    pinned = [tuple(torch.from_numpy(x).pin_memory() for x in b[:3]) + (b[3],) for b in batches]
    fwd = torch.compile(model) if args.compile else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01, fused=True)
    torch.cuda.reset_peak_memory_stats()
    real = slots = 0
    flops = seconds = warm_s = 0.0
    losses = []
    for i, (ids, att, lab, seq_eff) in enumerate(pinned):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ids_d, att_d, lab_d = (x.to(dev, non_blocking=True) for x in (ids, att, lab))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(input_ids=ids_d, attention_mask=att_d, labels=lab_d).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        s = time.perf_counter() - t0
        if i < args.warmup:
            warm_s += s
            continue
        n = int(att.sum())
        real += n
        slots += att.numel()
        seconds += s
        flops += n * ec.train_flops_per_token(args.preset, seq_eff)
        losses.append(float(loss))
    tps = real / seconds
    return {
        "mode": mode, "compile": args.compile, "preset": args.preset,
        "batch_size": args.batch_size if mode == "padded" else args.rows,
        "steps": args.steps, "warmup": args.warmup, "warmup_seconds": warm_s,
        "real_tokens_per_step": real / args.steps, "fill": real / slots,
        "real_tokens_per_s": tps, "step_seconds": seconds / args.steps,
        "achieved_tflops": flops / seconds / 1e12, "mfu": flops / seconds / 1e12 / args.peak_tflops,
        "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "last_loss": losses[-1],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, help="corpus directory made by `esm2 prepare`")
    ap.add_argument("--preset", default="8M", choices=sorted(ec.PRESETS))
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--modes", default="padded,packed", help="comma-separated: padded, packed")
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per padded batch")
    ap.add_argument("--rows", type=int, default=64, help="rows per packed batch")
    ap.add_argument("--max-seq-length", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per mode (compilation happens here)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100 SXM)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", required=True, help="write the results here")
    args = ap.parse_args()

    import torch
    import transformers
    corpus = ec.Corpus(args.corpus)
    sampler = ec.Sampler(corpus, args.seed, args.max_seq_length)
    rng = np.random.default_rng(args.seed + 1)
    torch.manual_seed(args.seed)
    with torch.device("cuda"):
        model = ec.new_hf_model(args.preset, "sdpa")
    model.train()
    info = {"preset": args.preset, "compile": args.compile, "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "attn_implementation": model.config._attn_implementation, "corpus": os.path.abspath(args.corpus),
            "parameters": sum(p.numel() for p in model.parameters()), "results": []}
    log(f"{args.preset} ({info['parameters'] / 1e6:.1f}M parameters, attention {info['attn_implementation']}, "
        f"compile {args.compile}) on {info['device']}")
    for mode in args.modes.split(","):
        try:
            r = run_mode(args, torch, model, mode, sampler, rng)
            log(f"{args.preset} {mode:6s} compile={int(args.compile)}: {r['real_tokens_per_s']:,.0f} real tokens/s, "
                f"fill {r['fill']:.1%}, MFU {r['mfu']:.1%}, {r['step_seconds']:.3f} s/step, peak {r['peak_gib']:.1f} GiB, "
                f"warm-up {r['warmup_seconds']:.1f} s")
        except torch.cuda.OutOfMemoryError:
            r = {"mode": mode, "compile": args.compile, "preset": args.preset, "error": "out of memory"}
            log(f"{args.preset} {mode}: out of memory")
        except Exception as e:  # one failing mode must not lose the others' numbers
            r = {"mode": mode, "compile": args.compile, "preset": args.preset, "error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        info["results"].append(r)
        torch.cuda.empty_cache()
        with open(args.json, "w") as f:  # rewritten after each mode: a timeout keeps what was measured
            json.dump(info, f, indent=1)
    return 0 if all("error" not in r for r in info["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())

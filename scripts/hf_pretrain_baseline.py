#!/usr/bin/env python3
"""Pretrains transformers' EsmForMaskedLM from scratch on an esm2.cpp prepared corpus for a fixed wall
time: the Hugging Face baseline of issue 9 item 4 (bench/pretrain_device_run.sh runs it beside
`esm2 train`; `esm2 eval` then scores both checkpoints on the same validation masks).

Same recipe as esm2.cpp, HF-style execution:
  data      our corpus (numpy.memmap), our sampler's distribution and masking recipe (15%, 80/10/10,
            random tokens from the 33-token vocabulary, our ids): scripts/esm2_corpus.py;
  batches   random (not length-sorted) sequences right-padded per micro-batch (multiple of 8), as an
            HF DataCollator does (with --compile to --max-seq-length: one static shape); a step takes sequences until it holds >= --tokens-per-step real tokens
            (our packed step's size), split into micro-batches of --micro-batch-size sequences; or, with
            --sequences-per-step N, N sequences (the HF Trainer's per_device_train_batch_size);
  loss      sum of cross-entropy over the step's labelled positions / their count (as ours);
  optimizer torch.optim.AdamW(fused=True), betas (0.9, 0.98), eps 1e-8, weight decay 0.01 on weight
            matrices except the embedding (ours), global-norm clipping 1.0, bf16 autocast, SDPA;
  schedule  WarmupAnnealDecayHold as src/optim/schedule.h: lr = max_lr·t/W for t < W, then
            max(max_lr·(1 − (t−W)/(T−W)), min_lr); with --min-lr 0 this is the HF Trainer's "linear"
            schedule (get_linear_schedule_with_warmup). T is --num-steps, or with --num-steps 0 it is fixed
            after --calibration-steps timed steps so that the schedule ends when --schedule-time
            seconds of training have passed (all calls together).
Writes into --out: metrics.jsonl (train loss, lr, tokens/s, consumed tokens, elapsed seconds),
checkpoints/step-NNNNNNNN (save_pretrained, fp32, + our tokenizer files + progress.json) every
--save-every seconds and at the end, checkpoints/latest (name of the newest), and state/ (weights,
optimizer, sampler and RNG state) so that a later call with --resume continues exactly where it stopped.
  hf_pretrain_baseline.py --train-data DIR --preset 8M --max-time 240 --out runs/hf8M \
      [--resume] [--num-steps 0 --schedule-time 480] [--tokenizer-from CKPT]
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import esm2_corpus as ec  # noqa: E402


def log(msg):
    print(f"hf_pretrain: {msg}", flush=True)


def learning_rate(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return max_lr * step / warmup
    return max(max_lr * (1.0 - (step - warmup) / max(total - warmup, 1)), min_lr)


def write_tokenizer_files(d, source):
    """Our tokenizer files (src/io/hf_config.cpp write_hf_tokenizer_files), or copies of `source`'s."""
    names = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
    if source:
        for n in names:
            shutil.copy(os.path.join(source, n), os.path.join(d, n))
        return
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        f.write("".join(t + "\n" for t in ec.VOCAB))
    specials = [("cls_token", ec.CLS), ("eos_token", ec.EOS), ("mask_token", ec.MASK), ("pad_token", ec.PAD),
                ("unk_token", ec.UNK)]
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        f.write(json.dumps({k: ec.VOCAB[i] for k, i in specials}, indent=2) + "\n")
    cfg = {"added_tokens_decoder": {str(i): {"content": ec.VOCAB[i], "lstrip": False, "normalized": False,
                                             "rstrip": False, "single_word": False, "special": True}
                                    for i in (ec.CLS, ec.PAD, ec.EOS, ec.UNK, ec.MASK)},
           "clean_up_tokenization_spaces": True}
    for k, i in specials:
        cfg[k] = ec.VOCAB[i]
        if k == "mask_token":
            cfg["model_max_length"] = 1026
    cfg["tokenizer_class"] = "EsmTokenizer"
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        f.write(json.dumps(cfg, indent=2) + "\n")


def replace_dir(tmp, final):
    """Renames a complete directory into place; an older one of that name goes only afterwards."""
    old = final + ".old"
    if os.path.exists(final):
        if os.path.exists(old):
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    if os.path.exists(old):
        shutil.rmtree(old)


class Baseline:
    def __init__(self, args):
        import torch
        self.torch, self.args = torch, args
        self.dev = torch.device("cuda")
        self.corpus = ec.Corpus(args.train_data)
        self.sampler = ec.Sampler(self.corpus, args.seed, args.max_seq_length)
        self.mask_rng = np.random.default_rng(args.seed + 1)
        torch.manual_seed(args.seed)
        with torch.device("cuda"):
            self.model = ec.new_hf_model(args.preset, "sdpa")
        self.model.train()
        emb = self.model.esm.embeddings.word_embeddings.weight
        decay = [p for p in self.model.parameters() if p.dim() >= 2 and p is not emb]
        ids = {id(p) for p in decay}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        self.params = decay + rest
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}],
                                     lr=args.lr, betas=(0.9, 0.98), eps=1e-8, fused=True)
        # The step's last micro-batch holds fewer sequences: dynamo recompiles once for that second
        # shape (marking the batch dimension dynamic), then no more.
        self.fwd = torch.compile(self.model) if args.compile else self.model
        self.step, self.consumed, self.elapsed = 0, 0, 0.0
        self.num_steps = args.num_steps
        self.saved_step = None
        self.data_state = (self.sampler.state(), self.mask_rng.bit_generator.state)

    # ---- state --------------------------------------------------------------------------------
    def state_dir(self):
        return os.path.join(self.args.out, "state")

    def save_state(self):
        torch = self.torch
        tmp = self.state_dir() + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                    "sampler": self.data_state[0], "mask_rng": self.data_state[1],
                    "step": self.step, "consumed_tokens": self.consumed, "elapsed_s": self.elapsed,
                    "num_steps": self.num_steps, "args": vars(self.args)}, os.path.join(tmp, "trainer_state.pt"))
        replace_dir(tmp, self.state_dir())

    def load_state(self):
        p = os.path.join(self.state_dir(), "trainer_state.pt")
        if not os.path.exists(p):
            return False
        s = self.torch.load(p, map_location=self.dev, weights_only=False)
        for key in ("preset", "tokens_per_step", "sequences_per_step", "micro_batch_size", "max_seq_length", "lr",
                    "warmup_steps"):
            if s["args"].get(key, 0) != getattr(self.args, key):
                raise SystemExit(f"hf_pretrain: {p}: --{key.replace('_', '-')} was {s['args'][key]}, "
                                 f"now {getattr(self.args, key)}; resume with the same settings")
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        self.sampler.set_state(s["sampler"])
        self.mask_rng.bit_generator.state = s["mask_rng"]
        self.step, self.consumed, self.elapsed = s["step"], s["consumed_tokens"], s["elapsed_s"]
        self.num_steps = s["num_steps"]
        return True

    def save_checkpoint(self):
        d = os.path.join(self.args.out, "checkpoints")
        name = f"step-{self.step:08d}"
        tmp = os.path.join(d, name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self.model.save_pretrained(tmp)
        write_tokenizer_files(tmp, self.args.tokenizer_from)
        with open(os.path.join(tmp, "progress.json"), "w") as f:
            json.dump({"step": self.step, "consumed_tokens": self.consumed, "elapsed_s": self.elapsed,
                       "num_steps": self.num_steps}, f)
        replace_dir(tmp, os.path.join(d, name))
        self.saved_step = self.step
        with open(os.path.join(d, "latest.tmp"), "w") as f:
            f.write(name + "\n")
        os.replace(os.path.join(d, "latest.tmp"), os.path.join(d, "latest"))
        log(f"checkpoint {name} (elapsed {self.elapsed:.1f} s, {self.consumed:,} tokens)")

    # ---- data ---------------------------------------------------------------------------------
    def next_step_batches(self):
        """Pinned micro-batches of one step and its real-token and label counts."""
        torch, a = self.torch, self.args
        # The data state BEFORE this step's draws is what a resume must restart from: the step built
        # ahead of time is not trained when the run stops.
        self.data_state = (self.sampler.state(), self.mask_rng.bit_generator.state)
        samples, tokens = [], 0
        while (len(samples) < a.sequences_per_step) if a.sequences_per_step > 0 else (tokens < a.tokens_per_step):
            t = self.sampler.next()
            samples.append(ec.mask_tokens(t, self.mask_rng))
            tokens += len(t)
        labels = int(sum((l != ec.IGNORE).sum() for _, l in samples))
        micro = []
        for k in range(0, len(samples), a.micro_batch_size):
            # With torch.compile: padding="max_length" (one static shape; see bench/hf_throughput.py).
            padded = ec.pad_batch(samples[k:k + a.micro_batch_size], pad_to=a.max_seq_length if a.compile else None)
            micro.append(tuple(torch.from_numpy(x).pin_memory() for x in padded))
        return micro, tokens, max(labels, 1)

    # ---- training -----------------------------------------------------------------------------
    def run(self):
        torch, a = self.torch, self.args
        F = torch.nn.functional
        min_lr = a.min_lr if a.min_lr is not None else a.lr / 10
        metrics = open(os.path.join(a.out, "metrics.jsonl"), "a")
        start = time.perf_counter()
        elapsed0 = self.elapsed
        next_save = (math.floor(self.elapsed / a.save_every) + 1) * a.save_every if a.save_every > 0 else math.inf
        calib_t0, calib_from = None, self.step + 3  # the first steps compile / warm up
        loss_acc = torch.zeros((), device=self.dev)
        tok_log, t_log = 0, time.perf_counter()
        batches = self.next_step_batches()
        while self.num_steps <= 0 or self.step < self.num_steps:
            total = self.num_steps if self.num_steps > 0 else 10 ** 12
            lr = learning_rate(self.step, a.lr, min_lr, a.warmup_steps, total)
            for g in self.opt.param_groups:
                g["lr"] = lr
            micro, tokens, labels = batches
            step_loss = torch.zeros((), device=self.dev)
            for ids, att, lab in micro:
                ids, att, lab = (x.to(self.dev, non_blocking=True) for x in (ids, att, lab))
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = self.fwd(input_ids=ids, attention_mask=att).logits
                    loss = F.cross_entropy(logits.float().view(-1, ec.VOCAB_SIZE), lab.view(-1),
                                           ignore_index=ec.IGNORE, reduction="sum") / labels
                loss.backward()
                step_loss += loss.detach()
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, a.clip_grad)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            batches = self.next_step_batches()  # built on the CPU while the GPU finishes the step
            loss_acc += step_loss
            self.step += 1
            self.consumed += tokens
            tok_log += tokens
            torch.cuda.synchronize()
            now = time.perf_counter()
            self.elapsed = elapsed0 + (now - start)
            # Auto schedule: time calibration_steps steps (after 3 warm-up/compile ones), then fix T.
            if self.num_steps <= 0:
                if self.step == calib_from:
                    calib_t0 = now
                elif calib_t0 is not None and self.step == calib_from + a.calibration_steps:
                    per_step = (now - calib_t0) / a.calibration_steps
                    left = max(a.schedule_time - self.elapsed, 0.0)
                    self.num_steps = max(self.step + int(left / per_step), a.warmup_steps + 1)
                    log(f"schedule: {per_step:.4f} s/step -> {self.num_steps} steps in {a.schedule_time:.0f} s "
                        f"(warmup {a.warmup_steps})")
            if self.step % a.log_every == 0 or self.step == self.num_steps:
                n = a.log_every if self.step % a.log_every == 0 else self.step % a.log_every
                rec = {"step": self.step, "train_loss": float(loss_acc) / n, "lr": lr, "grad_norm": float(gnorm),
                       "tokens_per_s": tok_log / (now - t_log), "consumed_tokens": self.consumed,
                       "elapsed_s": self.elapsed, "num_steps": self.num_steps}
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                log(f"step {self.step}/{self.num_steps} loss {rec['train_loss']:.4f} lr {lr:.2e} "
                    f"{rec['tokens_per_s']:,.0f} tok/s elapsed {self.elapsed:.0f} s")
                loss_acc.zero_()
                tok_log, t_log = 0, time.perf_counter()
            if self.elapsed >= next_save:
                self.save_checkpoint()
                next_save += a.save_every
            if now - start >= a.max_time:
                log(f"--max-time {a.max_time:.0f} s reached at step {self.step}")
                break
        metrics.close()
        if self.saved_step != self.step:
            self.save_checkpoint()
        self.save_state()
        log(f"done: step {self.step}/{self.num_steps}, {self.consumed:,} tokens, {self.elapsed:.1f} s of training")
        return {"step": self.step, "num_steps": self.num_steps, "consumed_tokens": self.consumed,
                "elapsed_s": self.elapsed}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-data", required=True, help="training corpus directory made by `esm2 prepare`")
    ap.add_argument("--preset", default="8M", choices=sorted(ec.PRESETS), help="model shape (src/model/config.cpp)")
    ap.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoints/, state/)")
    ap.add_argument("--max-time", type=float, required=True, help="seconds of training in THIS call")
    ap.add_argument("--resume", action="store_true", help="continue from --out/state when it exists")
    ap.add_argument("--tokens-per-step", type=int, default=131072, help="real tokens per optimizer step (ours: "
                    "micro-batch-tokens x accumulate-grad-batches)")
    ap.add_argument("--sequences-per-step", type=int, default=0, help="> 0: a step is this many sequences "
                    "(the HF recipe's batch) instead of --tokens-per-step real tokens")
    ap.add_argument("--micro-batch-size", type=int, default=64, help="sequences per padded micro-batch")
    ap.add_argument("--max-seq-length", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=4e-4, help="peak learning rate")
    ap.add_argument("--min-lr", type=float, default=None, help="final learning rate (default lr/10)")
    ap.add_argument("--warmup-steps", type=int, default=100)
    ap.add_argument("--num-steps", type=int, default=0, help="schedule length; 0: calibrate to --schedule-time")
    ap.add_argument("--schedule-time", type=float, default=None,
                    help="with --num-steps 0: seconds of training (all calls) the schedule spans (default --max-time)")
    ap.add_argument("--calibration-steps", type=int, default=20)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--clip-grad", type=float, default=1.0)
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model; micro-batches are then padded to --max-seq-length")
    ap.add_argument("--save-every", type=float, default=0, help="also write an HF checkpoint every N seconds")
    ap.add_argument("--tokenizer-from", default=None, help="copy vocab/tokenizer files from this checkpoint dir")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.schedule_time is None:
        args.schedule_time = args.max_time
    os.makedirs(args.out, exist_ok=True)
    import torch
    import transformers
    b = Baseline(args)
    if args.resume and b.load_state():
        log(f"resumed at step {b.step} ({b.consumed:,} tokens, {b.elapsed:.1f} s trained, schedule {b.num_steps} steps)")
    elif args.resume:
        log(f"--resume: no state under {b.state_dir()}; starting fresh")
    log(f"{args.preset}: {sum(p.numel() for p in b.model.parameters()) / 1e6:.2f}M parameters, "
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"attention {b.model.config._attn_implementation}, compile {args.compile}")
    summary = b.run()
    summary.update({"preset": args.preset, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "transformers": transformers.__version__, "tokens_per_step": args.tokens_per_step,
                    "sequences_per_step": args.sequences_per_step,
                    "micro_batch_size": args.micro_batch_size, "compile": args.compile,
                    "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30})
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

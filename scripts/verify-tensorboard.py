#!/usr/bin/env python3
"""Check that TensorBoard reads our event files and that they agree with the JSONL metrics file.

Loads LOGDIR with TensorBoard's own EventAccumulator (so the check is TensorBoard's parser, not ours),
prints every scalar tag with its number of points, and, given --expected METRICS.jsonl, checks that
for every JSONL record {"step": s, "<key>": value, ...} the scalar <prefix><key> at step s equals the
value rounded to float32 (TensorBoard's simple_value is a float). Exits 1 on any mismatch, 2 when
LOGDIR holds no scalars, 0 otherwise.

    python3 scripts/verify-tensorboard.py runs/x/tensorboard --expected runs/x/metrics.jsonl
    python3 scripts/verify-tensorboard.py LOGDIR --expected m.jsonl --tag-prefix train/ --ignore elapsed_s
    # the trainer's MetricsLogger (src/train/metrics_logger.cpp) naming:
    python3 scripts/verify-tensorboard.py RUN/tensorboard --expected RUN/metrics.jsonl \
        --map train_loss=train/loss --map train_ppl=train/perplexity --map lr=train/lr \
        --map grad_norm=train/grad_norm --map tokens_per_s=train/real_tokens_per_s \
        --map val_loss=val/loss --map val_ppl=val/perplexity \
        --ignore packing_efficiency --ignore consumed_tokens --ignore val_labels

Needs the `tensorboard` package (present on the GPU machine).
"""
import argparse
import json
import math
import struct
import sys


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def same(expected, got, rtol):
    if expected is None:  # our JSONL writes NaN/inf as null
        return not math.isfinite(got)
    e = f32(float(expected))
    if math.isnan(e) or math.isnan(got):
        return math.isnan(e) and math.isnan(got)
    return e == got or abs(e - got) <= rtol * max(abs(e), abs(got))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logdir", help="directory holding events.out.tfevents.* files")
    ap.add_argument("--expected", help="JSONL metrics file whose values must appear as scalars")
    ap.add_argument("--step-key", default="step", help="JSONL key holding the step (default: step)")
    ap.add_argument("--tag-prefix", default="", help="TensorBoard tag = prefix + JSONL key (default: none)")
    ap.add_argument("--map", action="append", default=[], metavar="KEY=TAG",
                    help="JSONL key KEY is TensorBoard tag TAG (repeatable; overrides --tag-prefix for KEY)")
    ap.add_argument("--ignore", action="append", default=[], help="JSONL key not logged to TensorBoard (repeatable)")
    ap.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance after float32 rounding")
    ap.add_argument("--allow-extra", action="store_true",
                    help="do not fail on TensorBoard points that have no JSONL counterpart")
    args = ap.parse_args()

    tag_of = {}
    for m in args.map:
        key, sep, tag = m.partition("=")
        if not sep or not key or not tag:
            ap.error(f"--map {m!r}: expected KEY=TAG")
        tag_of[key] = tag

    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(args.logdir, size_guidance={ea.SCALARS: 0})  # 0 = keep every point
    acc.Reload()
    tags = sorted(acc.Tags().get("scalars", []))
    if not tags:
        print(f"{args.logdir}: no scalar events found", file=sys.stderr)
        return 2
    series = {}
    for tag in tags:
        points = {}
        for ev in acc.Scalars(tag):
            points[ev.step] = ev.value  # a resumed run re-logs steps: the last write wins, as in the UI
        series[tag] = points
        print(f"{tag}\t{len(acc.Scalars(tag))} scalars\tsteps {min(points)}..{max(points)}")
    if not args.expected:
        return 0

    errors, checked = [], 0
    seen = {tag: set() for tag in tags}
    mentioned = set()  # tags some JSONL key maps to
    missing = set()
    with open(args.expected) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{args.expected}:{lineno}: not JSON: {e}")
                continue
            if args.step_key not in rec:
                errors.append(f"{args.expected}:{lineno}: no '{args.step_key}' key")
                continue
            step = int(rec[args.step_key])
            for key, value in rec.items():
                if key == args.step_key or key in args.ignore:
                    continue
                if isinstance(value, bool) or not (value is None or isinstance(value, (int, float))):
                    continue  # strings/objects are not scalars
                tag = tag_of.get(key, args.tag_prefix + key)
                mentioned.add(tag)
                if tag not in series:
                    if tag not in missing:  # once per key, not once per line
                        missing.add(tag)
                        errors.append(f"{args.expected}:{lineno}: key '{key}': no TensorBoard tag '{tag}' "
                                      f"(pass --ignore {key} if it is not meant to be logged there)")
                    continue
                if step not in series[tag]:
                    errors.append(f"{args.expected}:{lineno}: tag '{tag}' has no point at step {step}")
                    continue
                seen[tag].add(step)
                if not same(value, series[tag][step], args.rtol):
                    errors.append(f"{args.expected}:{lineno}: tag '{tag}' step {step}: "
                                  f"TensorBoard {series[tag][step]!r}, JSONL {value!r}")
                else:
                    checked += 1
    for tag in tags:
        if tag not in mentioned:
            print(f"note: tag '{tag}' has no JSONL key (not checked)")
        elif not args.allow_extra:
            extra = sorted(set(series[tag]) - seen[tag])
            if extra:
                errors.append(f"tag '{tag}': {len(extra)} points with no JSONL value (first at step {extra[0]})")
    for e in errors[:50]:
        print("MISMATCH", e, file=sys.stderr)
    if len(errors) > 50:
        print(f"... and {len(errors) - 50} more", file=sys.stderr)
    print(f"checked {checked} values against {args.expected}: {len(errors)} mismatches")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

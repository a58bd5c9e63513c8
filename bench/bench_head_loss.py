"""The loss over the vocabulary in chunks (``step.head_loss``) against the whole loss (``step.summed_loss``,
mlx-lm's way): one compiled LoRA step of each on the same model and tokens, in one process: the loss and
the gradients (largest difference, relative to each gradient's largest value), the steady step time and
the peak memory.

    python bench/bench_head_loss.py MODEL [--batch-size 4] [--width 512] [--num-layers 16] [--keep-dtype]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="default, or a model folder")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--num-layers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--chunk-logits", type=int, help="logits per chunk (default: step.CHUNK_LOGITS)")
    ap.add_argument("--keep-dtype", action="store_true", help="the base as stored (else base_dtype auto)")
    args = ap.parse_args()

    import mlx.core as mx

    from engine import split as parts, step
    from stepbench import fresh_model, largest_difference, measure_step, random_batch

    if args.chunk_logits:
        step.CHUNK_LOGITS = args.chunk_logits
    results, grads = {}, {}
    for name in ("whole", "chunks"):
        model = fresh_model(args.model, args.keep_dtype, args.num_layers)
        if name == "whole":
            loss = step.summed_loss
        else:
            loss, _, why = parts.training_loss(model, len(model.layers) - args.num_layers, [1, 2, 3], chunked=True)
            if why:
                raise SystemExit(f"the loss in chunks is off for this model: {why}")
        value, g, results[name] = measure_step(model, loss, random_batch(model, args.batch_size, args.width),
                                               args.repeats)
        grads[name] = (value, g)
        del model
        mx.clear_cache()

    (lw, gw), (lc, gc) = grads["whole"], grads["chunks"]
    worst = largest_difference(gw, gc)
    w, c = results["whole"], results["chunks"]
    print(f"{datetime.date.today()} {platform.machine()} {mx.default_device()} | model {args.model} | batch "
          f"{args.batch_size} x width {args.width}, {args.num_layers} LoRA layers, chunks of {step.CHUNK_LOGITS} "
          f"logits, median of {args.repeats}")
    print(f"{'':32} {'whole (mlx-lm)':>15} {'in chunks':>12}")
    print(f"{'loss of the first batch':32} {lw:>15.4f} {lc:>12.4f}")
    print(f"{'step time, steady (s)':32} {w['steady_s']:>15.4f} {c['steady_s']:>12.4f}")
    print(f"{'peak memory of a step (GB)':32} {w['peak_gb']:>15.3f} {c['peak_gb']:>12.3f}")
    print(f"gradients: largest difference {worst:.2e} of the gradient's largest value; "
          f"speed ratio {w['steady_s'] / c['steady_s']:.3f}x; peak {c['peak_gb'] - w['peak_gb']:+.3f} GB")
    print(json.dumps({"whole": w, "chunks": c, "loss": [lw, lc], "grad_rel_diff": worst}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

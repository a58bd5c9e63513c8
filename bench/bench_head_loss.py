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
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


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
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from engine import split as parts, step
    from engine.model import load_model, set_base_dtype
    from farense_core.models import resolve_model

    def fresh():
        model, _ = load_model(resolve_model(args.model))
        if not args.keep_dtype:
            set_base_dtype(model, "auto")
        model.freeze()
        mx.random.seed(0)
        linear_to_lora_layers(model, args.num_layers, {"rank": 8, "scale": 20.0, "dropout": 0.0})
        mx.eval(model.parameters())
        return model

    if args.chunk_logits:
        step.CHUNK_LOGITS = args.chunk_logits
    rng = np.random.default_rng(0)
    results, grads = {}, {}
    for name in ("whole", "chunks"):
        model = fresh()
        vocab = model.model.embed_tokens.weight.shape[0]
        tokens = mx.array(rng.integers(3, vocab, (args.batch_size, args.width + 1)).astype(np.int32))
        rng = np.random.default_rng(0)  # the same tokens for both
        inputs, targets, mask = tokens[:, :-1], tokens[:, 1:], mx.ones((args.batch_size, args.width))
        if name == "whole":
            loss = step.summed_loss
        else:
            loss, _, why = parts.training_loss(model, len(model.layers) - args.num_layers, [1, 2, 3], chunked=True)
            if why:
                raise SystemExit(f"the loss in chunks is off for this model: {why}")
        value_and_grad = nn.value_and_grad(model, loss)
        (value, _), g = value_and_grad(model, inputs, targets, mask)
        mx.eval(value, g)
        grads[name] = (value.item(), {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(g)})
        opt = optim.Adam(learning_rate=1e-5)
        update = step.compiled_step(model, opt, value_and_grad)
        times, peaks = [], []
        for _ in range(args.repeats + 1):
            mx.synchronize()
            mx.clear_cache()
            mx.reset_peak_memory()
            tic = time.perf_counter()
            out = update(inputs, targets, mask, None, None, None, True)
            mx.eval(model.state, opt.state, out[0])
            times.append(time.perf_counter() - tic)
            peaks.append(mx.get_peak_memory())
        results[name] = {"steady_s": statistics.median(times[1:]), "peak_gb": max(peaks[1:]) / 1e9,
                         "first_s": times[0]}
        del model, opt, update, value_and_grad
        mx.clear_cache()

    (lw, gw), (lc, gc) = grads["whole"], grads["chunks"]
    worst = max(float(np.abs(gw[k] - gc[k]).max() / (np.abs(gw[k]).max() or 1.0)) for k in gw)
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

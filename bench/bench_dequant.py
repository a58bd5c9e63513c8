"""Quantized matmuls as MLX computes them (``mx.quantized_matmul``) against dequantize-then-matmul
(``engine.dequant``), in one process on one device:

1. the matmuls of a block, alone: each linear layer's shape at each of ``--rows`` row counts, forward (x @ W.T)
   and the input's gradient (dy @ W), median time of each way;
2. one compiled LoRA step of the model both ways over the same random tokens: the loss and gradients
   (largest difference), the steady step time and the peak memory.

    python bench/bench_dequant.py MODEL [--batch-size 4] [--width 512] [--num-layers 16] [--rows 8,64,256,2048] [--checkpoint]

MODEL must be quantized (it is used as stored).
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
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]


def timed(fn, repeats: int) -> float:
    import mlx.core as mx

    mx.eval(fn())
    times = []
    for _ in range(repeats):
        mx.synchronize()
        tic = time.perf_counter()
        mx.eval(fn())
        mx.synchronize()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def matmuls(model, rows: list[int], repeats: int) -> list[dict]:
    """Per distinct linear shape of the top block and per row count: the quantized kernel's and the
    dequantized way's times, forward (x @ W.T) and for the input's gradient (dy @ W)."""
    import mlx.core as mx
    import mlx.nn as nn

    from engine import dequant

    seen, out = set(), []
    for name, m in model.layers[-1].named_modules():
        m = getattr(m, "linear", m)
        if type(m) is not nn.QuantizedLinear or m.weight.shape in seen:
            continue
        seen.add(m.weight.shape)
        w, s, b = m.weight, m.scales, m.biases
        n_out, n_in = w.shape[0], w.shape[1] * 32 // m.bits
        q = dict(group_size=m.group_size, bits=m.bits)
        mm = dequant._matmul(m.group_size, m.bits, getattr(m, "mode", "affine"))
        for n in rows:
            x = mx.random.normal((n, n_in)).astype(s.dtype)
            dy = mx.random.normal((n, n_out)).astype(s.dtype)
            out.append({"layer": name, "shape": [n_out, n_in], "rows": n, "flops": 2 * n * n_in * n_out,
                        "fwd_kernel": timed(lambda: mx.quantized_matmul(x, w, s, b, transpose=True, **q), repeats),
                        "fwd_dequant": timed(lambda: mm(x, w, s, b), repeats),
                        "bwd_kernel": timed(lambda: mx.quantized_matmul(dy, w, s, b, transpose=False, **q),
                                            repeats),
                        "bwd_dequant": timed(lambda: dy @ mx.dequantize(w, s, b, **q).astype(s.dtype), repeats)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a quantized model folder, or default")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--num-layers", type=int, default=16)
    ap.add_argument("--rows", default="8,64,256,2048", help="row counts of the matmuls timed alone (none: \"\")")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--skip-step", action="store_true")
    ap.add_argument("--checkpoint", action="store_true", help="also both ways with mlx-lm's grad_checkpoint")
    args = ap.parse_args()

    import mlx.core as mx
    from mlx_lm.tuner.trainer import grad_checkpoint

    from engine import dequant, step
    from stepbench import fresh_model, largest_difference, measure_step, random_batch

    model = fresh_model(args.model, True, args.num_layers)
    print(f"{datetime.date.today()} {platform.machine()} {mx.default_device()} | model {args.model}")
    rows = matmuls(model, [int(n) for n in args.rows.split(",") if n], max(args.repeats, 5))
    print("matmuls of one block, median ms (TFLOP/s): kernel = mx.quantized_matmul, dequant = engine.dequant")
    for r in rows:
        tf = {k: r["flops"] / r[k] / 1e12 for k in ("fwd_kernel", "fwd_dequant", "bwd_kernel", "bwd_dequant")}
        print(f"  {r['layer']:<18} {str(r['shape']):<14} {r['rows']:>5} rows: forward {r['fwd_kernel'] * 1e3:7.2f} ({tf['fwd_kernel']:5.1f}) "
              f"vs {r['fwd_dequant'] * 1e3:7.2f} ({tf['fwd_dequant']:5.1f})   input grad "
              f"{r['bwd_kernel'] * 1e3:7.2f} ({tf['bwd_kernel']:5.1f}) vs {r['bwd_dequant'] * 1e3:7.2f} "
              f"({tf['bwd_dequant']:5.1f})")
    result = {"matmuls": rows}
    if not args.skip_step:
        del model
        variants = [("kernel", False), ("dequant", False)]
        if args.checkpoint:  # last: mlx-lm's grad_checkpoint patches the block's class for good
            variants += [("kernel+ckpt", True), ("dequant+ckpt", True)]
        steps, grads = {}, {}
        for name, checkpoint in variants:
            model = fresh_model(args.model, True, args.num_layers)
            if name.startswith("dequant"):
                dequant.use_dequantized_matmul(model)
            if checkpoint:
                grad_checkpoint(model.layers[0])
            value, g, steps[name] = measure_step(model, step.summed_loss,
                                                 random_batch(model, args.batch_size, args.width), args.repeats)
            grads[name] = (value, g)
            del model
            mx.clear_cache()
        print(f"one LoRA step, batch {args.batch_size} x width {args.width}, {args.num_layers} LoRA layers, "
              f"median of {args.repeats} (ckpt: mlx-lm's grad_checkpoint)")
        print(f"{'':30}" + "".join(f"{name:>14}" for name in steps))
        print(f"{'loss of the first batch':30}" + "".join(f"{grads[n][0]:>14.4f}" for n in steps))
        print(f"{'step time, steady (s)':30}" + "".join(f"{steps[n]['steady_s']:>14.4f}" for n in steps))
        print(f"{'speed ratio to kernel':30}" + "".join(
            f"{steps['kernel']['steady_s'] / steps[n]['steady_s']:>13.3f}x" for n in steps))
        print(f"{'peak memory of a step (GB)':30}" + "".join(f"{steps[n]['peak_gb']:>14.3f}" for n in steps))
        worst = {n: largest_difference(grads["kernel"][1], grads[n][1]) for n in steps if n != "kernel"}
        print("gradients against the kernel's, largest difference of the largest value: "
              + ", ".join(f"{n} {w:.2e}" for n, w in worst.items()))
        result.update(steps=steps, grad_rel_diff=worst)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

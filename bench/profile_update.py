"""One update, taken apart: for each micro-batch width, the first call (trace, compile, run) and the
steady-state time of our compiled step and of mlx-lm's (its trainer's loss and a step compiled the way its
``train`` compiles it), the peak memory of each, and what our loop adds around the step (building the
batch, the host sync, the memory snapshot, the event line).

    python bench/profile_update.py MODEL [--batch-size 4] [--widths 64,128,256,512] [--num-layers 16]

In process, one model, the two steps alternating per width. Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def mlx_lm_step(model, optimizer):
    """mlx-lm's step as ``mlx_lm.tuner.trainer.train`` builds it: its ``default_loss``, value and grad,
    compiled over model, optimizer and RNG state, one micro-batch per update."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.tuner.trainer import default_loss

    lvg = nn.value_and_grad(model, default_loss)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch, lengths):
        (lvalue, toks), grad = lvg(model, batch, lengths)
        optimizer.update(model, grad)
        return lvalue, toks

    return step, state


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--widths", default="64,128,256,512")
    ap.add_argument("--num-layers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from engine.model import load_model
    from engine.step import compiled_step
    from engine.trainer import memory_snapshot
    from farense_core import protocol as P

    def fresh():
        model, _ = load_model(args.model)
        model.freeze()
        linear_to_lora_layers(model, args.num_layers, {"rank": 8, "scale": 20.0, "dropout": 0.0})
        mx.eval(model.parameters())
        return model

    rng = np.random.default_rng(0)
    widths = [int(w) for w in args.widths.split(",")]
    rows = []
    results = {}
    for tool in ("mlx_lm", "ours"):
        model = fresh()
        opt = optim.Adam(learning_rate=1e-5)
        if tool == "ours":
            step = compiled_step(model, opt)
        else:
            opt.init(model.trainable_parameters())
            step, state = mlx_lm_step(model, opt)
        rng = np.random.default_rng(0)  # the same tokens for both
        for w in widths:
            tokens = mx.array(rng.integers(3, 30000, (args.batch_size, w + 1)).astype(np.int32))
            times, peaks = [], []
            for i in range(args.repeats + 1):
                mx.synchronize()
                mx.reset_peak_memory()
                tic = time.perf_counter()
                if tool == "ours":
                    mask = mx.ones((args.batch_size, w))
                    loss, n, _ = step(tokens[:, :-1], tokens[:, 1:], mask, None, None, None, True)
                    mx.eval(model.state, opt.state, mx.random.state, loss, n)
                else:
                    lengths = mx.array([[1, w]] * args.batch_size)
                    loss, n = step(tokens, lengths)
                    mx.eval(state, loss, n)
                times.append(time.perf_counter() - tic)
                peaks.append(mx.get_peak_memory())
            results[(tool, w)] = {"first": times[0], "steady": statistics.median(times[1:]),
                                  "peak_gb": max(peaks) / 1e9, "active_gb": mx.get_active_memory() / 1e9}
        del model, opt, step
        state = None  # mlx-lm's step state holds its model
        mx.clear_cache()

    # what our loop adds around the step, per update
    tic = time.perf_counter()
    for _ in range(200):
        mem = memory_snapshot()
        line = P.Step(step=1, total_steps=2, epoch=1, epoch_progress=0.5, loss=1.0, learning_rate=1e-5,
                               tokens=100, trained_tokens=100, tokens_per_second=1.0, iterations_per_second=1.0,
                               elapsed=1.0, eta=1.0, memory=mem).to_line()
    around = (time.perf_counter() - tic) / 200

    print(f"{'width':>6} {'tokens':>7} | {'mlx-lm first':>12} {'steady':>8} {'peak GB':>8} | "
          f"{'ours first':>10} {'steady':>8} {'peak GB':>8} | steady ratio")
    for w in widths:
        a, b = results[("mlx_lm", w)], results[("ours", w)]
        print(f"{w:>6} {w * args.batch_size:>7} | {a['first']:>12.3f} {a['steady']:>8.4f} {a['peak_gb']:>8.2f} | "
              f"{b['first']:>10.3f} {b['steady']:>8.4f} {b['peak_gb']:>8.2f} | {a['steady'] / b['steady']:.3f}x")
        rows.append({"width": w, "mlx_lm": a, "ours": b})
    print(f"our loop around one step (memory snapshot + event line): {around * 1e3:.3f} ms")
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "device": str(mx.default_device()),
                      "rows": rows, "around_step_s": around, "line": len(line)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

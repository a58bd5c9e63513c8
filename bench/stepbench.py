"""What bench_head_loss.py and bench_dequant.py share: a fresh LoRA model, a batch of random tokens, and one
compiled training step of it timed (the loss and gradients of its first call, the steady time, the peak)."""

from __future__ import annotations

import statistics
import time


def fresh_model(name: str, keep_dtype: bool, num_layers: int):
    """The model as the trainer makes it: loaded, the base's dtype (as stored with ``keep_dtype``, else
    ``base_dtype: auto``), frozen, LoRA (rank 8, scale 20) on the top ``num_layers`` blocks, seed 0."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from engine.model import load_model, set_base_dtype
    from farense_core.models import resolve_model

    model, _ = load_model(resolve_model(name))
    if not keep_dtype:
        set_base_dtype(model, "auto")
    model.freeze()
    mx.random.seed(0)
    linear_to_lora_layers(model, num_layers, {"rank": 8, "scale": 20.0, "dropout": 0.0})
    mx.eval(model.parameters())
    return model


def random_batch(model, batch_size: int, width: int, seed: int = 0):
    """(inputs, targets, mask) of random tokens, every position counted; the same for the same seed."""
    import mlx.core as mx
    import numpy as np

    vocab = model.model.embed_tokens.weight.shape[0]
    tokens = np.random.default_rng(seed).integers(3, vocab, (batch_size, width + 1)).astype(np.int32)
    tokens = mx.array(tokens)
    return tokens[:, :-1], tokens[:, 1:], mx.ones((batch_size, width))


def measure_step(model, loss, batch, repeats: int):
    """(loss value, {name: gradient as float32 numpy}, {steady_s, peak_gb, first_s}) of one compiled step
    (``step.compiled_step``, Adam) over ``batch``: the gradients of a plain call, then ``repeats`` timed
    steps after the first (which compiles)."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten

    from engine import step

    value_and_grad = nn.value_and_grad(model, loss)
    (value, _), g = value_and_grad(model, *batch)
    mx.eval(value, g)
    grads = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(g)}
    opt = optim.Adam(learning_rate=1e-5)
    update = step.compiled_step(model, opt, value_and_grad)
    times, peaks = [], []
    for _ in range(repeats + 1):
        mx.synchronize()
        mx.clear_cache()
        mx.reset_peak_memory()
        tic = time.perf_counter()
        out = update(*batch, None, None, None, True)
        mx.eval(model.state, opt.state, out[0])
        times.append(time.perf_counter() - tic)
        peaks.append(mx.get_peak_memory())
    return value.item(), grads, {"steady_s": statistics.median(times[1:]), "peak_gb": max(peaks[1:]) / 1e9,
                                 "first_s": times[0]}


def largest_difference(a: dict, b: dict) -> float:
    """The largest difference between two sets of gradients, relative to each gradient's largest value."""
    import numpy as np

    return max(float(np.abs(a[k] - b[k]).max() / (np.abs(a[k]).max() or 1.0)) for k in a)

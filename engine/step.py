"""The training step, shared by the trainer and preflight's probe: tokenizing as mlx-lm's datasets
do, micro-batches from length buckets, the summed loss, the compiled update and the optimizer.

One update = ``grad_accumulation_steps`` micro-batches of ``batch_size`` samples, cut from one
length bucket of ``batch_size x grad_accumulation_steps`` examples (``batching.bucket_updates``).
The gradient of an update is the token-weighted mean over all its micro-batches (sum of per-token
losses, divided by the update's loss-bearing tokens), so batch 32 x accumulation 1 and batch 8 x
accumulation 4 train the same updates on the same examples, with a quarter of the memory.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from farense_core import batching
from farense_core.datafiles import sample_format

from .model import InputError


@dataclass
class Tokenized:
    tokens: list[list[int]]
    offsets: list[int]  # where the loss starts (after the prompt, with mask_prompt)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


class _Namespace:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def tokenize(rows: list[dict], tokenizer, mask_prompt: bool) -> Tokenized:
    """Rows of one format (``datatools.check_file`` guarantees it) as mlx-lm's datasets tokenize
    them: the chat template for chat and completions, the text and EOS for text."""
    from mlx_lm.tuner.datasets import create_dataset

    if not rows:
        return Tokenized([], [])
    if sample_format(rows[0]) == "text" and mask_prompt:
        raise InputError("mask_prompt needs chat or completions data; set mask_prompt: false for text data.")
    ds = create_dataset(rows, tokenizer, _Namespace(mask_prompt=mask_prompt))
    tokens, offsets = [], []
    for i in range(len(ds)):
        t, off = ds.process(ds[i])
        tokens.append(list(t))
        offsets.append(int(off))
    return Tokenized(tokens, offsets)


def pad_multiple() -> int:
    return batching.PAD_MULTIPLE_CPU if mx.default_device().type == mx.cpu else batching.PAD_MULTIPLE_GPU


def make_batch(data: Tokenized, indices: list[int], max_seq_length: int, multiple: int = batching.PAD_MULTIPLE):
    """Inputs, targets and the loss mask of one micro-batch (right padding)."""
    lens = [min(len(data.tokens[i]), max_seq_length) for i in indices]
    width = batching.padded_length(max(lens), max_seq_length, multiple)
    arr = np.zeros((len(indices), width), np.int32)
    mask = np.zeros((len(indices), width - 1), np.float32)
    for row, (i, n) in enumerate(zip(indices, lens)):
        arr[row, :n] = data.tokens[i][:n]
        # target position t predicts token t+1; train on tokens offset..n-1
        start = max(data.offsets[i], 1)
        mask[row, start - 1:n - 1] = 1.0
    return mx.array(arr[:, :-1]), mx.array(arr[:, 1:]), mx.array(mask)


def summed_loss(model, inputs, targets, mask):
    """Sum of per-token cross-entropy over the mask, and the number of tokens."""
    logits = model(inputs)
    ce = nn.losses.cross_entropy(logits, targets) * mask  # in the logits' dtype: a float32 copy of
    return ce.astype(mx.float32).sum(), mask.sum()       # batch x length x vocab costs memory


OPTIMIZERS = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "adafactor": optim.Adafactor}


def optimizer_settings(cfg: dict) -> dict:
    """The optimizer's extra settings from ``optimizer_config``, checked against what its class takes
    (names, and the kind of value its default has); InputError names the first wrong one."""
    name = cfg["optimizer"]
    extra = dict(cfg.get("optimizer_config", {}).get(name, {}))
    params = {k: v for k, v in inspect.signature(OPTIMIZERS[name].__init__).parameters.items()
              if k not in ("self", "learning_rate")}
    for key, value in extra.items():
        where = f"optimizer_config.{name}.{key}"
        if key not in params:
            raise InputError(f"{where} is not a setting of {name}; it takes: {', '.join(params)}.")
        default = params[key].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)) or default is None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        elif isinstance(default, (list, tuple)):
            ok = (isinstance(value, (list, tuple)) and len(value) == len(default)
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
        else:
            ok = True
        if not ok:
            kind = ("true or false" if isinstance(default, bool) else
                    f"a list of {len(default)} numbers" if isinstance(default, (list, tuple)) else "a number")
            raise InputError(f"{where} is {value!r}, but it must be {kind} (the default is {default!r}).")
    return extra


def make_optimizer(cfg: dict):
    return OPTIMIZERS[cfg["optimizer"]](learning_rate=cfg["learning_rate"], **optimizer_settings(cfg))


def compiled_step(model, optimizer, value_and_grad=None, world=None):
    """One compiled function over the model, optimizer and RNG state, as mlx-lm does (fused kernels,
    fewer temporaries): a micro-batch's gradient added to the update's running sum and, on the update's
    last micro-batch (``do_update``), the optimizer step with the token-weighted mean. With several
    processes (``engine.distributed``), the sums are over all of them first, so every process makes the
    update one process would make with the whole global batch (and reports its loss).

    ``step(inputs, targets, mask, loss_sum, ntoks, grads, do_update) -> (loss_sum, ntoks, grads)``
    """
    value_and_grad = value_and_grad or nn.value_and_grad(model, summed_loss)
    shared = world is not None and world.shared
    optimizer.init(model.trainable_parameters())
    state = [model.state, optimizer.state, mx.random.state]

    def step(inputs, targets, mask, loss_sum, ntoks, grads, do_update):
        (loss, n), g = value_and_grad(model, inputs, targets, mask)
        if grads is not None:  # the first micro-batch of an update is its own trace
            g = tree_map(mx.add, grads, g)
            loss, n = loss + loss_sum, n + ntoks
        if do_update:
            if shared:
                g, loss, n = world.sum_tree(g), world.sum(loss), world.sum(n)
            optimizer.update(model, tree_map(lambda x: x / n, g))
            g = None
        return loss, n, g

    return mx.compile(step, inputs=state, outputs=state)

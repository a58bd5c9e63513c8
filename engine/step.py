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
    return logits_loss(model(inputs), targets, mask)


def logits_loss(logits, targets, mask):
    """``summed_loss`` from the logits."""
    ce = nn.losses.cross_entropy(logits, targets) * mask  # in the logits' dtype: a float32 copy of
    return ce.astype(mx.float32).sum(), mask.sum()       # batch x length x vocab costs memory


CHUNK_LOGITS = 1 << 24  # logits per chunk of head_loss (64 MB in float32; 341 positions of a 49k vocabulary)


def head_loss(head, h, targets, mask):
    """``summed_loss`` from the normalized hidden state ``h`` (batch x length x dims) and the ``head``
    that maps it to logits, over the positions in chunks of about ``CHUNK_LOGITS`` logits: each chunk's
    loss and its gradient for ``h`` are computed together and its logits let go, so a step holds one
    chunk's logits instead of the micro-batch's (batch x length x vocabulary, with their float32 softmax
    and gradient). The head's weights get no gradient: only for a head the run does not train. The
    softmax is taken in float32 (``summed_loss`` takes it in the logits' dtype: in bf16 the two differ by
    bf16's rounding, up to ~1% of a gradient's largest value)."""
    dims = h.shape[-1]
    flat, t, m = h.reshape(-1, dims), targets.reshape(-1), mask.reshape(-1)
    vocab = head(flat[:1]).shape[-1]  # shape only, never computed
    rows = max(16, CHUNK_LOGITS // vocab)

    @mx.custom_function
    def loss_and_gradient(flat, t, m):
        losses, grads = [], []
        for i in range(0, flat.shape[0], rows):
            x, ti, mi = flat[i:i + rows], t[i:i + rows], m[i:i + rows]
            if losses:  # after the chunk before it, its loss and gradient both (adds 0, even to NaN): one
                # chunk's logits alive at a time, whatever order the scheduler picks
                done = (losses[-1] > mx.inf) | (grads[-1][0, 0] > mx.inf)
                x = x + done.astype(x.dtype)
            logits = head(x).astype(mx.float32)
            lse = mx.logsumexp(logits, axis=-1, keepdims=True)
            picked = mx.take_along_axis(logits, ti[:, None], axis=-1)
            losses.append(((lse - picked)[:, 0] * mi).sum())
            dlogits = (mx.exp(logits - lse) - (mx.arange(vocab)[None, :] == ti[:, None])) * mi[:, None]
            grads.append(mx.vjp(head, [x], [dlogits.astype(x.dtype)])[1][0])
        return sum(losses), mx.stop_gradient(mx.concatenate(grads))

    @loss_and_gradient.vjp
    def _(primals, cotangents, outputs):
        _, t, m = primals
        return outputs[1] * cotangents[0].astype(outputs[1].dtype), mx.zeros_like(t), mx.zeros_like(m)

    total, _ = loss_and_gradient(flat, t, m)
    return total, mask.sum()


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

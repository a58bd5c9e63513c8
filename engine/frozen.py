"""The frozen-block cache: a run that adapts only the top ``num_layers`` blocks computes the blocks below
them to the same values in every epoch (they are frozen, and a micro-batch holds the same examples each
epoch: ``batching.bucket_updates`` fixes them, an epoch only reorders them). So the first epoch keeps each
micro-batch's hidden state at the boundary, and later epochs start the step there: forward and backward
through the adapted blocks only.

Exact: the state is the one the same compiled function computes for the same micro-batch, whether it comes
from the cache or not, so a resumed run (its cache rebuilt as it goes) trains the same updates bit for bit.
Kept in host memory (NumPy), not the accelerator's: what the GPU's step needs is one micro-batch's state.

Which models: decoder stacks mlx-lm builds as ``model.model.embed_tokens / layers / norm`` with a causal
mask and no sliding window (llama, mistral, qwen2, qwen3); ``split_problem`` checks the split computes the
model's own logits before a run relies on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from farense_core.format import gb

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
BUDGET_SHARE = 0.25  # of the memory available when the run starts, for ``frozen_cache: auto``


def frozen_blocks(model, cfg: dict) -> int:
    """How many blocks, from the bottom, the run leaves frozen (0: it adapts every block)."""
    n = cfg["num_layers"]
    total = len(model.layers)
    return 0 if n < 0 else max(total - n, 0)


class Split:
    """The model as two functions around block ``k``: ``bottom(inputs) -> state`` (compiled, no gradient)
    and ``loss(model, state, targets, mask)``, the summed loss from the state up (``step.summed_loss``'s
    contract), for ``nn.value_and_grad``."""

    def __init__(self, model, k: int):
        self.model, self.k = model, k
        inner = model.model
        self.embed, self.blocks, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.bottom = mx.compile(self._bottom)

    def _bottom(self, inputs):
        h = self.embed(inputs)
        for block in self.blocks[:self.k]:
            h = block(h, "causal", cache=None)
        return h

    def logits(self, h):
        for block in self.blocks[self.k:]:
            h = block(h, "causal", cache=None)
        h = self.norm(h)
        head = getattr(self.model, "lm_head", None)
        return head(h) if head is not None else self.embed.as_linear(h)

    def loss(self, model, h, targets, mask):
        ce = nn.losses.cross_entropy(self.logits(h), targets) * mask
        return ce.astype(mx.float32).sum(), mask.sum()


def split_problem(model, k: int, probe_tokens: list[int]) -> Optional[str]:
    """Why the run cannot start its step at block ``k`` of this model (None: it can): the model type,
    a sliding window, or a split whose logits differ from the model's on ``probe_tokens``."""
    args = getattr(model, "args", None)
    kind = getattr(args, "model_type", None)
    if kind not in SUPPORTED:
        return f"the cache knows llama, mistral, qwen2 and qwen3 models, not {kind}"
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        return "the model is not laid out as embed_tokens, layers and norm"
    if getattr(args, "sliding_window", None) or any(getattr(b, "use_sliding", False) for b in inner.layers):
        return "the model uses sliding-window attention"
    x = mx.array([probe_tokens[:32] or [0]])
    try:
        split = Split(model, k)
        ours, theirs = split.logits(split.bottom(x)), model(x)
        mx.eval(ours, theirs)
    except Exception as e:  # noqa: BLE001 - a block with another call signature
        return f"its blocks cannot be called one by one ({type(e).__name__})"
    scale = max(float(mx.abs(theirs).max().item()), 1.0)  # a wrong split is off by the logits' own size;
    rounding = 1e-3 if theirs.dtype == mx.float32 else 2e-2  # two fusions of half precision differ by roundings
    if float(mx.abs(ours.astype(mx.float32) - theirs.astype(mx.float32)).max().item()) > rounding * scale:
        return "computed in two parts, the model gives other logits"
    return None


def _to_host(h: mx.array) -> np.ndarray:
    return np.array(h.view(mx.uint16)) if h.dtype == mx.bfloat16 else np.array(h)


def _to_device(a: np.ndarray, dtype) -> mx.array:
    out = mx.array(a)
    return out.view(mx.bfloat16) if dtype == mx.bfloat16 else out


@dataclass
class Cache:
    """Micro-batch (its rows' example indices) -> the state at the boundary."""

    split: Split
    entries: dict = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    nbytes: int = 0

    def state(self, rows: tuple, inputs: mx.array) -> mx.array:
        """The boundary state of this micro-batch: kept from an earlier epoch, else computed and kept."""
        kept = self.entries.get(rows)
        if kept is not None:
            self.hits += 1
            return _to_device(*kept)
        self.misses += 1
        h = self.split.bottom(inputs)
        mx.eval(h)
        host = _to_host(h)
        self.entries[rows] = (host, h.dtype)
        self.nbytes += host.nbytes
        return h

    def figures(self) -> dict:
        return {"blocks": self.split.k, "bytes": self.nbytes, "hits": self.hits, "misses": self.misses}


def expected_bytes(model, widths: list[tuple[int, int]]) -> int:
    """The cache's size once full, from (rows, width) of every micro-batch this process trains: one
    embedding-sized vector per position, in the dtype the blocks compute in."""
    one = model.model.embed_tokens(mx.array([[0]]))
    return sum(rows * width for rows, width in widths) * one.size * one.dtype.size


def decide(choice: str, k: int, repeats: bool, size: int, available: int) -> tuple[bool, str]:
    """Whether to cache (``frozen_cache`` is auto, on or off), and the reason in a few words."""
    if choice == "off":
        return False, "off (frozen_cache: off)"
    if k == 0:
        return False, "off: every block is trained (num_layers covers the model)"
    if not repeats:
        return False, "off: the run sees each micro-batch once"
    if choice == "auto" and size > BUDGET_SHARE * available:
        return False, (f"off: it would hold {gb(size)}, over a quarter of the {gb(available)} available "
                       f"(frozen_cache: on forces it)")
    return True, f"on: the {k} frozen blocks are computed once per micro-batch, {gb(size)} kept in memory"

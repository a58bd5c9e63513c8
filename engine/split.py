"""The model taken apart: the blocks below a boundary, the blocks above it, the head. Two things need the
parts that ``model(inputs)`` hides: the frozen-block cache (``engine.frozen``), whose later epochs start a
step at the boundary, and the loss over the vocabulary in chunks (``step.head_loss``), which keeps one
chunk's logits in memory instead of the whole micro-batch's.

Which models: decoder stacks mlx-lm builds as ``model.model.embed_tokens / layers / norm`` with a causal
mask and no sliding window (llama, mistral, qwen2, qwen3), whose head is not trained; ``split_problem``
checks that the parts compute the model's own logits before a run relies on them.
"""

from __future__ import annotations

from typing import Callable, Optional

import mlx.core as mx
from mlx.utils import tree_flatten

from .step import head_loss, logits_loss, summed_loss

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
# The loss in chunks from this hidden size up. Below it the head is cheap and a step short: chunks cost
# more time than they are worth (H200, SmolLM2, width 576: 0.64x the step's speed for 5% less memory;
# Mistral-7B shape, width 4096: 0.99x for 0.5 GB less, bench/bench_head_loss.py).
CHUNKED_FROM_WIDTH = 2048


class Split:
    """The model as two functions around block ``k``: ``bottom(inputs) -> state`` (compiled, no gradient)
    and ``loss(model, state, targets, mask)``, the summed loss from the state up; ``full_loss(model,
    inputs, targets, mask)`` is the same loss from the tokens. Both keep ``step.summed_loss``'s contract
    (summed loss, tokens), for ``nn.value_and_grad``."""

    def __init__(self, model, k: int, chunked: Optional[bool] = None):
        self.model, self.k = model, k
        inner = model.model
        self.embed, self.blocks, self.norm = inner.embed_tokens, inner.layers, inner.norm
        self.bottom = mx.compile(self._bottom)
        width = self.embed(mx.array([[0]])).shape[-1]
        self.chunked = width >= CHUNKED_FROM_WIDTH if chunked is None else chunked
        if self.chunked and head_trained(model):
            raise ValueError("the loss in chunks gives the head's weights no gradient, and this run trains them")

    def _bottom(self, inputs):
        h = self.embed(inputs)
        for block in self.blocks[:self.k]:
            h = block(h, "causal", cache=None)
        return h

    def top(self, h):
        """The normalized hidden state the head reads, from the state at the boundary."""
        for block in self.blocks[self.k:]:
            h = block(h, "causal", cache=None)
        return self.norm(h)

    def head(self, h):
        head = getattr(self.model, "lm_head", None)
        return head(h) if head is not None else self.embed.as_linear(h)

    def logits(self, h):
        return self.head(self.top(h))

    def loss(self, model, h, targets, mask):
        if self.chunked:
            return head_loss(self.head, self.top(h), targets, mask)
        return logits_loss(self.logits(h), targets, mask)

    def full_loss(self, model, inputs, targets, mask):
        return self.loss(model, self._bottom(inputs), targets, mask)


def head_trained(model) -> bool:
    """Whether the run trains the head's weights (a tied head is the embedding)."""
    head = getattr(model, "lm_head", None)
    head = model.model.embed_tokens if head is None else head
    return bool(tree_flatten(head.trainable_parameters()))


def split_problem(model, k: int, probe_tokens: list[int]) -> Optional[str]:
    """Why the run cannot take this model apart at block ``k`` (None: it can): the model type, a sliding
    window, a trained head, or parts whose logits differ from the model's on ``probe_tokens``."""
    args = getattr(model, "args", None)
    kind = getattr(args, "model_type", None)
    if kind not in SUPPORTED:
        return f"it knows llama, mistral, qwen2 and qwen3 models, not {kind}"
    inner = getattr(model, "model", None)
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        return "the model is not laid out as embed_tokens, layers and norm"
    if getattr(args, "sliding_window", None) or any(getattr(b, "use_sliding", False) for b in inner.layers):
        return "the model uses sliding-window attention"
    if head_trained(model):
        return "the run trains the head"
    x = mx.array([probe_tokens[:32] or [0]])
    try:
        split = Split(model, k, chunked=False)
        ours, theirs = split.logits(split.bottom(x)), model(x)
        mx.eval(ours, theirs)
    except Exception as e:  # noqa: BLE001 - a block with another call signature
        return f"its blocks cannot be called one by one ({type(e).__name__})"
    scale = max(float(mx.abs(theirs).max().item()), 1.0)  # a wrong split is off by the logits' own size;
    rounding = 1e-3 if theirs.dtype == mx.float32 else 2e-2  # two fusions of half precision differ by roundings
    if float(mx.abs(ours.astype(mx.float32) - theirs.astype(mx.float32)).max().item()) > rounding * scale:
        return "computed in two parts, the model gives other logits"
    return None


def training_loss(model, k: int, probe_tokens: list[int],
                  chunked: Optional[bool] = None) -> tuple[Callable, Optional[Split], Optional[str]]:
    """The loss a training step differentiates: in chunks over the vocabulary (``chunked``; by default
    from ``CHUNKED_FROM_WIDTH`` up) where the model allows, else ``summed_loss``; the model split at block
    ``k`` (None where it cannot be: the reason is ``split_problem``'s); why the loss is whole (None: it
    is in chunks)."""
    problem = split_problem(model, k, probe_tokens)
    if problem:
        return summed_loss, None, problem
    split = Split(model, k, chunked)
    if not split.chunked:
        return summed_loss, split, f"the model is narrower than {CHUNKED_FROM_WIDTH}, where chunks cost time"
    return split.full_loss, split, None

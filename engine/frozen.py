"""The frozen-block cache: a run that adapts only the top ``num_layers`` blocks computes the blocks below
them to the same values in every epoch (they are frozen, and a micro-batch holds the same examples each
epoch: ``batching.bucket_updates`` fixes them, an epoch only reorders them). So the first epoch keeps each
micro-batch's hidden state at the boundary, and later epochs start the step there: forward and backward
through the adapted blocks only.

Exact: the state is the one the same compiled function computes for the same micro-batch, whether it comes
from the cache or not, so a resumed run (its cache rebuilt as it goes) trains the same updates bit for bit.
Kept in host memory (NumPy), not the accelerator's: what the GPU's step needs is one micro-batch's state.

Which models: those ``engine.split`` can take apart (its ``split_problem`` checks, before a run relies on
it, that the parts compute the model's own logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from farense_core.format import gb

from .split import Split

BUDGET_SHARE = 0.25  # of the memory available when the run starts, for ``frozen_cache: auto``


def frozen_blocks(model, cfg: dict) -> int:
    """How many blocks, from the bottom, the run leaves frozen (0: it adapts every block)."""
    n = cfg["num_layers"]
    total = len(model.layers)
    return 0 if n < 0 else max(total - n, 0)


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

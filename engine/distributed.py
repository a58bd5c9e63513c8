"""Data-parallel training over MLX's distributed runtime: processes started by ``mlx.launch`` (ring over
TCP or Thunderbolt, MPI, NCCL on CUDA GPUs) train one run together.

``mlx.launch`` sets ``MLX_RANK`` in every process it starts; ``world()`` joins the group then, and is a
single process (every collective a no-op) otherwise. How a run is shared (``engine.trainer``):

- every process tokenizes the same data and cuts the same global, deterministic updates
  (``farense_core.batching``); each trains its share of every micro-batch (``batching.rank_share``);
- the gradients and token counts are summed over the processes before the token-weighted mean, so an
  update is the one a single process would make with the same global batch;
- rank 0 (the leader) alone reads commands, validates, judges, and writes events, metrics,
  checkpoints and the run lock; before every update it says whether the others go on (``go_on``);
- a resume restores on the leader, which then sends its weights, optimizer state and position.

mlx.launch broadcasts its stdin to every process, so commands reach them all; the followers ignore them.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from farense_core import batching


class World:
    """This process's place among the processes of a run (one process: size 1, rank 0)."""

    def __init__(self, group=None):
        self.group = group
        self.size = group.size() if group is not None else 1
        self.rank = group.rank() if group is not None else 0

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def shared(self) -> bool:
        return self.size > 1

    # ---- the data
    def share(self, indices: list[int]) -> list[int]:
        return batching.rank_share(indices, self.rank, self.size)

    # ---- inside the compiled step
    def sum(self, x: mx.array) -> mx.array:
        return mx.distributed.all_sum(x, group=self.group) if self.shared else x

    def sum_tree(self, tree):
        """Sums over the processes of every array of ``tree`` (mlx's ``average_gradients`` packs the
        small arrays of an adapter into few messages; its mean times the size is the sum, exactly for
        a power of two)."""
        if not self.shared:
            return tree
        return tree_map(lambda g: g * self.size, nn.average_gradients(tree, group=self.group))

    # ---- agreements (host side)
    def go_on(self, decision: bool = True) -> bool:
        """The leader's decision, on every process: before each update the leader says whether the
        others train it (False: the run ends here, for whatever reason the leader had)."""
        if not self.shared:
            return decision
        flag = mx.array([1 if (decision and self.leader) else 0], mx.int32)
        return bool(mx.distributed.all_sum(flag, group=self.group).item())

    def problems(self, problem: str = "") -> list[tuple[int, str]]:
        """Every process's problem (rank, sentence), none when all are ready: each process calls this once
        at the same point, so the leader can say which process could not start and why."""
        if not self.shared:
            return [(0, problem)] if problem else []
        data = problem.encode("utf-8")
        lengths = [int(n) for n in self.gather(len(data))]
        longest = max(lengths)
        if not longest:
            return []
        buf = np.zeros((1, longest), np.uint8)
        buf[0, :len(data)] = list(data)
        rows = np.array(mx.distributed.all_gather(mx.array(buf), group=self.group))
        return [(r, rows[r, :n].tobytes().decode("utf-8", errors="replace")) for r, n in enumerate(lengths) if n]

    def send_text(self, text: Optional[str]) -> Optional[str]:
        """The leader's text on every process (None on the leader: nothing, the run does not start)."""
        if not self.shared:
            return text
        data = (text or "").encode("utf-8") if self.leader else b""
        n = int(mx.distributed.all_sum(mx.array([len(data)], mx.int32), group=self.group).item())
        if n == 0:
            return None
        buf = mx.array(list(data), mx.uint8) if self.leader else mx.zeros((n,), mx.uint8)
        out = mx.distributed.all_sum(buf, group=self.group)
        return np.array(out).tobytes().decode("utf-8")

    def send_json(self, value) -> object:
        text = self.send_text(None if value is None else json.dumps(value))
        return None if text is None else json.loads(text)

    def send_tree(self, tree):
        """The leader's arrays on every process (weights, optimizer state), sent in the order of their names:
        a tree restored from a checkpoint holds the same names as a fresh one, not in the same order."""
        if not self.shared:
            return tree
        leaves = sorted(tree_flatten(tree), key=lambda kv: kv[0])
        return tree_unflatten([(k, mx.distributed.all_sum(v if self.leader else mx.zeros_like(v), group=self.group))
                               for k, v in leaves])

    def gather(self, values: list[float]) -> list:
        """Every process's ``values`` (a list: one row each; a number: one number each), in rank order."""
        if not self.shared:
            return [values]
        row = values if isinstance(values, list) else [values]
        out = mx.distributed.all_gather(mx.array([row], mx.float32), group=self.group).tolist()
        return out if isinstance(values, list) else [r[0] for r in out]


@lru_cache(maxsize=1)
def world() -> World:
    """The group this process was launched into by mlx.launch, or a single process."""
    if "MLX_RANK" not in os.environ:
        return World()
    group = mx.distributed.init(strict=True)
    return World(group) if group.size() > 1 else World()

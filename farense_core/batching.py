"""Length-bucketed batches. Pure Python + NumPy, no mlx.

mlx-lm sorts by ``CacheDataset.itemlen``, which is the length of the raw record (a dict of
one or two keys), not of its tokens, so its sort is a no-op and random batches mix short and
long examples: most of a batch is padding. We sort by real token length, cut batches of
similar lengths, and shuffle only the order of batches, seeded per epoch, so an epoch's order
is a pure function of (seed, epoch) and resume needs only the position in it.
"""

from __future__ import annotations

import math

# Batch widths are rounded up to a multiple: each new (batch, width) shape costs a trace of the
# compiled step (and on a GPU new kernels), while every padded position costs compute. A CPU is
# compute-bound: round finely. A GPU runs small batches latency-bound: fewer shapes win, as in mlx-lm.
PAD_MULTIPLE_CPU = 8
PAD_MULTIPLE_GPU = 32
PAD_MULTIPLE = PAD_MULTIPLE_CPU


def bucket_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length, cut into batches; the last, smaller batch is kept."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def bucket_updates(lengths: list[int], batch_size: int, accumulation: int = 1) -> list[list[list[int]]]:
    """Updates as lists of micro-batches: a bucket of ``batch_size x accumulation`` similar lengths
    per update, cut into micro-batches of ``batch_size``. So accumulation changes how much memory
    an update needs, never which examples it learns from: batch 8 x accumulation 4 trains exactly
    the updates of batch 32 x 1. The last update may hold fewer or smaller micro-batches."""
    return [[group[i:i + batch_size] for i in range(0, len(group), batch_size)]
            for group in bucket_batches(lengths, batch_size * accumulation)]


def budget_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most ``batch_size`` rows and, when given, at most
    ``max_tokens`` positions (rows x the batch's longest); a row longer than the budget goes alone. For
    forward-only passes (the recall probe), so they never hold more positions than a training micro-batch."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < batch_size and (max_tokens is None or (len(out[-1]) + 1) * lengths[i] <= max_tokens):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def rank_share(indices: list[int], rank: int, processes: int) -> list[int]:
    """The rows of a micro-batch that process ``rank`` of ``processes`` trains (data-parallel): equal
    contiguous shares of the global micro-batch, so the order of updates and which examples each learns
    from are the same for any number of processes. A short last micro-batch can leave a share empty."""
    per = math.ceil(len(indices) / processes)
    return indices[rank * per:(rank + 1) * per]


def share_problem(batch_size: int, processes: int) -> str | None:
    """One sentence when a micro-batch of ``batch_size`` cannot be shared equally among the processes."""
    if processes > 1 and batch_size % processes:
        return (f"batch_size {batch_size} does not divide among {processes} processes (each trains an equal share "
                f"of every micro-batch); set batch_size to a multiple of {processes}, or use "
                f"{max(d for d in range(1, processes + 1) if batch_size % d == 0)} processes.")
    return None


TRAIN_STREAM, VALID_STREAM = 0, 1


def epoch_order(n_batches: int, seed: int, epoch: int, stream: int = TRAIN_STREAM) -> list[int]:
    import numpy as np  # here, not at the top: the app imports this module and needs no numpy to start

    rng = np.random.default_rng([stream, seed, epoch])
    return rng.permutation(n_batches).tolist()


def padded_length(longest: int, max_seq_length: int, multiple: int = PAD_MULTIPLE) -> int:
    return min(multiple * math.ceil(longest / multiple), max_seq_length)


def padding_efficiency(lengths: list[int], batches: list[list[int]], max_seq_length: int,
                       multiple: int = PAD_MULTIPLE) -> float:
    """Share of the positions computed that hold real tokens."""
    real = padded = 0
    for b in batches:
        ls = [min(lengths[i], max_seq_length) for i in b]
        real += sum(ls)
        padded += len(ls) * padded_length(max(ls), max_seq_length, multiple)
    return real / padded if padded else 0.0


def updates_planned(cfg: dict, examples: int) -> tuple[int, int]:
    """(updates per epoch, total updates) of a config over ``examples`` training examples: one update
    per bucket of batch x accumulation examples, the last one smaller; ``iters`` or ``epochs``."""
    per_epoch = math.ceil(examples / (cfg["batch_size"] * cfg["grad_accumulation_steps"])) if examples else 0
    if cfg["iters"] is not None:
        return per_epoch, int(cfg["iters"])
    return per_epoch, max(1, round(cfg["epochs"] * per_epoch)) if per_epoch else 0


def epoch_micro_batches(updates: list[list[list[int]]], seed: int, epoch: int) -> list[tuple[list[int], bool]]:
    """The epoch's micro-batches in order, each with whether it ends its update."""
    out = []
    for u in epoch_order(len(updates), seed, epoch):
        out += [(mb, i + 1 == len(updates[u])) for i, mb in enumerate(updates[u])]
    return out


def updates_before(updates: list[list[list[int]]], seed: int, epoch: int, micro_batch: int) -> int:
    """How many of the epoch's updates its first ``micro_batch`` micro-batches complete: the position
    every split of the same effective batch shares (a checkpoint's, at an update's end)."""
    done, seen = 0, 0
    order = epoch_order(len(updates), seed, epoch)
    while seen < micro_batch:
        seen += len(updates[order[done]])
        done += 1
    return done


def micro_batches_before(updates: list[list[list[int]]], seed: int, epoch: int, n_updates: int) -> int:
    """The micro-batch index, in this split, where the epoch's update ``n_updates`` begins."""
    return sum(len(updates[u]) for u in epoch_order(len(updates), seed, epoch)[:n_updates])

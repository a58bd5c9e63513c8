"""Learning rate per optimizer update: warmup, then the chosen schedule. Pure Python.

Counted in updates (1-based: the rate used by update u). Our own forms: ``constant``,
``cosine`` and ``linear`` decay from the peak to ``learning_rate x min_lr_ratio`` over the
updates after warmup. An mlx-lm schedule mapping ({name, arguments, warmup, warmup_init})
keeps mlx-lm's meaning, its step counter starting at 0 for the first update.
"""

from __future__ import annotations

import math


def _mlx_lm_schedule(name: str, args: list[float], step: int) -> float:
    if name == "cosine_decay":
        init, decay_steps = args[0], max(int(args[1]), 1)
        end = args[2] if len(args) > 2 else 0.0
        s = min(step, decay_steps)
        return end + (init - end) * 0.5 * (1.0 + math.cos(math.pi * s / decay_steps))
    if name == "linear_schedule":
        init, end, steps = args[0], args[1], max(int(args[2]), 1)
        return init + (end - init) * min(step, steps) / steps
    if name == "exponential_decay":
        return args[0] * args[1] ** step
    if name == "step_decay":
        return args[0] * args[1] ** (step // max(int(args[2]), 1))
    raise ValueError(f"unknown schedule {name}")


def warmup_problem(cfg: dict, total_updates: int) -> str:
    """A sentence when warmup does not fit in the run (the rate never reaches its peak), else ""."""
    warmup = int(cfg.get("warmup_steps") or 0)
    if total_updates and warmup >= total_updates:
        return (f"warmup_steps {warmup} is not shorter than the run's {total_updates} updates: the learning rate "
                f"never reaches learning_rate; lower warmup_steps (a tenth of the run, {max(total_updates // 10, 1)}, "
                f"is usual).")
    return ""


def learning_rate_at(update: int, cfg: dict, total_updates: int) -> float:
    """The learning rate for update number ``update`` (1..total_updates)."""
    schedule = cfg.get("lr_schedule")
    if isinstance(schedule, dict):
        step = update - 1
        warmup = int(schedule.get("warmup", 0))
        init = schedule["arguments"][0]
        if warmup and step < warmup + 1:
            w0 = schedule.get("warmup_init", 0.0)
            return w0 + (init - w0) * min(step, warmup) / warmup
        if warmup:
            step -= warmup + 1
        return _mlx_lm_schedule(schedule["name"], schedule["arguments"], step)

    peak = float(cfg["learning_rate"])
    warmup = int(cfg.get("warmup_steps", 0))
    if warmup and update <= warmup:
        return peak * update / warmup
    if schedule in (None, "constant"):
        return peak
    floor = peak * float(cfg.get("min_lr_ratio", 0.1))
    span = max(total_updates - warmup, 1)
    progress = min(max(update - warmup, 0) / span, 1.0)
    if schedule == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return peak - (peak - floor) * progress
    raise ValueError(f"unknown lr_schedule {schedule!r}")

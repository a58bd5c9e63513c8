"""Helpers for the UI tests: the terminal size, a pinned clock, past run folders, and waiting on
a condition with a deadline (never a bare sleep)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Callable

from fake_engine import recorded

from farense_core import config as C
from farense_core import protocol as P
from farense_tui.runs import write_events

SIZE = (120, 40)
CLOCK = dt.datetime(2025, 5, 1, 12, 0, 0)


async def wait_for(pilot, condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Let the app run until condition() holds; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.02)
    await pilot.pause()


def write_past_run(checkpoints: Path, name: str, upto_step: int, *, finished: bool = False) -> Path:
    """A run folder as the engine leaves it: events.jsonl (cut at upto_step), config.yaml, checkpoints, adapter."""
    run = checkpoints / name
    step = run / "checkpoints" / "step_000010"
    step.mkdir(parents=True)
    for f in ("adapters.safetensors", "optimizer.safetensors", "rng.safetensors"):
        (step / f).write_bytes(b"")
    (step / "state.json").write_text('{"complete": true, "update": 10}')
    (run / "adapters").mkdir()
    (run / "adapters" / "adapters.safetensors").write_bytes(b"")
    (run / "adapters" / "adapter_config.json").write_text("{}")
    events = []
    for event in recorded("run_events.jsonl"):
        if isinstance(event, P.Step) and event.step > upto_step and not finished:
            break
        events.append(event)
    write_events(run / "events.jsonl", events)
    C.save_yaml(C.validate(recorded("run_events.jsonl")[2].config)[0], run / "config.yaml")
    return run



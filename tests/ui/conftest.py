"""UI test helpers: a fake engine factory, a pinned clock, a checkpoints folder with past runs,
and waiting on conditions with a deadline (never bare sleeps)."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_engine import FakeFactory, recorded  # noqa: E402

from engine import config as C  # noqa: E402
from engine import protocol as P  # noqa: E402
from farense_tui.app import make_app  # noqa: E402
from farense_tui.runs import write_events  # noqa: E402

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
    (run / "checkpoints" / "step_000010").mkdir(parents=True)
    (run / "adapters").mkdir()
    (run / "adapters" / "adapters.safetensors").write_bytes(b"")
    events = []
    for event in recorded("run_events.jsonl"):
        if isinstance(event, P.Step) and event.step > upto_step and not finished:
            break
        events.append(event)
    write_events(run / "events.jsonl", events)
    C.save_yaml(C.validate(recorded("run_events.jsonl")[2].config)[0], run / "config.yaml")
    return run


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with config.yaml and a checkpoints folder holding two past runs."""
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    write_past_run(checkpoints, "run-20250430-090000", 25)
    finished = write_past_run(checkpoints, "run-20250430-180000", 40, finished=True)
    # the finished run is the newer one
    os.utime(finished / "events.jsonl", (time.time() + 5, time.time() + 5))
    cfg = dict(recorded("run_events.jsonl")[2].config)
    C.save_yaml(C.validate(cfg)[0], tmp_path / "config.yaml")
    return tmp_path


@pytest.fixture
def factory():
    return FakeFactory()


@pytest.fixture
def app_factory(workdir):
    def build(factory=None, *, config: bool = True):
        return make_app(engine_factory=factory or FakeFactory(), config_path="config.yaml" if config else None,
                        checkpoints_dir="checkpoints", clock=lambda: CLOCK)

    return build

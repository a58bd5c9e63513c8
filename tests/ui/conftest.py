"""UI test fixtures: a working directory with a config and past runs, a fake engine factory,
and the app built by make_app around them (pinned clock and theme, no animations)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_engine import FakeFactory, recorded  # noqa: E402
from ui_helpers import CLOCK, write_past_run  # noqa: E402

from farense_core import config as C  # noqa: E402
from farense_tui.app import make_app  # noqa: E402


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
    def build(factory=None, *, config: bool = True, as_started: bool = False):
        app = make_app(engine_factory=factory or FakeFactory(), config_path="config.yaml" if config else None,
                       checkpoints_dir="checkpoints", clock=lambda: CLOCK)
        if not as_started:
            # no animations, whatever TEXTUAL_ANIMATIONS a developer set: the tab underline slides for 0.3 s
            # after a tab switch, and a picture taken during the slide differs from one taken after it
            app.animation_level = "none"
        return app

    return build

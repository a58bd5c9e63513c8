"""The app with the real engine on the tiny model: an engine that dies is named and resumed (by a
key, or on its own with auto_resume), and a run left training in the background when the app quits
is found and followed by the next app, where stop works again."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from textual.widgets import Static
from ui_helpers import CLOCK, SIZE, wait_for

from enginetools import base_config
from farense_core import config as C
from farense_core import protocol as P
from farense_core.rundir import RunDir, lock_holder
from farense_tui.app import make_app
from farense_tui.engine_client import EngineProcess
from farense_tui.runs import read_events

pytestmark = pytest.mark.slow  # real training

DYING = Path(__file__).resolve().parent.parent / "dying_engine.py"


def text_of(app, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


@pytest.fixture
def place(tmp_path, monkeypatch, tiny_model):
    from tiny_model import write_chat_data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    return tmp_path, write_chat_data(tmp_path / "data")


def app_with(engine_factory):
    app = make_app(engine_factory=engine_factory, config_path="config.yaml", checkpoints_dir="checkpoints",
                   clock=lambda: CLOCK)
    app.animation_level = "none"
    return app


def dying(monkeypatch, tmp_path, says: str = "", signal_name: str = ""):
    monkeypatch.setenv("DIE_AT", "5")
    monkeypatch.setenv("DIE_MARKER", str(tmp_path / "died"))
    monkeypatch.setenv("DIE_SAYS", says)
    monkeypatch.setenv("DIE_SIGNAL", signal_name)
    return lambda role: EngineProcess(argv=[sys.executable, str(DYING)]).start()


def updates(app) -> int:
    """The last update the Train tab's run reported."""
    history = app.train_tab.history
    return history.last_step.step if history is not None and history.last_step is not None else 0


def the_run(tmp_path) -> RunDir:
    runs = [p for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return RunDir(runs[0])


async def test_an_engine_killed_mid_run_is_named_and_r_resumes_it(place, tiny_model, monkeypatch):
    tmp_path, data = place
    C.save_yaml(C.validate(base_config(tiny_model, data))[0], tmp_path / "config.yaml")
    app = app_with(dying(monkeypatch, tmp_path, signal_name="SIGKILL"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3", "s")
        await wait_for(pilot, lambda: app.train_tab.state == "exited", "the engine's death", 120)
        report = text_of(app, "#train-error")
        run = the_run(tmp_path)
        assert report.startswith("The engine was killed (SIGKILL), most often by the system when memory runs out")
        assert f"Press r to resume {run.path.name} from its newest checkpoint (update 3)." in report
        await pilot.press("r")
        await wait_for(pilot, lambda: app.train_tab.state == "completed", "the resumed run", 120)
    assert "resumed_from" in run.events.read_text() and (run.path / "final" / "adapters.safetensors").is_file()


async def test_auto_resume_after_running_out_of_memory_halves_the_batch(place, tiny_model, monkeypatch):
    tmp_path, data = place
    C.save_yaml(C.validate(base_config(tiny_model, data, auto_resume=1))[0], tmp_path / "config.yaml")
    app = app_with(dying(monkeypatch, tmp_path, says="RuntimeError: [metal::malloc] Resource limit exceeded"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3", "s")
        await wait_for(pilot, lambda: app.train_tab.state == "completed", "the run resumed on its own", 180)
        report = text_of(app, "#train-error")
        assert report.startswith("The engine ran out of memory: the batch did not fit.")
        assert ("Resumed on its own (1 of 1, auto_resume): resuming with batch_size 1 x grad_accumulation_steps 2 "
                "(the same updates in less memory).") in report
    settings = the_run(tmp_path).settings()
    assert (settings["batch_size"], settings["grad_accumulation_steps"]) == (1, 2)


async def test_quit_to_the_background_then_the_next_app_follows_and_stops_the_run(place, tiny_model):
    tmp_path, data = place
    cfg = base_config(tiny_model, data, iters=100000, save_every=50, steps_per_eval=100000, keep_checkpoints=2)
    C.save_yaml(C.validate(cfg)[0], tmp_path / "config.yaml")
    app = app_with(lambda role: EngineProcess().start())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3", "s")
        await wait_for(pilot, lambda: updates(app) >= 3, "training", 120)
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: getattr(app.screen, "title_text", "") == "A run is training.",
                       "the quit question")
        await pilot.press("b")
        await wait_for(pilot, lambda: not app.is_running, "the app to quit", 30)
    run = the_run(tmp_path)
    holder = lock_holder(run)
    assert holder and holder["pid"] != os.getpid()  # the engine goes on, alone
    assert app.farewell.startswith(f"{Path('checkpoints') / run.path.name} goes on training in the background")

    again = app_with(lambda role: EngineProcess().start())
    async with again.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: again.train_tab.busy, "the next app to find the live run", 10)
        assert again.query_one("TabbedContent").active == "train"
        caught_up = updates(again)
        await wait_for(pilot, lambda: updates(again) > caught_up + 5, "progress from the background run", 60)
        await pilot.press("x")
        await wait_for(pilot, lambda: again.train_tab.state == "stopped", "the stop to reach the run", 60)
    assert lock_holder(run) is None
    done = [e for e in read_events(run.path)[0] if isinstance(e, P.Done)]
    assert [d.status for d in done] == ["stopped"]  # one run, one end
    assert run.list_checkpoints()

"""Unit tests of farense_tui.runs: folding events, reading run folders, downsampling."""

from __future__ import annotations

import datetime as dt

import pytest
from fake_engine import recorded
from ui_helpers import write_past_run

from farense_core import protocol as P
from farense_tui.messages import EngineEvent, ReplyProgress, TrainingProgress
from farense_tui.runs import (
    RunError, RunHistory, Series, downsample, list_runs, load_run, new_run_dir, run_config,
)


def test_downsample_keeps_extremes_and_ends():
    xs = list(range(1000))
    ys = [0.0] * 1000
    ys[137], ys[640] = 9.0, -9.0
    out_x, out_y = downsample(xs, ys, 50)
    assert len(out_x) <= 50
    assert (out_x[0], out_x[-1]) == (0, 999)
    assert 9.0 in out_y and -9.0 in out_y
    assert out_x == sorted(out_x)
    assert downsample([1, 2], [3, 4], 50) == ([1, 2], [3, 4])


def test_series_stays_bounded_and_skips_non_finite():
    s = Series(capacity=100)
    for i in range(1000):
        s.add(i, float(i % 37))
    s.add(1000, float("nan"))
    assert len(s) <= 100 and s.xs[0] == 0 and s.xs[-1] == 999
    assert max(s.ys) == 36.0


def test_history_folds_a_recorded_run():
    stream = recorded("run_events.jsonl")
    history = RunHistory()
    for event in stream:
        history.apply(event)
    snap = history.snapshot()
    assert snap.last_step.step == 40 and snap.done.status == "completed" and snap.state == "idle"
    assert snap.best_val_loss == min(snap.series["val_loss"][1])
    # memory comes from every update and every memory event (here a cache clear after each update)
    memory_events = sum(isinstance(e, P.MemoryEvent) for e in stream)
    assert memory_events == 40
    assert len(snap.series["loss"][0]) == 40 and len(snap.series["rss"][0]) == 40 + memory_events
    assert snap.guard_gb == stream[2].config["memory_guard_gb"] and snap.run_dir == "checkpoints/run-20250501-120000"
    assert [c.reason for c in snap.checkpoints] == [e.reason for e in stream if isinstance(e, P.Checkpoint)]
    assert snap.warnings == [e.message for e in stream if isinstance(e, P.Warning)]
    assert len(snap.warnings) == 1
    # a snapshot is a copy: folding more does not change it
    history.apply(P.Warning(message="later"))
    assert len(snap.warnings) == 1 and snap.version < history.version


def test_load_run_and_list_runs(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    write_past_run(checkpoints, "run-a", 25)
    write_past_run(checkpoints, "run-b", 40, finished=True)
    (checkpoints / "not-a-run").mkdir()
    with open(checkpoints / "run-a" / "events.jsonl", "a") as f:
        f.write('{"type":"step","step":26,"tot')  # a run killed mid-line
    half = checkpoints / "run-a" / "checkpoints" / "step_000020"  # killed while writing: no state.json
    half.mkdir()
    (half / "adapters.safetensors").write_bytes(b"")
    history, bad = load_run(checkpoints / "run-a")
    assert bad == 1 and history.snapshot().last_step.step == 25
    runs = {r.name: r for r in list_runs(checkpoints)}
    assert set(runs) == {"run-a", "run-b"}
    assert (runs["run-a"].status, runs["run-a"].step, runs["run-a"].resumable) == ("unfinished", 25, True)
    assert (runs["run-b"].status, runs["run-b"].resumable) == ("completed", False)
    assert runs["run-a"].last_checkpoint.endswith("step_000010")  # the newest complete one
    assert runs["run-a"].adapter == checkpoints / "run-a" / "adapters"
    assert run_config(checkpoints / "run-a")["iters"] == 40
    assert list_runs(tmp_path / "missing") == []


def test_load_run_errors_are_one_sentence(tmp_path):
    with pytest.raises(RunError, match="There is no events.jsonl at"):
        load_run(tmp_path)
    (tmp_path / "events.jsonl").write_text("garbage\n")
    with pytest.raises(RunError, match="holds no events"):
        load_run(tmp_path / "events.jsonl")
    with pytest.raises(RunError, match="cannot be resumed"):
        run_config(tmp_path)


def test_new_run_dir_is_unique(tmp_path):
    now = dt.datetime(2025, 5, 1, 12, 0, 0)
    first = new_run_dir(tmp_path, now)
    assert first == tmp_path / "run-20250501-120000"
    first.mkdir()
    assert new_run_dir(tmp_path, now) == tmp_path / "run-20250501-120000-2"


def test_high_rate_messages_replace_only_their_own_kind():
    step = next(e for e in recorded("run_events.jsonl") if isinstance(e, P.Step))
    newer = TrainingProgress("train", step)
    assert TrainingProgress("train", step).can_replace(newer)
    assert not TrainingProgress("train", step).can_replace(EngineEvent("train", step))
    assert ReplyProgress("chat", "a", "x").can_replace(ReplyProgress("chat", "a", "xy"))
    assert not ReplyProgress("chat", "a", "x").can_replace(ReplyProgress("chat", "b", "y"))
    assert not EngineEvent("train", step).can_replace(EngineEvent("train", step))
    assert EngineEvent.bubble is False  # engine messages go to the tabs that follow the engine, no further

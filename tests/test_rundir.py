"""RunDir: the run folder's layout, which checkpoint is complete, which adapter a run offers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farense_core.config import ConfigError
from farense_core.rundir import (AdapterSettingsError, RunDir, adapter_settings, checkpoint_state,
                                 read_adapter_settings)


def adapter(folder: Path, **settings) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapters.safetensors").write_bytes(b"")
    (folder / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", **settings}))
    return folder


def checkpoint(rd: RunDir, update: int, *, complete: bool = True, state: bool = True) -> Path:
    path = rd.checkpoint(update)
    path.mkdir(parents=True)
    for name in ("adapters.safetensors", "optimizer.safetensors", "rng.safetensors"):
        (path / name).write_bytes(b"")
    if state:
        (path / "state.json").write_text(json.dumps({"complete": complete, "update": update}))
    return path


def test_the_layout():
    rd = RunDir("checkpoints/run-1")
    assert rd.events == Path("checkpoints/run-1/events.jsonl")
    assert rd.config.name == "config.yaml" and rd.summary.name == "training_summary.json"
    assert rd.best == Path("checkpoints/run-1/adapters") and rd.final == Path("checkpoints/run-1/final")
    assert rd.checkpoint(42) == Path("checkpoints/run-1/checkpoints/step_000042")


def test_the_newest_checkpoint_is_the_newest_complete_one(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.list_checkpoints() == [] and rd.newest_checkpoint() is None
    checkpoint(rd, 10)
    checkpoint(rd, 20)
    checkpoint(rd, 30, state=False)  # killed before state.json was written
    checkpoint(rd, 40, complete=False)
    (rd.checkpoints / "step_notanumber").mkdir()
    assert [p.name for p in rd.list_checkpoints()] == ["step_000010", "step_000020", "step_000030", "step_000040"]
    path, state = rd.newest_checkpoint()
    assert path.name == "step_000020" and state["update"] == 20
    (rd.checkpoint(20) / "rng.safetensors").unlink()  # a part missing: not complete either
    assert checkpoint_state(rd.checkpoint(20)) is None
    assert rd.newest_checkpoint()[0].name == "step_000010"


def test_the_adapter_a_run_offers_is_the_best_else_the_final_else_its_newest_checkpoint(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.adapter() is None
    checkpoint(rd, 10)
    assert rd.adapter() is None  # a checkpoint without its adapter_config.json is no adapter
    (rd.checkpoint(10) / "adapter_config.json").write_text("{}")
    assert rd.adapter() == rd.checkpoint(10)  # stopped before its first validation: its checkpoint
    adapter(rd.final)
    assert rd.adapter() == rd.final
    adapter(rd.best)
    assert rd.adapter() == rd.best


def test_the_base_model_comes_from_the_config_else_the_adapter(tmp_path):
    rd = RunDir(tmp_path)
    adapter(rd.best, model="models/from-adapter")
    assert rd.base_model() == "models/from-adapter"
    rd.config.write_text("model: models/from-config\n")
    assert rd.base_model() == "models/from-config"
    rd.config.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError):
        rd.base_model()


def test_an_adapter_belongs_to_the_run_that_holds_it(tmp_path):
    run = tmp_path / "run"
    adapter(run / "adapters")
    assert RunDir.of_adapter(run / "adapters") is None  # not a run yet: no events
    (run / "events.jsonl").write_text("")
    assert RunDir.of_adapter(run / "adapters").path == run
    assert RunDir.of_adapter(run).path == run
    assert RunDir.of_adapter(tmp_path / "elsewhere") is None


def test_unreadable_adapter_settings_are_one_sentence_or_empty(tmp_path):
    folder = adapter(tmp_path / "a")
    assert read_adapter_settings(folder)["fine_tune_type"] == "lora"
    (folder / "adapter_config.json").write_text('{"fine_tune_type": "lo')
    with pytest.raises(AdapterSettingsError, match=r"adapter_config.json cannot be read .*export the adapter again"):
        read_adapter_settings(folder)
    assert adapter_settings(folder) == {}
    (folder / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(AdapterSettingsError, match="is not a JSON object"):
        read_adapter_settings(folder)

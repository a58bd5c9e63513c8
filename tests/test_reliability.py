"""Faults injected into training: damaged checkpoints, a full disk, two runs on one folder, bad
input. Each test fails without the safeguard it names (docs/reliability.md is the catalogue)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from enginetools import adapter_arrays, assert_bit_identical, base_config, train_in_process
from farense_core import protocol as P
from farense_core.format import size
from farense_core.rundir import RunDir

pytestmark = pytest.mark.slow  # training runs


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tiny_model import write_chat_data

    return write_chat_data(tmp_path_factory.mktemp("data") / "data")


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, data, tmp_path_factory):
    """The final adapter of the run, trained in one go (12 updates, a checkpoint every 3)."""
    run = tmp_path_factory.mktemp("full") / "run"
    done, _ = train_in_process(base_config(tiny_model, data), run)
    assert done.status == "completed"
    return adapter_arrays(run / "final" / "adapters.safetensors")


def stopped_at(tiny_model, data, run: Path, update: int) -> None:
    """The same run, stopped after ``update`` (checkpoints of 3, 6, ... up to it)."""
    from engine.server import Context
    from engine.trainer import train

    class StopAt(Context):
        def emit(self, record):
            super().emit(record)
            if isinstance(record, P.Step) and record.step == update:
                self.stop_requested.set()

    done = train(StopAt(io.StringIO()), base_config(tiny_model, data), run)
    assert done.status == "stopped" and done.summary["updates"] == update


def flip_bytes(path: Path, at: float = 0.7) -> None:
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * at)
    raw[i:i + 4] = bytes(b ^ 0xFF for b in raw[i:i + 4])
    path.write_bytes(bytes(raw))


def edit_state(path: Path, change) -> None:
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps(change(state)))


def nan_optimizer_of_an_earlier_version(path: Path) -> None:
    """An optimizer state holding NaN in a checkpoint written before checksums (so only loading it tells)."""
    import mlx.core as mx

    arrays = mx.load(str(path / "optimizer.safetensors"))
    name = next(k for k in arrays if mx.issubdtype(arrays[k].dtype, mx.floating) and arrays[k].size)
    arrays[name] = mx.full(arrays[name].shape, float("nan"), dtype=arrays[name].dtype)
    mx.save_safetensors(str(path / "optimizer.safetensors"), arrays)
    edit_state(path, lambda s: {k: v for k, v in s.items() if k != "files"})


DAMAGE = {
    "adapter bytes flipped": (lambda p: flip_bytes(p / "adapters.safetensors"), "does not match the checksum"),
    "optimizer bytes flipped": (lambda p: flip_bytes(p / "optimizer.safetensors"), "does not match the checksum"),
    "rng truncated": (lambda p: (p / "rng.safetensors").write_bytes((p / "rng.safetensors").read_bytes()[:20]),
                      "bytes, not the"),
    "state.json not JSON": (lambda p: (p / "state.json").write_text('{"complete": tr'), "cannot be read"),
    "state.json update not a number": (lambda p: edit_state(p, lambda s: {**s, "update": "nine"}),
                                       "holds no valid position"),
    "state.json without its position": (lambda p: edit_state(p, lambda s: {k: v for k, v in s.items()
                                                                            if k != "batch"}),
                                        "holds no valid position"),
    "optimizer NaN, no checksums": (nan_optimizer_of_an_earlier_version, "NaN or infinite"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_set_aside_and_resume_uses_the_one_before(tiny_model, data, uninterrupted,
                                                                           tmp_path, damage):
    run = tmp_path / "run"
    stopped_at(tiny_model, data, run, 9)
    harm, said = DAMAGE[damage]
    harm(RunDir(run).checkpoint(9))
    done, events = train_in_process({}, run, resume=True)
    assert done.status == "completed", of(events, P.Error)
    warning = next(w for w in of(events, P.Warning) if w.code == "damaged_checkpoint")
    assert warning.message.startswith("The checkpoint step_000009 is damaged:") and said in warning.message
    assert "resuming from step_000006 instead" in warning.message
    assert of(events, P.Step)[0].step == 7  # redone from the intact checkpoint
    assert (run / "checkpoints" / "damaged-step_000009").is_dir()  # set aside, not deleted
    assert_bit_identical(uninterrupted, adapter_arrays(run / "final" / "adapters.safetensors"))


def test_every_checkpoint_damaged_is_one_sentence(tiny_model, data, tmp_path):
    run = tmp_path / "run"
    stopped_at(tiny_model, data, run, 6)
    for update in (3, 6):
        flip_bytes(RunDir(run).checkpoint(update) / "adapters.safetensors")
    done, events = train_in_process({}, run, resume=True)
    assert done.status == "failed"
    error = of(events, P.Error)[0]
    assert error.traceback == "" and error.message.startswith("No intact checkpoint in ")
    assert "step_000006: adapters.safetensors does not match" in error.message
    assert error.message.endswith("start the run again in a new folder.")


def test_resume_from_an_older_checkpoint_sets_the_later_ones_aside(tiny_model, data, uninterrupted, tmp_path):
    run = tmp_path / "run"
    stopped_at(tiny_model, data, run, 9)
    done, events = train_in_process({}, run, resume=True, from_checkpoint=3)
    assert done.status == "completed" and of(events, P.Step)[0].step == 4
    assert of(events, P.Config)[0].resumed_from.endswith("step_000003")
    aside = sorted(w.message for w in of(events, P.Warning) if w.code == "abandoned_checkpoint")
    assert len(aside) == 2 and "step_000006 is set aside as abandoned-step_000006" in aside[0]
    assert_bit_identical(uninterrupted, adapter_arrays(run / "final" / "adapters.safetensors"))

    done, events = train_in_process({}, run, resume=True, from_checkpoint=5)
    assert done.status == "failed"
    assert of(events, P.Error)[0].message.startswith(f"{run / 'checkpoints'} has no checkpoint of update 5 (it has: ")


def test_resume_without_config_yaml_uses_the_checkpoints_config(tiny_model, data, uninterrupted, tmp_path):
    run = tmp_path / "run"
    stopped_at(tiny_model, data, run, 6)
    (run / "config.yaml").unlink()  # as when a run is killed before config.yaml is written
    done, events = train_in_process({}, run, resume=True)
    assert done.status == "completed", of(events, P.Error)
    assert any("config.yaml is missing; resuming with the config saved in step_000006" in w.message
               for w in of(events, P.Warning))
    assert_bit_identical(uninterrupted, adapter_arrays(run / "final" / "adapters.safetensors"))


def test_checkpoints_record_size_and_checksum_of_every_file(tiny_model, data, tmp_path):
    import hashlib

    run = tmp_path / "run"
    stopped_at(tiny_model, data, run, 3)
    path = RunDir(run).checkpoint(3)
    files = json.loads((path / "state.json").read_text())["files"]
    assert set(files) == {"adapters.safetensors", "optimizer.safetensors", "rng.safetensors", "adapter_config.json"}
    for name, record in files.items():
        raw = (path / name).read_bytes()
        assert record == {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


# ------------------------------------------------------------------ one run per folder


def test_a_second_run_on_a_live_folder_is_refused_with_the_holders_name(tiny_model, data, tmp_path):
    import os
    import socket
    import threading

    from engine.server import Context
    from engine.trainer import train
    from farense_core.rundir import lock_holder

    run = tmp_path / "run"
    training, release = threading.Event(), threading.Event()

    class HoldAtUpdate2(Context):
        def emit(self, record):
            super().emit(record)
            if isinstance(record, P.Step) and record.step == 2:
                training.set()
                release.wait(60)

    first = {}
    thread = threading.Thread(target=lambda: first.update(done=train(HoldAtUpdate2(io.StringIO()),
                                                                     base_config(tiny_model, data), run)))
    thread.start()
    try:
        assert training.wait(60)
        holder = lock_holder(RunDir(run))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        for resume in (True, False):
            done, events = train_in_process(base_config(tiny_model, data) if not resume else {}, run, resume=resume)
            assert done.status == "failed"
            message = of(events, P.Error)[0].message
            assert message.startswith(f"{run} is in use by another run (pid {os.getpid()} on ")
            assert message.endswith("stop that run first, or train into another folder.")
    finally:
        release.set()
        thread.join(120)
    assert first["done"].status == "completed"
    written = (run / "events.jsonl").read_text().splitlines()
    assert sum('"type":"done"' in line for line in written) == 1  # the refused runs wrote nothing there
    assert lock_holder(RunDir(run)) is None  # released at the end


def test_a_dead_process_does_not_hold_the_folder(tiny_model, data, tmp_path):
    import signal
    import subprocess
    import sys

    from farense_core.rundir import lock_holder

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from farense_core.rundir import RunDir, RunLock; "
        f"RunLock(RunDir({str(run)!r})).acquire(); print('held', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(RunDir(run))["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    assert lock_holder(RunDir(run)) is None
    done, events = train_in_process(base_config(tiny_model, data, iters=3), run)
    assert done.status == "completed", of(events, P.Error)


# ------------------------------------------------------------------ a full disk


def test_no_room_for_the_next_checkpoint_stops_resumably_with_one_sentence(tiny_model, data, uninterrupted,
                                                                           tmp_path, monkeypatch):
    import engine.checkpoints as ckpt

    run = tmp_path / "run"
    real = ckpt.free_bytes
    checkpoints_written = []

    def filling_up(path):  # room for the start check and two checkpoints, then a full disk
        return real(path) if len(checkpoints_written) < 2 else 1_000_000

    monkeypatch.setattr(ckpt, "free_bytes", filling_up)
    monkeypatch.setattr(ckpt, "file_record", lambda p, real_record=ckpt.file_record: (
        checkpoints_written.append(p) if p.name == "adapters.safetensors" else None) or real_record(p))
    done, events = train_in_process(base_config(tiny_model, data), run)
    assert done.status == "disk_full"
    error = of(events, P.Error)[0]
    assert error.code == "disk_full" and error.traceback == ""
    assert error.message.startswith(f"The disk holding {run / 'checkpoints'} is full: {size(1_000_000)} free, "
                                    f"and a checkpoint needs about ")
    assert error.message.endswith("Free space there, then resume the run (its newest checkpoint is intact).")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000003", "step_000006"]
    monkeypatch.setattr(ckpt, "free_bytes", real)
    done, events = train_in_process({}, run, resume=True)
    assert done.status == "completed" and of(events, P.Step)[0].step == 7
    assert_bit_identical(uninterrupted, adapter_arrays(run / "final" / "adapters.safetensors"))


def test_the_disk_filling_during_a_write_keeps_the_previous_checkpoint(tiny_model, data, uninterrupted, tmp_path,
                                                                       monkeypatch):
    import errno

    import engine.checkpoints as ckpt

    run = tmp_path / "run"
    real = ckpt._save_safetensors

    def no_space_at_update_6(path, arrays):
        if path.name == "optimizer.safetensors" and "step_000006" in path.parent.name:
            real(path, arrays)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, arrays)

    monkeypatch.setattr(ckpt, "_save_safetensors", no_space_at_update_6)
    done, events = train_in_process(base_config(tiny_model, data), run)
    assert done.status == "disk_full" and done.summary["updates"] == 6
    assert of(events, P.Error)[0].message.startswith(f"The disk holding {run / 'checkpoints'} is full: ")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000003"]  # no half-written folder
    monkeypatch.setattr(ckpt, "_save_safetensors", real)
    done, events = train_in_process({}, run, resume=True)
    assert done.status == "completed" and of(events, P.Step)[0].step == 4
    assert_bit_identical(uninterrupted, adapter_arrays(run / "final" / "adapters.safetensors"))


def test_mlx_reports_a_full_disk_without_errno_and_it_is_still_named(tmp_path, monkeypatch):
    import engine.checkpoints as ckpt

    monkeypatch.setattr(ckpt, "free_bytes", lambda path: 100)
    assert ckpt.is_disk_full(RuntimeError("[write] Unable to write 3145822 bytes to file."), tmp_path, 4096)
    assert not ckpt.is_disk_full(RuntimeError("[write] Unable to write 3145822 bytes to file."), tmp_path, 50)
    assert not ckpt.is_disk_full(RuntimeError("[matmul] shapes do not match"), tmp_path, 4096)


def test_a_disk_too_full_for_one_checkpoint_is_refused_before_training(tiny_model, data, tmp_path, monkeypatch):
    import engine.checkpoints as ckpt

    monkeypatch.setattr(ckpt, "free_bytes", lambda path: 4096)
    done, events = train_in_process(base_config(tiny_model, data), tmp_path / "run")
    assert done.status == "disk_full" and not of(events, P.Step)
    message = of(events, P.Error)[0].message
    assert message.startswith(f"The disk holding {tmp_path / 'run'} is full: 4.0 KB free, and this run (a checkpoint "
                              f"and its adapters) needs about ")
    assert message.endswith("Free space there, then start it again.")


def test_an_events_file_that_cannot_be_written_never_stops_the_run(tiny_model, data, tmp_path):
    import errno

    from engine.server import Context
    from engine.trainer import train

    class FillingContext(Context):
        written = 0

        def tee(self, f):
            if f is None:
                return super().tee(None)

            class Full(io.StringIO):
                name = str(tmp_path / "run" / "events.jsonl")

                def write(inner, text):
                    FillingContext.written += 1
                    if FillingContext.written > 5:
                        raise OSError(errno.ENOSPC, "No space left on device")
                    return super().write(text)

            return super().tee(Full())

    out = io.StringIO()
    done = train(FillingContext(out), base_config(tiny_model, data, iters=4), tmp_path / "run")
    assert done.status == "completed"
    events = [P.parse_event(line) for line in out.getvalue().splitlines()]
    warning = next(e for e in events if isinstance(e, P.Warning) and e.code == "events_file")
    assert "events.jsonl could not be written ([Errno 28] No space left on device)" in warning.message
    assert of(events, P.Step)[-1].step == 4  # the UI kept hearing the run

"""Faults injected into training: damaged checkpoints, a full disk, two runs on one folder, bad
input. Each test fails without the safeguard it names (docs/reliability.md is the catalogue)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from enginetools import adapter_arrays, assert_bit_identical, base_config, train_in_process, train_stopped_at
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
    train_stopped_at(base_config(tiny_model, data), run, update)


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


# ------------------------------------------------------------------ bad input, one sentence each


BAD_RUNS = {
    "empty run folder": ({}, "", "The run folder is not set; give a folder for the run's files"),
    "a file as run folder": ({}, "notes.txt", "notes.txt is a file, not a folder"),
    "run folder under a file": ({}, "notes.txt/run", "notes.txt/run cannot be made: "),
    "a folder of the user's files": ({}, "mine", "mine already holds files that are not a run's (config.yaml)"),
    "lora key unknown": ({"lora_parameters": {"rank": 4, "scale": 10.0, "keys": ["self_attn.q_proj", "mlp.nope"]}},
                         "run", "lora_parameters.keys names mlp.nope, which this model's blocks do not have"),
    "lora key not a linear layer": ({"lora_parameters": {"rank": 4, "scale": 10.0, "keys": ["input_layernorm"]}},
                                    "run", "lora_parameters.keys names input_layernorm,"),
    "optimizer setting unknown": ({"optimizer_config": {"adam": {"beta3": 0.5}}}, "run",
                                  "optimizer_config.adam.beta3 is not a setting of adam; it takes: betas, eps, "
                                  "bias_correction."),
    "optimizer setting of the wrong kind": ({"optimizer_config": {"adam": {"betas": "fast"}}}, "run",
                                            "optimizer_config.adam.betas is 'fast', but it must be a list of 2 "
                                            "numbers"),
    "optimizer name unknown": ({"optimizer_config": {"adamm": {"eps": 1e-6}}}, "run",
                               "optimizer_config.adamm is not an optimizer; name one of adam, adamw, sgd, adafactor."),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_run_input_is_one_sentence_and_touches_nothing(tiny_model, data, tmp_path, monkeypatch, case):
    change, run_dir, said = BAD_RUNS[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text("my: own file\n")
    (tmp_path / "config.yaml").write_text("the user's config\n")
    done, events = train_in_process({**base_config(tiny_model, data), **change}, run_dir)
    assert done.status == "failed"
    error = of(events, P.Error)[0]
    assert said in error.message and error.traceback == "" and "\n" not in error.message
    assert not of(events, P.Step)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "config.yaml").read_text() == "the user's config\n"  # what --run-dir "" once overwrote
    assert (tmp_path / "mine" / "config.yaml").read_text() == "my: own file\n"


def test_an_unwritable_place_for_the_run_is_one_sentence(tiny_model, data, tmp_path, monkeypatch):
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == tmp_path else real(path, mode))
    done, events = train_in_process(base_config(tiny_model, data), tmp_path / "run")
    assert of(events, P.Error)[0].message == (f"{tmp_path} is not writable, so the run cannot write {tmp_path / 'run'}; "
                                              f"choose a folder you can write to.")


BAD_DATA = {
    "a bot role": ({"messages": [{"role": "user", "content": "Olá"}, {"role": "bot", "content": "Olá!"}]},
                   "message 2 has role 'bot'"),
    "ends with the user": ({"messages": [{"role": "user", "content": "Olá"}]}, "the last message is from 'user'"),
    "only a system message": ({"messages": [{"role": "system", "content": "Sê breve."}]},
                              "the last message is from 'system'"),
    "an empty completion": ({"prompt": "Olá", "completion": " "}, "'completion' is empty"),
    "content that is a number": ({"messages": [{"role": "user", "content": 7}, {"role": "assistant",
                                                                                 "content": "Sete."}]},
                                 "message 1 (user) has content that is a number"),
    "no messages": ({"messages": []}, "'messages' is empty"),
    "empty text": ({"text": ""}, "'text' is empty"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_train_rejects_what_data_check_rejects_with_file_and_line(tiny_model, data, tmp_path, case):
    import shutil

    from farense_core.datafiles import check_file

    row, said = BAD_DATA[case]
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    lines = (folder / "train.jsonl").read_text().splitlines()
    lines.insert(2, json.dumps(row))
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert check_file(folder / "train.jsonl").problem_lines()[0].startswith(f"{folder / 'train.jsonl'}:3: {said}")
    done, events = train_in_process(base_config(tiny_model, folder), tmp_path / "run")
    assert done.status == "failed" and not of(events, P.Model)  # refused before the model was loaded
    error = of(events, P.Error)[0]
    assert error.message.startswith(f"{folder / 'train.jsonl'}:3: {said}") and error.traceback == ""


# ------------------------------------------------------------------ an engine that dies


def dying_engine(monkeypatch, tmp_path, at: int, says: str = "", signal_name: str = ""):
    """An engine factory for headless train: the real engine, dying once at update ``at``."""
    import sys

    from farense_tui.engine_client import EngineProcess

    monkeypatch.setenv("DIE_AT", str(at))
    monkeypatch.setenv("DIE_MARKER", str(tmp_path / "died"))
    monkeypatch.setenv("DIE_SAYS", says)
    monkeypatch.setenv("DIE_SIGNAL", signal_name)
    script = Path(__file__).resolve().parent / "dying_engine.py"
    return lambda: EngineProcess(argv=[sys.executable, str(script)])


def headless_train(cfg: dict, tmp_path: Path, make_engine) -> int:
    from farense_core import config as C
    from farense_tui.commands import train as cli

    C.save_yaml(cfg, tmp_path / "c.yaml")
    args = cli.build_parser().parse_args(["--config", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run")])
    return cli.run(args, make_engine=make_engine, tty=False)


def test_headless_train_resumes_on_its_own_after_running_out_of_memory(tiny_model, data, uninterrupted, tmp_path,
                                                                       monkeypatch, capsys):
    import numpy as np

    make = dying_engine(monkeypatch, tmp_path, 5, "RuntimeError: [metal::malloc] Resource limit exceeded")
    code = headless_train(base_config(tiny_model, data, auto_resume=1), tmp_path, make)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "The engine ran out of memory: the batch did not fit. Its last output:" in err
    assert ("auto_resume (1 of 1): resuming with batch_size 1 x grad_accumulation_steps 2 (the same updates in less "
            "memory)") in err
    rd = RunDir(tmp_path / "run")
    assert (rd.settings()["batch_size"], rd.settings()["grad_accumulation_steps"]) == (1, 2)
    assert "resume_config" not in rd.events.read_text()  # the same effective batch: no warning that the run differs
    final = adapter_arrays(rd.path / "final" / "adapters.safetensors")
    for name in uninterrupted:  # the same updates, summed in another order
        assert np.allclose(np.array(final[name]), np.array(uninterrupted[name]), atol=1e-5), name


def test_headless_train_without_auto_resume_names_the_death_and_the_way_on(tiny_model, data, tmp_path, monkeypatch,
                                                                         capsys):
    make = dying_engine(monkeypatch, tmp_path, 5, signal_name="SIGKILL")
    code = headless_train(base_config(tiny_model, data), tmp_path, make)
    err = capsys.readouterr().err
    assert code == 1
    assert "The engine was killed (SIGKILL), most often by the system when memory runs out" in err
    assert f"continue from the newest checkpoint with 'farense-tui train --run-dir {tmp_path / 'run'} --resume'" in err
    assert "auto_resume" not in err
    assert [p.name for p in RunDir(tmp_path / "run").list_checkpoints()] == ["step_000003"]


# ------------------------------------------------------------------ leave and come back


def test_train_detach_then_attach_follows_and_stops_the_run(tiny_model, data, tmp_path, capsys):
    from farense_core import config as C
    from farense_core.rundir import lock_holder
    from farense_tui.commands import attach, train as cli

    cfg = base_config(tiny_model, data, iters=100000, save_every=50, steps_per_eval=100000, keep_checkpoints=2)
    C.save_yaml(cfg, tmp_path / "c.yaml")
    run = tmp_path / "run"
    args = cli.build_parser().parse_args(["--config", str(tmp_path / "c.yaml"), "--run-dir", str(run), "--detach"])
    assert cli.run(args, tty=False) == 0
    said = capsys.readouterr().out
    holder = lock_holder(RunDir(run))
    assert f"training in the background (pid {holder['pid']}); follow it with 'farense-tui attach {run}'" in said

    code = attach.run(attach.build_parser().parse_args([str(run), "--stop"]), tty=False)
    out = capsys.readouterr().out
    assert code == 130  # stopped, as train says it
    assert f"stopping: the run (pid {holder['pid']}) saves a checkpoint, then ends..." in out
    assert f"continue with 'farense-tui train --run-dir {run} --resume'" in out
    assert lock_holder(RunDir(run)) is None
    log = (run / "engine.log").read_text()  # the detached engine's stderr went to its run folder
    assert isinstance(log, str)
    assert attach.run(attach.build_parser().parse_args([str(run)]), tty=False) == 2
    assert capsys.readouterr().err == (f"farense-tui: Nothing trains {run} now; open it in the Monitor or resume it "
                                       f"instead.\n")


def test_detach_while_idle_is_a_warning_and_the_engine_stays():
    from enginetools import EngineRun

    eng = EngineRun()
    try:
        eng.send(P.Detach())
        warning = eng.until(lambda e: isinstance(e, P.Warning))
        assert (warning.code, warning.message) == ("idle", "Nothing is training to detach from: the engine is idle "
                                                           "or busy with another job.")
        assert eng.engine.returncode is None
    finally:
        eng.close()


def test_the_engine_keeps_a_mac_awake_while_it_trains(tiny_model, data, tmp_path, monkeypatch):
    import os
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "caffeinate"  # records its arguments, then holds on as the real one would
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'caffeinate.args'}\nexec sleep 60\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sys, "platform", "darwin")
    started = []
    import engine.awake as awake

    real = awake.subprocess.Popen
    monkeypatch.setattr(awake.subprocess, "Popen", lambda *a, **k: started.append(real(*a, **k)) or started[-1])
    done, _ = train_in_process(base_config(tiny_model, data, iters=2), tmp_path / "run")
    assert done.status == "completed"
    assert (tmp_path / "caffeinate.args").read_text().split() == ["-i", "-w", str(os.getpid())]
    assert len(started) == 1 and started[0].poll() is not None  # let go when the run ended
    monkeypatch.setattr(sys, "platform", "linux")
    assert awake.keep_awake() is None

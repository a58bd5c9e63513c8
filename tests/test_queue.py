"""The run queue: `farense-tui queue add` (sweeps, validation, folder names), list, remove, clear, one
runner at a time, and `queue run` on the tiny model: a failed run does not end the queue; ctrl+c stops
it with a checkpoint and `queue run` again resumes that run and goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from enginetools import base_config
from test_train_cli import RecordingEngine

from farense_core import config as C
from farense_core import queue as Q
from farense_tui.commands import queue as cli
from farense_tui.commands import train as train_cli

ROOT = Path(__file__).resolve().parent.parent
STAMP = r"\d{8}-\d{6}"


def queue_cmd(*argv: str, checkpoints: Path) -> int:
    return cli.main([*argv, "--checkpoints", str(checkpoints)])


def entries(checkpoints: Path) -> list[Q.Entry]:
    return Q.Queue(checkpoints).read()


@pytest.fixture
def config_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    C.save_yaml({"data": "data", "iters": 100, "learning_rate": 1e-5, "batch_size": 4}, tmp_path / "tiny.yaml")
    return tmp_path / "tiny.yaml"


# ------------------------------------------------------------------ add


def test_a_sweep_queues_a_run_per_combination_each_with_its_settings_and_folder(config_file, tmp_path, capsys):
    import re

    assert queue_cmd("add", "tiny.yaml", "--set", "learning_rate=1e-4,2e-4", "--set", "lora_parameters={rank: 4},"
                     "{rank: 16, scale: 10}", checkpoints=tmp_path / "checkpoints") == 0
    queued = entries(tmp_path / "checkpoints")
    assert [e.id for e in queued] == [1, 2, 3, 4] and {e.status for e in queued} == {"queued"}
    assert [e.overrides for e in queued] == [
        {"learning_rate": 1e-4, "lora_parameters": {"rank": 4}},
        {"learning_rate": 1e-4, "lora_parameters": {"rank": 16, "scale": 10}},
        {"learning_rate": 2e-4, "lora_parameters": {"rank": 4}},
        {"learning_rate": 2e-4, "lora_parameters": {"rank": 16, "scale": 10}},
    ]
    for e in queued:  # the file's settings with the entry's values over them, as validated
        assert e.settings == {"data": "data", "iters": 100, "batch_size": 4, **e.overrides}
        assert e.cwd == str(tmp_path) and e.config == str(config_file)
        assert Path(e.run_dir).parent == tmp_path / "checkpoints" and e.name == Path(e.run_dir).name
        assert not Path(e.run_dir).exists()  # made when it trains
    names = [e.name for e in queued]
    assert re.fullmatch(rf"tiny-learning_rate=0\.0001-lora_parameters=rank4-{STAMP}", names[0]), names[0]
    assert re.fullmatch(rf"tiny-learning_rate=0\.0002-lora_parameters=rank16_scale10-{STAMP}", names[3]), names[3]
    assert len(set(names)) == 4
    assert "4 runs queued" in capsys.readouterr().out

    # the same config again in the same second gets folders of its own; a prefix names them
    assert queue_cmd("add", "tiny.yaml", "tiny.yaml", "--run-dir-prefix", "checkpoints/night/",
                     checkpoints=tmp_path / "checkpoints") == 0
    more = entries(tmp_path / "checkpoints")[4:]
    assert [e.id for e in more] == [5, 6]
    assert {Path(e.run_dir).parent for e in more} == {tmp_path / "checkpoints" / "night"}
    assert more[0].run_dir != more[1].run_dir and more[1].run_dir == more[0].run_dir + "-2"


@pytest.mark.parametrize("sets, said", [
    (["learning_rate=1e-4,fast"], "farense-tui: tiny.yaml with learning_rate=fast: learning_rate is 'fast', but it "
                                  "must be a number.\n"),
    (["lerning_rate=1e-4"], "farense-tui: --set lerning_rate: lerning_rate is not a known setting. Did you mean "
                            "learning_rate?\n"),
    (["epochs=1,2"], "farense-tui: tiny.yaml with epochs=1: epochs and iters are both set; set only one of them.\n"),
    (["learning_rate"], "farense-tui: --set learning_rate is not KEY=VALUES; give e.g. --set "
                        "learning_rate=1e-4,2e-4.\n"),
    (["seed=1", "seed=2"], "farense-tui: --set seed is given twice; give all its values in one, e.g. --set "
                           "seed=A,B.\n"),
])
def test_a_bad_setting_is_one_sentence_and_nothing_is_queued(config_file, tmp_path, capsys, sets, said):
    checkpoints = tmp_path / "checkpoints"
    assert queue_cmd("add", "tiny.yaml", checkpoints=checkpoints) == 0
    before = Q.Queue(checkpoints).path.read_text()
    capsys.readouterr()
    argv = [a for s in sets for a in ("--set", s)]
    assert queue_cmd("add", "tiny.yaml", *argv, checkpoints=checkpoints) == 2
    captured = capsys.readouterr()
    assert captured.err == said and captured.out == ""
    assert Q.Queue(checkpoints).path.read_text() == before  # not even the valid values went in


def test_a_missing_config_is_one_sentence(config_file, tmp_path, capsys):
    assert queue_cmd("add", "tiny.yaml", "nothere.yaml", checkpoints=tmp_path / "checkpoints") == 2
    assert capsys.readouterr().err == "farense-tui: The config file nothere.yaml does not exist; check the path.\n"
    assert entries(tmp_path / "checkpoints") == []


def test_an_entry_trains_with_exactly_the_settings_it_was_queued_with(config_file, tmp_path):
    """The runner passes each setting as its flag: train reads them back to the same config."""
    assert queue_cmd("add", "tiny.yaml", "--set", "lora_parameters={rank: 16, scale: 10}", "--set",
                     "mask_prompt=true", "--set", "num_layers=-1", checkpoints=tmp_path / "checkpoints") == 0
    entry = entries(tmp_path / "checkpoints")[0]
    config_file.write_text("data: elsewhere\n")  # edits after queuing change nothing queued
    command = cli.Runner(Q.Queue(tmp_path / "checkpoints")).command(entry, resume=False)
    assert command[:5] == [sys.executable, "-m", "farense_tui.cli", "train", "--run-dir"]
    RecordingEngine.sent = []
    args = train_cli.build_parser().parse_args(command[4:])
    assert train_cli.run(args, make_engine=RecordingEngine, tty=False) == 0
    sent = RecordingEngine.sent[0]
    assert sent.config == {"data": "data", "iters": 100, "learning_rate": 1e-5, "batch_size": 4,
                           "lora_parameters": {"rank": 16, "scale": 10}, "mask_prompt": True, "num_layers": -1}
    assert sent.run_dir == entry.run_dir and not sent.resume
    assert cli.Runner(Q.Queue(tmp_path / "checkpoints")).command(entry, resume=True)[4:] == [
        "--run-dir", entry.run_dir, "--resume"]  # a resume takes the run's own config.yaml


# ------------------------------------------------------------------ list, remove, clear, the one runner


def mark(checkpoints: Path, **statuses) -> None:
    with Q.Queue(checkpoints).edit() as edit:
        for entry in edit.entries:
            status = statuses.get(f"e{entry.id}")
            if status:
                entry.status = status
                if status == "failed":
                    entry.exit_code, entry.note = 1, "The data folder x does not exist; set data to a folder."


def test_list_remove_and_clear(config_file, tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    assert queue_cmd("add", "tiny.yaml", "--set", "seed=1,2,3,4,5", checkpoints=checkpoints) == 0
    mark(checkpoints, e1="completed", e2="failed", e3="stopped")
    capsys.readouterr()
    assert queue_cmd("list", checkpoints=checkpoints) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["1", "completed"]
    assert out[1].split()[:4] == ["2", "failed", "(exit", "1)"]
    assert out[1].endswith("The data folder x does not exist; set data to a folder.")
    assert [line.split()[1] for line in out[2:5]] == ["stopped", "queued", "queued"]
    assert out[5] == "1 completed, 1 failed, 1 stopped, 2 queued; no runner ('farense-tui queue run' starts one)."

    assert queue_cmd("remove", "4", checkpoints=checkpoints) == 0
    assert [e.id for e in entries(checkpoints)] == [1, 2, 3, 5]
    assert queue_cmd("remove", "4", checkpoints=checkpoints) == 2
    assert capsys.readouterr().err == ("farense-tui: There is no run 4 in the queue; 'farense-tui queue list' shows "
                                       "their numbers.\n")
    assert queue_cmd("clear", checkpoints=checkpoints) == 0  # the finished ones: completed, failed
    assert [(e.id, e.status) for e in entries(checkpoints)] == [(3, "stopped"), (5, "queued")]
    assert queue_cmd("add", "tiny.yaml", checkpoints=checkpoints) == 0
    assert entries(checkpoints)[-1].id == 6  # numbers are never given twice
    assert queue_cmd("clear", "--all", checkpoints=checkpoints) == 0
    assert entries(checkpoints) == []


def test_only_one_runner_at_a_time(config_file, tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    assert queue_cmd("add", "tiny.yaml", checkpoints=checkpoints) == 0
    held = Q.Queue(checkpoints).hold_runner()  # another `queue run`
    try:
        capsys.readouterr()
        assert queue_cmd("run", checkpoints=checkpoints) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"farense-tui: The queue of {checkpoints} is already being run (pid {os.getpid()} on ")
        assert err.endswith("; wait for it, or stop it with ctrl+c in its terminal.\n") and err.count("\n") == 1
        assert entries(checkpoints)[0].status == "queued"
        assert Q.Queue(checkpoints).runner()["pid"] == os.getpid()
    finally:
        held.release()
    assert Q.Queue(checkpoints).runner() is None


def test_the_failure_reason_is_the_last_error_line():
    from farense_core.crash import crash_report

    assert Q.failure_reason(["engine 0.1.0", "error: The data folder d does not exist; set data to a folder.",
                             "training failed", "no run; fix the error above and start again."], 1) == (
        "The data folder d does not exist; set data to a folder.")
    died = f"farense-tui: {crash_report(-9, ['loading'])}".splitlines() + [
        "farense-tui: continue from the newest checkpoint with 'farense-tui train --run-dir r --resume'"]
    assert Q.failure_reason(died, 1) == ("The engine was killed (SIGKILL), most often by the system when memory "
                                         "runs out, or by a force quit.")
    assert Q.failure_reason(["advice (diverged): lower the learning rate.", "training diverged",
                             "diverged at update 9: no final adapter; see the advice above."], 4) == (
        "diverged: lower the learning rate.")
    assert Q.failure_reason([], -11) == "exit status -11"


# ------------------------------------------------------------------ queue run on the tiny model


def run_queue(checkpoints: Path, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farense_tui.cli", "queue", "run", "--checkpoints", str(checkpoints)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def wait_until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_the_queue_survives_a_failed_run(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "missing-data.yaml").write_text(yaml.safe_dump(base_config(tiny_model, tmp_path / "nothere", iters=4)))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(base_config(tiny_model, tiny_data, iters=4)))
    checkpoints = tmp_path / "checkpoints"
    assert queue_cmd("add", "missing-data.yaml", "tiny.yaml", checkpoints=checkpoints) == 0

    done = run_queue(checkpoints, tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]  # not every run completed
    failed, completed = entries(checkpoints)
    assert (failed.status, failed.exit_code) == ("failed", 1)
    assert failed.note == (f"The data folder {tmp_path / 'nothere'} does not exist; set data to a folder with "
                           f"train.jsonl and valid.jsonl.")
    assert completed.status == "completed" and completed.exit_code == 0
    assert completed.note.startswith("4 updates, best recall ")
    assert json.loads((Path(completed.run_dir) / "training_summary.json").read_text())["status"] == "completed"
    assert (Path(completed.run_dir) / "final" / "adapters.safetensors").is_file()
    summary = done.stdout[done.stdout.rindex("queue:\n"):].splitlines()[1:]  # a line per entry at the end
    assert [line.split()[:2] for line in summary] == [["1", "failed"], ["2", "completed"]]
    assert "does not exist" in summary[0]


@pytest.mark.slow
def test_ctrl_c_stops_the_queue_and_queue_run_resumes_that_run_then_goes_on(tiny_model, tiny_data, tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(base_config(tiny_model, tiny_data, iters=150, save_every=5,
                                                                   steps_per_eval=1000)))
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(base_config(tiny_model, tiny_data, iters=4)))
    checkpoints = tmp_path / "checkpoints"
    assert queue_cmd("add", "long.yaml", "short.yaml", checkpoints=checkpoints) == 0
    long_run = Path(entries(checkpoints)[0].run_dir)

    runner = subprocess.Popen([sys.executable, "-m", "farense_tui.cli", "queue", "run", "--checkpoints",
                               str(checkpoints)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        wait_until(lambda: (long_run / "checkpoints" / "step_000005").is_dir(), "the first checkpoint")
        runner.send_signal(signal.SIGINT)  # what ctrl+c in its terminal sends
        out, _ = runner.communicate(timeout=120)
    finally:
        runner.kill()
    assert runner.returncode == 130, out[-3000:]
    stopped, waiting = entries(checkpoints)
    assert stopped.status == "stopped" and waiting.status == "queued"
    updates = json.loads((long_run / "training_summary.json").read_text())
    assert updates["status"] == "stopped" and 5 <= updates["updates"] < 150  # stopped with a checkpoint
    assert stopped.note == f"stopped at update {updates['updates']}; 'farense-tui queue run' goes on from there"
    assert not Path(waiting.run_dir).exists()

    done = run_queue(checkpoints, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"(resuming from {long_run / 'checkpoints'}" in done.stdout
    resumed, short = entries(checkpoints)
    assert (resumed.status, resumed.attempts, short.status, short.attempts) == ("completed", 2, "completed", 1)
    assert json.loads((long_run / "training_summary.json").read_text())["updates"] == 150
    assert resumed.note.startswith("150 updates")

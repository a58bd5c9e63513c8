"""Data-parallel training over MLX's distributed runtime: several processes started by mlx.launch (the ring
backend, on this machine) train one run; each trains its share of every micro-batch."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from enginetools import adapter_arrays, assert_bit_identical, base_config
from farense_core.batching import bucket_updates, rank_share, share_problem
from farense_core.rundir import RunDir, RunLock
from farense_tui.engine_client import engine_env

ROOT = Path(__file__).resolve().parent.parent


def test_the_shares_of_a_micro_batch_are_its_rows_in_order_and_the_last_one_may_be_short_or_empty():
    assert [rank_share([5, 6, 7, 8], r, 2) for r in range(2)] == [[5, 6], [7, 8]]
    assert [rank_share([5, 6, 7], r, 2) for r in range(2)] == [[5, 6], [7]]
    assert [rank_share([5], r, 2) for r in range(2)] == [[5], []]
    assert rank_share([5, 6, 7], 0, 1) == [5, 6, 7]
    # every example of every update is trained by exactly one process
    for update in bucket_updates(list(range(3, 26)), 4, 2):
        for mb in update:
            assert sum((rank_share(mb, r, 4) for r in range(4)), []) == mb


def test_a_batch_that_does_not_divide_among_the_processes_is_one_sentence():
    assert share_problem(8, 2) is None and share_problem(7, 1) is None
    assert share_problem(6, 4) == ("batch_size 6 does not divide among 4 processes (each trains an equal share of "
                                   "every micro-batch); set batch_size to a multiple of 4, or use 3 processes.")


def cli(*argv: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "farense_tui.cli", *argv], env=engine_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def train(cfg_file: Path, run_dir: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = cli("train", "--config", str(cfg_file), "--run-dir", str(run_dir), *extra)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_cli_refuses_a_batch_the_processes_cannot_share_before_launching(tiny_model, tiny_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tiny_model, tiny_data, batch_size=3)))
    done = train(cfg, tmp_path / "run", "-n", "2", timeout=30)
    assert done.returncode == 2
    assert done.stderr == ("farense-tui: batch_size 3 does not divide among 2 processes (each trains an equal share "
                           "of every micro-batch); set batch_size to a multiple of 2, or use 1 processes.\n")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def shared_setup(tmp_path_factory):
    """A config whose epochs end on a short micro-batch (23 examples, batch 4 x accumulation 2: the last
    update is 4 + 3 rows, shared 2 + 2 and 2 + 1), and the adapter one process trains with it."""
    from tiny_model import build_tiny_model, write_chat_data

    root = tmp_path_factory.mktemp("shared")
    model = build_tiny_model(root / "model")
    data = write_chat_data(root / "data", n_train=23)
    cfg = root / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_config(model, data, batch_size=4, grad_accumulation_steps=2, iters=9,
                                              save_every=2, steps_per_eval=3)))
    one = train(cfg, root / "one")
    assert one.returncode == 0, one.stderr
    return cfg, root


@pytest.mark.slow
def test_two_processes_train_the_adapter_one_process_trains(shared_setup, tmp_path):
    cfg, root = shared_setup
    two = train(cfg, tmp_path / "two", "-n", "2")
    assert two.returncode == 0, two.stderr
    assert "2 processes training together" in two.stdout and "(2 processes, slowest" in two.stdout
    one, shared = adapter_arrays(root / "one" / "final" / "adapters.safetensors"), \
        adapter_arrays(tmp_path / "two" / "final" / "adapters.safetensors")
    assert one.keys() == shared.keys()
    assert max(float(np.abs(np.array(one[k]) - np.array(shared[k])).max()) for k in one) < 1e-5
    moved = max(float(np.abs(np.array(one[k])).max()) for k in one)
    assert moved > 1e-2  # the adapter learned something: the comparison means something
    # the leader alone wrote the run; each process's share and memory are in its step events
    events = RunDir(tmp_path / "two").events.read_text().splitlines()
    assert '"processes":2' in events[0]
    from farense_core import protocol as P

    steps = [e for e in map(P.parse_event, events) if isinstance(e, P.Step)]
    assert len(steps) == 9 and all([r["rank"] for r in s.ranks] == [0, 1] for s in steps)
    assert all(sum(r["tokens"] for r in s.ranks) == s.tokens for s in steps)
    assert all(r["mlx_peak"] > 0 and r["tokens_per_second"] > 0 for s in steps for r in s.ranks)


@pytest.mark.slow
def test_a_two_process_run_resumed_from_a_checkpoint_trains_the_same_adapter(shared_setup, tmp_path):
    cfg, root = shared_setup
    whole = train(cfg, tmp_path / "whole", "-n", "2")
    assert whole.returncode == 0, whole.stderr
    run = tmp_path / "again"
    shutil.copytree(tmp_path / "whole", run)
    for name in ("final", "adapters"):
        shutil.rmtree(run / name)
    resumed = subprocess.run([sys.executable, "-m", "farense_tui.cli", "train", "--run-dir", str(run),
                              "--from-checkpoint", "4", "-n", "2"], env=engine_env(), cwd=ROOT,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout and "step_000004" in resumed.stdout
    assert_bit_identical(adapter_arrays(tmp_path / "whole" / "final" / "adapters.safetensors"),
                         adapter_arrays(run / "final" / "adapters.safetensors"))


@pytest.mark.slow
def test_ctrl_c_stops_every_process_of_a_shared_run_with_a_checkpoint(shared_setup, tmp_path):
    cfg, _ = shared_setup
    run = tmp_path / "long"
    proc = cli("train", "--config", str(cfg), "--run-dir", str(run), "-n", "2", "--iters", "100000",
               "--save-every", "2")
    rd = RunDir(run)
    deadline = time.monotonic() + 120
    while not rd.list_checkpoints():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what a Ctrl+C in the terminal sends the command
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.loads(rd.summary.read_text())
    assert summary["status"] == "stopped" and rd.checkpoint(summary["updates"]).is_dir()
    assert "continue with 'farense-tui train --run-dir" in out
    assert not subprocess.run(["pgrep", "-f", f"run-dir {run}"], capture_output=True).stdout  # none left behind


@pytest.mark.slow
def test_when_the_leader_cannot_start_the_others_end_too(shared_setup, tmp_path):
    cfg, _ = shared_setup
    run = tmp_path / "locked"
    run.mkdir()
    lock = RunLock(RunDir(run)).acquire()  # another farense-tui trains this folder
    try:
        done = train(cfg, run, "-n", "2", timeout=120)
    finally:
        lock.release()
    assert done.returncode == 1
    assert f"{run} is in use by another run" in done.stdout

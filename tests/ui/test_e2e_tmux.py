"""End to end in a real terminal: the installed ``farense-tui`` in a 120x40 tmux session, switched
through its tabs with F1..F5, training the tiny model with the real engine until the progress
moves, then quit with ctrl+q."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farense_core import config as C

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

APP = Path(sys.executable).parent / "farense-tui"


class Tmux:
    def __init__(self, name: str):
        self.name = name

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30)

    def start(self, command: list[str], cwd: Path, env: dict) -> None:
        env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        done = self.run("new-session", "-d", "-s", self.name, "-x", "120", "-y", "40", "-c", str(cwd),
                        *env_args, *command)
        assert done.returncode == 0, done.stderr

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name).stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", self.name, *keys)

    def alive(self) -> bool:
        return self.run("has-session", "-t", self.name).returncode == 0

    def wait(self, condition, what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen() if self.alive() else ""
            if condition(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; the screen:\n{text}")
            time.sleep(0.2)  # polling a real terminal: there is no event to wait on

    def gone(self, timeout: float) -> bool:
        """Whether the session ends within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)  # polling a real terminal: there is no event to wait on
        return not self.alive()

    def kill(self) -> None:
        self.run("kill-session", "-t", self.name)


def progress(text: str) -> int:
    """The update the Train tab shows (0 before any)."""
    found = re.findall(r"update (\d+)/30", text)
    return max(map(int, found)) if found else 0


def test_tabs_training_and_quit_in_tmux(tmp_path, tiny_model):
    from tiny_model import write_chat_data

    data = write_chat_data(tmp_path / "data")
    cfg, _ = C.validate({
        "model": str(tiny_model), "data": str(data), "iters": 30, "batch_size": 2, "steps_per_eval": 10,
        "steps_per_report": 5, "save_every": 10, "num_layers": 2,
        "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0},
    })
    config = tmp_path / "config.yaml"
    C.save_yaml(cfg, config)
    tmux = Tmux(f"farense-e2e-{os.getpid()}")
    tmux.start([str(APP)], tmp_path, {
        "FARENSE_TUI_CONFIG": str(config), "FARENSE_TUI_CHECKPOINTS": str(tmp_path / "checkpoints"),
        "TERM": "xterm-256color", "COLORTERM": "truecolor",
        "COLUMNS": "120", "LINES": "40",  # Textual trusts these over the terminal; pytest's may say 80x24
    })
    try:
        tmux.wait(lambda s: "Run preflight" in s and "Preflight" in s, "the first frame")
        for key, marker in (("F2", "Effective batch size"), ("F3", "Runs in the checkpoints folder"),
                            ("F4", "Open a run:"), ("F5", "Sampler"), ("F1", "Run preflight (r)"),
                            ("F3", "Start (s)")):
            tmux.keys(key)
            tmux.wait(lambda s, m=marker: m in s, f"{key} to show {marker!r}")

        assert progress(tmux.screen()) == 0
        tmux.keys("s")
        first = tmux.wait(lambda s: progress(s) > 0 or "exited unexpectedly" in s or "error:" in s,
                          "the first update", timeout=240)
        assert progress(first) > 0, f"training did not start; the screen:\n{first}"
        # the tiny model trains fast: the progress may already be at the end, or moves on to it
        last = tmux.wait(lambda s: progress(s) == 30 and "completed" in s, "the run to complete", timeout=240)
        assert "update 30/30" in last and "ETA 00:00" in last

        tmux.keys("C-q")
        assert tmux.gone(60), "ctrl+q did not quit the app"
    finally:
        tmux.kill()
    assert list((tmp_path / "checkpoints").glob("run-*/events.jsonl")), "the run folder has no events.jsonl"


def endless_run(tmp_path: Path, tiny_model: Path) -> dict:
    """A config that trains the tiny model for as long as a test lets it (100000 updates, checkpoints every
    50), and the app's environment that uses it."""
    from tiny_model import write_chat_data

    data = write_chat_data(tmp_path / "data")
    cfg, _ = C.validate({
        "model": str(tiny_model), "data": str(data), "iters": 100000, "batch_size": 2, "steps_per_eval": 100000,
        "steps_per_report": 5, "save_every": 50, "keep_checkpoints": 2, "num_layers": 2,
        "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0},
    })
    config = tmp_path / "config.yaml"
    C.save_yaml(cfg, config)
    return {"FARENSE_TUI_CONFIG": str(config), "FARENSE_TUI_CHECKPOINTS": str(tmp_path / "checkpoints"),
            "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}


def test_quit_to_the_background_and_come_back_in_tmux(tmp_path, tiny_model):
    """ctrl+q while training, "b": the app exits, the run goes on; the next farense-tui finds it,
    shows its progress moving, and x stops it."""
    env = endless_run(tmp_path, tiny_model)

    def moving(s: str) -> int:
        found = re.findall(r"update (\d+)/100000", s)
        return max(map(int, found)) if found else 0

    first = Tmux(f"farense-leave-{os.getpid()}")
    first.start(["sh", "-c", f"{APP}; echo APP-EXITED; sleep 120"], tmp_path, env)
    second = Tmux(f"farense-back-{os.getpid()}")
    try:
        first.wait(lambda s: "Run preflight" in s, "the first frame")
        first.keys("F3")
        first.wait(lambda s: "Start (s)" in s, "the Train tab")
        first.keys("s")
        first.wait(lambda s: moving(s) > 0, "training", timeout=240)
        first.keys("C-q")
        first.wait(lambda s: "A run is training." in s and "Background (b)" in s, "the quit question")
        first.keys("b")
        gone = first.wait(lambda s: "APP-EXITED" in s, "the app to quit", timeout=60)
        said = re.sub(r"\s+", "", gone)  # the terminal wraps the farewell where it likes
        assert "goesontraininginthebackground" in said and "farense-tuiattach" in said

        second.start([str(APP)], tmp_path, env)
        seen = second.wait(lambda s: "engine: training in the background (pid" in s and moving(s) > 0,
                           "the next app to follow the run", timeout=60)
        second.wait(lambda s: moving(s) > moving(seen), "its progress to move", timeout=60)
        second.keys("x")
        second.wait(lambda s: "engine: stopped" in s, "the stop to reach the run", timeout=60)
        second.keys("C-q")
        assert second.gone(30), "ctrl+q did not quit the app once the run had stopped"
    finally:
        first.kill()
        second.kill()
    events = next((tmp_path / "checkpoints").glob("run-*/events.jsonl")).read_text()
    assert events.count('"type":"done"') == 1 and '"status":"stopped"' in events


def test_a_short_run_stopped_before_validation_can_be_chatted_with_in_tmux(tmp_path, tiny_model):
    """Train, stop before the first validation (no adapters/, no final/), then chat with what it
    learned: the Chat tab offers the run's newest checkpoint."""
    from tiny_model import write_chat_data

    data = write_chat_data(tmp_path / "data")
    cfg, _ = C.validate({
        "model": str(tiny_model), "data": str(data), "iters": 100000, "batch_size": 2, "steps_per_eval": 100000,
        "steps_per_report": 5, "save_every": 5, "keep_checkpoints": 2, "num_layers": 2,
        "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0},
    })
    C.save_yaml(cfg, tmp_path / "config.yaml")
    tmux = Tmux(f"farense-chat-{os.getpid()}")
    tmux.start([str(APP)], tmp_path, {
        "FARENSE_TUI_CONFIG": str(tmp_path / "config.yaml"), "FARENSE_TUI_CHECKPOINTS": str(tmp_path / "checkpoints"),
        "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})

    def updates(s: str) -> int:
        found = re.findall(r"update (\d+)/100000", s)
        return max(map(int, found)) if found else 0

    try:
        tmux.wait(lambda s: "Run preflight" in s, "the first frame")
        tmux.keys("F3")
        tmux.wait(lambda s: "Start (s)" in s, "the Train tab")
        tmux.keys("s")
        tmux.wait(lambda s: updates(s) >= 6, "a checkpoint's worth of training", timeout=240)
        tmux.keys("x")
        tmux.wait(lambda s: "engine: stopped" in s, "the stop", timeout=60)
        run = next((tmp_path / "checkpoints").glob("run-*"))
        assert not (run / "adapters").exists() and not (run / "final").exists()  # stopped before validation
        tmux.keys("F5")
        tmux.wait(lambda s: run.name in s, "the Chat tab offering the stopped run")
        tmux.keys("Quem fundou o Farense?", "Enter")
        done = tmux.wait(lambda s: "Reply done:" in s or "rror" in s, "a reply from the checkpoint", timeout=120)
        assert "Reply done:" in done, done
        tmux.keys("C-q")
        assert tmux.gone(30), "ctrl+q did not quit the app"
    finally:
        tmux.kill()


@pytest.mark.parametrize("launcher", ["make", "shell"])
def test_a_closed_terminal_window_ends_the_app_and_leaves_the_run_training(tmp_path, tiny_model, launcher):
    """The terminal window closes while a run trains: the app ends and the run goes on in the background.
    Under ``make run`` the app gets no SIGHUP (make catches it and stays): it notices the terminal is gone
    (it used to go on reading it, at ~70% of a core, for good). Under a shell it gets SIGHUP (it used to die
    at once, and its engine stopped the run)."""
    env = endless_run(tmp_path, tiny_model)
    (tmp_path / "Makefile").write_text(f"run:\n\t{APP}\n")
    tmux = Tmux(f"farense-closed-{launcher}-{os.getpid()}")
    tmux.start(["make", "-s", "run"] if launcher == "make" else ["sh", "-c", f"{APP}; true"], tmp_path, env)
    try:
        tmux.wait(lambda s: "Run preflight" in s, "the first frame")
        parent = int(tmux.run("display", "-p", "-t", tmux.name, "#{pane_pid}").stdout)
        app = int(subprocess.run(["pgrep", "-f", "-P", str(parent), "farense-tui"], capture_output=True,
                                 text=True).stdout.split()[0])
        tmux.keys("F3")
        tmux.wait(lambda s: "Start (s)" in s, "the Train tab")
        tmux.keys("s")
        tmux.wait(lambda s: re.search(r"update [1-9]\d*/100000", s), "training", timeout=240)
    finally:
        tmux.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and Path(f"/proc/{app}").exists():
        time.sleep(0.2)  # polling a process that is not ours to wait on
    assert not Path(f"/proc/{app}").exists(), "the app went on after its terminal closed"
    run = next((tmp_path / "checkpoints").glob("run-*"))
    events = run / "events.jsonl"
    size = events.stat().st_size
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and events.stat().st_size == size:
        time.sleep(0.2)  # polling a file another process writes
    assert events.stat().st_size > size and '"type":"done"' not in events.read_text(), "the run stopped"
    stopped = subprocess.run([str(APP), "attach", str(run), "--stop"], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 130, stopped.stderr  # the exit code of a stopped run
    assert '"status":"stopped"' in events.read_text()

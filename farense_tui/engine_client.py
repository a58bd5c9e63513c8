"""Start the engine subprocess and talk to it: commands in, parsed events out.

Used by the headless commands and the TUI alike. Imports no mlx.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from farense_core import protocol as P
from farense_core.blas import openblas_path
from farense_core.crash import crash_report

def engine_env(base: Optional[dict] = None) -> dict:
    env = dict(os.environ if base is None else base)
    blas = openblas_path()
    if blas and blas not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (blas, env.get("LD_PRELOAD", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "PyTorch was not found" on every start
    # the engine must find the project's packages even when run from a checkout
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def engine_command(module: str = "engine", args: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", module, *args]


class LaunchError(Exception):
    """A shared run that cannot be launched here (one sentence)."""


def launch_command(processes: int = 1, hostfile: Optional[str] = None, backend: Optional[str] = None) -> list[str]:
    """The engine as ``processes`` processes training one run together (on this machine, or ``processes``
    per host of an ``mlx.launch`` hosts file), started by MLX's own launcher (``engine.launch``), which picks
    the backend (ring, or NCCL on CUDA) unless ``backend`` says."""
    argv = engine_command("engine.launch")  # mlx.launch without its spinning relay (see engine/launch.py)
    if hostfile is not None and not Path(hostfile).is_file():
        raise LaunchError(f"The hosts file {hostfile} does not exist; write one as in the README's two-Mac setup.")
    argv += ["-n", str(processes)]
    if hostfile is not None:
        argv += ["--hostfile", str(hostfile)]
    if backend is not None:
        argv += ["--backend", backend]
    return argv + ["--", *engine_command()]


class EngineGone(Exception):
    """The engine process ended: its crash report is the message."""


class EngineProcess:
    """One engine subprocess. ``events()`` yields parsed events until the engine's stdout closes."""

    def __init__(self, argv: Optional[Sequence[str]] = None, env: Optional[dict] = None,
                 stderr_lines: int = 40, cwd: Optional[str] = None):
        self.argv = list(argv) if argv else engine_command()
        self.env = engine_env(env)
        self.cwd = cwd
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self.proc: Optional[subprocess.Popen] = None
        self._send_lock = threading.Lock()
        self.detached = False

    def start(self) -> "EngineProcess":
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1,
            start_new_session=True,  # its own session: a closed terminal's SIGHUP never reaches a run left behind
        )
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        return self

    def _drain_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    def send(self, record: P.Record) -> bool:
        """Send a command; False if the engine is gone."""
        if not self.proc or self.proc.poll() is not None or not self.proc.stdin:
            return False
        with self._send_lock:
            try:
                self.proc.stdin.write(record.to_line() + "\n")
                self.proc.stdin.flush()
                return True
            except (BrokenPipeError, OSError, ValueError):
                return False

    def events(self) -> Iterator[P.Record]:
        """Parsed events; a line that is not protocol becomes an ``error`` event, never a crash."""
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                yield P.parse_event(line)
            except P.ProtocolError as e:
                yield P.Error(message=f"The engine wrote a line that is not protocol ({e}).", code="protocol")

    def request(self, command: P.Record, on_event: Optional[Callable[[P.Record], None]] = None) -> P.Finished:
        """Send a job command and give every event to ``on_event`` until the job's ``finished``
        event, which it returns; ``EngineGone`` when the engine exits first."""
        if not self.send(command):
            raise EngineGone(self.crash_report())
        return self.wait_for(command, on_event)

    def wait_for(self, command: P.Record, on_event: Optional[Callable[[P.Record], None]] = None) -> P.Finished:
        """The rest of a job already sent (after an interruption, say), as ``request``."""
        for event in self.events():
            if on_event is not None:
                on_event(event)
            if (isinstance(event, P.Finished) and event.command == command.type
                    and event.id == getattr(command, "id", "")):
                return event
        raise EngineGone(self.crash_report())

    def wait(self, timeout: Optional[float] = None) -> int:
        assert self.proc
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """End the engine now, with every process it started (a shared run's launcher and its processes:
        it leads its own process group)."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll() if self.proc else None

    def detach(self) -> bool:
        """Leave the engine training in the background (protocol.Detach): it goes on writing its run
        folder and exits when the run ends; False when it is gone."""
        if not self.send(P.Detach()):
            return False
        self.detached = True
        return True

    def close(self, timeout: float = 120.0, wait: bool = True) -> None:
        """Ask the engine to shut down (a training run finishes its update and checkpoints first, which
        on a large model takes a while); terminate it only if it does not within ``timeout``. A
        detached engine is only let go; so is one that has nothing left to write (``wait=False``: it ends
        on its own, and its teardown is not the caller's wait)."""
        if not self.proc:
            return
        if self.detached:
            for pipe in (self.proc.stdin, self.proc.stdout):
                try:
                    if pipe:
                        pipe.close()
                except OSError:
                    pass
            return
        if self.proc.poll() is None:
            self.send(P.Shutdown())
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
            except OSError:
                pass
            if not wait:
                return
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

    def crash_report(self) -> str:
        """One sentence for why the engine died (farense_core.crash), with its last stderr lines."""
        if self.proc:
            try:  # let the process finish and its stderr be read to the end
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self._stderr_thread.join(2)
        return crash_report(self.returncode, list(self.stderr_tail))

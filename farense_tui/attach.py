"""Follow a run that an engine of another process trains: one left training in the background
(protocol.Detach), or started by another farense-tui. Its events come from the run folder's
events.jsonl as they are written; pause, continue and stop reach the engine as signals (its pid is
in the run's lock). It stands in for an ``EngineProcess`` wherever the UI follows a run.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterator, Optional

from farense_core import protocol as P
from farense_core.rundir import ENGINE_LOG, RunDir, lock_holder

SIGNALS = {P.Stop: signal.SIGINT, P.Pause: signal.SIGUSR1, P.Resume: signal.SIGUSR2}


class NotAttachable(Exception):
    """A run that no live process on this machine trains (one sentence)."""


def live_runs(checkpoints_dir: str | Path) -> list[Path]:
    """Run folders under ``checkpoints_dir`` that a live process on this machine trains now."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        holder = lock_holder(RunDir(path)) if RunDir(path).events.is_file() else None
        if holder and holder.get("host") == socket.gethostname() and holder.get("pid"):
            found.append(path)
    return found


def _parse(line: bytes) -> Optional[P.Record]:
    try:
        return P.parse_event(line.decode("utf-8", errors="replace"))
    except P.ProtocolError:
        return None  # a blank or torn line: the live stream said what went wrong


class AttachedEngine:
    """A training run followed through its folder. ``events()`` yields the run's events from the
    start of events.jsonl (so a history folds the whole run), then new ones as they come, and ends
    with a ``finished`` event once the run is done; it ends without one if the engine dies."""

    def __init__(self, run_dir: str | Path, poll: float = 0.2, replay: bool = True):
        self.rd = RunDir(run_dir)
        self.poll = poll
        self.replay = replay  # the whole run from its first event; else the session running now
        holder = lock_holder(self.rd)
        if not holder or not holder.get("pid"):
            raise NotAttachable(f"Nothing trains {self.rd.path} now; open it in the Monitor or resume it instead.")
        if holder.get("host") != socket.gethostname():
            raise NotAttachable(f"{self.rd.path} is trained on {holder.get('host')}; follow it there.")
        if not self.rd.events.is_file():
            raise NotAttachable(f"{self.rd.path} has no events.jsonl yet; try again in a moment.")
        self.pid: int = int(holder["pid"])
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.returncode: Optional[int] = None
        self.closed = False  # close() was called: the run goes on unfollowed

    def send(self, record: P.Record) -> bool:
        """Pause, continue and stop as signals; shutdown leaves the run as it is (True); other
        commands cannot reach a detached engine (False)."""
        if isinstance(record, P.Shutdown):
            return True
        sig = SIGNALS.get(type(record))
        if sig is None:
            return False
        try:
            os.kill(self.pid, sig)
            return True
        except OSError:
            return False

    def events(self) -> Iterator[P.Record]:
        done_seen, ending, first = False, False, True
        buf = b""
        with open(self.rd.events, "rb") as f:
            while not self.closed:
                chunk = f.read()
                if chunk:
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    events = [e for e in map(_parse, lines) if e is not None]
                    if first and not self.replay:  # only the session running now (since its hello)
                        starts = [i for i, e in enumerate(events) if isinstance(e, P.Hello)]
                        events = events[starts[-1]:] if starts else events
                    first = False
                    for event in events:
                        if isinstance(event, P.Hello):
                            done_seen = False  # a new session of the run (a resume)
                        done_seen = done_seen or isinstance(event, P.Done)
                        yield event
                    continue
                if done_seen:
                    yield P.Finished(command="train")
                    return
                if ending:
                    return  # the engine died: what it wrote is all read
                ending = lock_holder(self.rd) is None  # gone: read once more, then end
                if not ending:
                    time.sleep(self.poll)

    def crash_report(self) -> str:
        log = self.rd.path / ENGINE_LOG
        try:
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        except OSError:
            tail = []
        self.stderr_tail.extend(tail)
        shown = "\n".join(tail) or "(no output in engine.log)"
        return (f"The training process (pid {self.pid}) ended before its run finished. Its last output "
                f"({log}):\n{shown}")

    def close(self, timeout: float = 0.0) -> None:
        """Stop following; the run goes on."""
        self.closed = True

    def detach(self) -> bool:
        """Leave the run training (it already is, in the background): stop following it."""
        self.close()
        return True

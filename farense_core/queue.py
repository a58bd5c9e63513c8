"""The run queue: runs waiting to be trained one after another, in ``queue.json`` of the checkpoints
folder. The one place that knows the queue's file, its entries and their statuses, how a sweep
(``--set key=A,B``) becomes entries and what each entry's run folder is called.

    checkpoints/queue.json          the entries, in order (written atomically)
    checkpoints/queue.lock          held by the one ``farense-tui queue run`` (a RunLock: pid, host, start)
    checkpoints/.queue.json.lock    held for the moment a command changes queue.json

An entry keeps its settings as they were validated when it was added (the config file's, with the
entry's overrides over them): editing the config file later changes no queued run. ``farense-tui
queue`` adds, lists and runs them; the Train tab shows them.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import itertools
import json
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator, Optional, Sequence

from . import config as C
from .rundir import RUNS_FOLDER, RunDir, RunLock, RunLocked, describe_holder, lock_holder

QUEUE_FILE = "queue.json"
RUNNER_LOCK = "queue.lock"
EDIT_LOCK = ".queue.json.lock"
VERSION = 1

FINISHED = ("completed", "failed")  # what `queue clear` removes; the rest still has something to train
TO_RUN = ("queued", "stopped", "running")  # running: its runner ended without saying how; resumed


class QueueError(ValueError):
    """A queue command that cannot be done, as one sentence."""


@dataclass
class Entry:
    id: int
    name: str
    run_dir: str            # absolute
    cwd: str                # where it was added: the settings' relative paths (data, model) are read from here
    config: str             # the config file it came from (absolute), for people
    overrides: dict         # this entry's --set values
    settings: dict          # the config file's settings with the overrides, as validated when added
    status: str = "queued"  # queued, running, completed, failed or stopped
    added: float = 0.0
    started: Optional[float] = None
    ended: Optional[float] = None
    exit_code: Optional[int] = None
    attempts: int = 0       # times a runner started (or resumed) it
    note: str = ""          # why it failed, where it stopped, or how it ended

    @classmethod
    def from_dict(cls, d: dict) -> "Entry":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def overrides_text(self) -> str:
        return " ".join(f"{k}={value_text(v)}" for k, v in self.overrides.items())


# ------------------------------------------------------------------ the file


class Queue:
    """The queue of a checkpoints folder."""

    def __init__(self, folder: str | os.PathLike = RUNS_FOLDER):
        self.folder = Path(folder)

    @property
    def path(self) -> Path:
        return self.folder / QUEUE_FILE

    @property
    def runner_lock(self) -> Path:
        return self.folder / RUNNER_LOCK

    def read(self) -> list[Entry]:
        """The entries in order ([] when there is no queue file); QueueError when it cannot be read."""
        return self._read()[1]

    def _read(self) -> tuple[int, list[Entry]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return 1, []
        except (OSError, ValueError) as e:
            raise QueueError(f"{self.path} cannot be read ({e}); fix or remove it (its entries are then "
                             f"lost, not their run folders).") from None
        try:
            entries = [Entry.from_dict(d) for d in data["entries"]]
            next_id = int(data.get("next_id", 1))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise QueueError(f"{self.path} is not a queue written by farense-tui; fix or remove it.") from None
        return max([next_id] + [e.id + 1 for e in entries]), entries

    @contextmanager
    def edit(self) -> Iterator["Edit"]:
        """The entries to change, written back (atomically) when the block ends without an error. Commands
        editing the queue at the same time (``add`` while ``run`` marks an entry) take turns."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / EDIT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            next_id, entries = self._read()
            edit = Edit(entries, next_id)
            yield edit
            data = {"version": VERSION, "next_id": edit.next_id, "entries": [asdict(e) for e in edit.entries]}
            C.atomic_write_text(self.path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        finally:
            os.close(fd)  # releases the lock

    # -- the one runner
    def hold_runner(self) -> RunLock:
        """Become the queue's one runner; QueueError (naming the other) when one runs already."""
        try:
            return RunLock(RunDir(self.folder), self.runner_lock).acquire("queue")
        except RunLocked as e:
            raise QueueError(f"The queue of {self.folder} is already being run ({describe_holder(e.holder)}); "
                             f"wait for it, or stop it with ctrl+c in its terminal.") from None

    def runner(self) -> Optional[dict]:
        """Who runs the queue now (pid, host, started), or None."""
        return lock_holder(RunDir(self.folder), self.runner_lock)


@dataclass
class Edit:
    entries: list[Entry]
    next_id: int

    def find(self, entry_id: int) -> Optional[Entry]:
        return next((e for e in self.entries if e.id == entry_id), None)


# ------------------------------------------------------------------ adding runs and sweeps


def value_text(value) -> str:
    """A setting's value as short text: 0.0002, 16, true, rank16_scale20."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "_".join(f"{k}{value_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "_".join(value_text(v) for v in value)
    return str(value)


def parse_sets(items: Sequence[str]) -> list[tuple[str, list]]:
    """``--set key=A,B`` flags as (key, values); the values read as YAML, as in the config file
    (``--set lora_parameters={rank: 8},{rank: 16}`` is two values). QueueError for a bad one."""
    axes: list[tuple[str, list]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise QueueError(f"--set {item} is not KEY=VALUES; give e.g. --set learning_rate=1e-4,2e-4.")
        if key in C.IGNORED_MLX_LM_KEYS:
            raise QueueError(f"--set {key}: {key} is an mlx_lm.lora option that runs here ignore "
                             f"({C.IGNORED_MLX_LM_KEYS[key]}).")
        if key not in C.BY_KEY:
            try:
                C.validate({key: None})  # says so, with the setting meant
            except C.ConfigError as e:
                raise QueueError(f"--set {key}: {e}") from None
        if any(k == key for k, _ in axes):
            raise QueueError(f"--set {key} is given twice; give all its values in one, e.g. --set {key}=A,B.")
        try:
            values = C.parse_value(key, f"[{text}]")
        except C.ConfigError:
            raise QueueError(f"--set {item} cannot be read; give values as the config file would, separated "
                             f"by commas, e.g. --set learning_rate=1e-4,2e-4.") from None
        if not isinstance(values, list) or not values:
            raise QueueError(f"--set {item} has no values; give e.g. --set {key}=A,B.")
        axes.append((key, values))
    return axes


def slug(text: str) -> str:
    """Text fit for a folder name: letters, digits and . _ = + - (others become _)."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_.") or "run"


def plan(configs: Sequence[str | os.PathLike], sets: Sequence[str], prefix: str, now: _dt.datetime,
         taken: Sequence[str] = (), cwd: Optional[str] = None) -> tuple[list[Entry], list[str]]:
    """The entries ``queue add CONFIG... --set ...`` makes: one per config and combination of the sets'
    values (their product), each validated (QueueError, one sentence, for the first bad one) with its own
    run folder ``PREFIX<config stem>[-key=value...]-<time>``; and the notes on ignored keys. ``taken``:
    run folders other entries use. Nothing is written."""
    cwd = cwd or os.getcwd()
    axes = parse_sets(sets)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    used = set(taken)
    entries, notes = [], []
    for config in configs:
        try:
            raw = C.load_yaml(config)
        except C.ConfigError as e:
            raise QueueError(str(e)) from None
        for combo in itertools.product(*(values for _, values in axes)):
            overrides = {key: value for (key, _), value in zip(axes, combo)}
            shown = " with " + ", ".join(f"{k}={value_text(v)}" for k, v in overrides.items()) if overrides else ""
            try:
                _, found = C.validate({**raw, **overrides})
            except C.ConfigError as e:
                raise QueueError(f"{config}{shown}: {e}") from None
            notes += [f"{config}: {n}" for n in found if f"{config}: {n}" not in notes]
            settings = {k: v for k, v in {**raw, **overrides}.items() if k in C.BY_KEY}  # ignored keys dropped
            parts = [Path(config).stem] + [f"{k}={value_text(v)}" for k, v in overrides.items()] + [stamp]
            run_dir = os.path.abspath(os.path.join(cwd, prefix + slug("-".join(parts))))
            candidate, n = run_dir, 1
            while candidate in used or os.path.exists(candidate):
                n += 1
                candidate = f"{run_dir}-{n}"
            used.add(candidate)
            entries.append(Entry(id=0, name=Path(candidate).name, run_dir=candidate, cwd=cwd,
                                 config=os.path.abspath(os.path.join(cwd, config)), overrides=overrides,
                                 settings=settings, added=now.timestamp()))
    return entries, notes


def add(queue: Queue, entries: Sequence[Entry]) -> list[Entry]:
    """Append entries, numbering them; the entries as queued."""
    with queue.edit() as edit:
        taken = {e.run_dir for e in edit.entries}
        for entry in entries:
            if entry.run_dir in taken:
                raise QueueError(f"{entry.run_dir} is already the run folder of a queued run; add again for a new "
                                 f"name.")
            entry.id, edit.next_id = edit.next_id, edit.next_id + 1
            edit.entries.append(entry)
    return list(entries)


# ------------------------------------------------------------------ how a run ended


def resumable(entry: Entry) -> bool:
    """An entry a runner started before, whose run folder holds a checkpoint: it goes on with --resume."""
    return entry.attempts > 0 and entry.status in TO_RUN and bool(RunDir(entry.run_dir).list_checkpoints())


def stopped_note(entry: Entry) -> str:
    newest = RunDir(entry.run_dir).newest_checkpoint()
    where = f"at update {newest[1].get('update')}" if newest else "before its first checkpoint"
    return f"stopped {where}; 'farense-tui queue run' goes on from there"


def completed_note(entry: Entry) -> str:
    """What a completed run's training_summary.json says: status, updates, best recall and loss, time."""
    try:
        s = json.loads(RunDir(entry.run_dir).summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(s, dict):
        return ""
    parts = [] if s.get("status") in (None, "completed") else [str(s.get("status")).replace("_", " ")]
    if s.get("updates") is not None:
        parts.append(f"{s['updates']} updates")
    if s.get("best_recall") is not None:
        parts.append(f"best recall {s['best_recall']:.1%}")
    if s.get("best_val_loss") is not None:
        parts.append(f"best val loss {s['best_val_loss']:.4f}")
    if s.get("elapsed") is not None:
        from .format import duration

        parts.append(duration(s["elapsed"]))
    return ", ".join(parts)


_CRASH_TAIL = " Its last output:"


def failure_reason(lines: Sequence[str], code: Optional[int]) -> str:
    """The last error line of a failed ``farense-tui train``'s output: the engine's error, else the
    command's own sentence (a usage error, an engine that died), else how the run ended (diverged:
    the advice), else its last line."""
    lines = [line.rstrip() for line in lines if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    for line in lines:
        if line.startswith("farense-tui: "):
            return line[len("farense-tui: "):].removesuffix(_CRASH_TAIL).strip()
    for line in reversed(lines):
        if line.startswith("advice (diverged): "):
            return "diverged: " + line[len("advice (diverged): "):]
    for line in reversed(lines):
        if line.startswith("training ") and not line.startswith("training completed"):
            return line
    return lines[-1] if lines else f"exit status {code}"


def summary_line(entry: Entry, cwd: Optional[str] = None) -> str:
    """One line for an entry: number, status, run folder, note."""
    note = f"  {entry.note}" if entry.note else ""
    code = f" (exit {entry.exit_code})" if entry.status == "failed" and entry.exit_code is not None else ""
    return f"{entry.id:>3}  {entry.status + code:<16} {shown_path(entry.run_dir, cwd)}{note}"


def shown_path(path: str, cwd: Optional[str] = None) -> str:
    """A path relative to the working directory when it is under it."""
    rel = os.path.relpath(path, cwd or os.getcwd())
    return path if rel.startswith("..") else rel

"""A training run's folder: the one place that knows its layout.

    events.jsonl            the event stream, one JSON object per line
    config.yaml             the resolved config
    metrics.csv             per update (and validation) figures
    training_metrics.json   the same as lists
    training_summary.json   how the run ended
    eval.json               the last evaluation of its adapter
    report.html, plots/     `farense-tui report`'s page and its plots as PNG files
    checkpoints/step_NNNNNN/  adapters, optimizer and RNG state, state.json (written last: complete)
    adapters/               the best adapter (mlx-lm's layout)
    final/                  the adapter after the last update

The trainer writes it, the engine's chat, evaluation and export read it, the UI lists and opens it:
all through ``RunDir``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Optional

RUNS_FOLDER = "checkpoints"  # where run folders, preflight's report and the recommended config go by default
ADAPTER_FILES = ("adapters.safetensors", "adapter_config.json")
CHECKPOINT_PREFIX = "step_"
STATE_FILE = "state.json"
LOCK_FILE = "run.lock"
ENGINE_LOG = "engine.log"  # a detached engine's stderr
ENDPOINT_FILE = "serve.json"  # while `farense-tui serve` serves the run: its URL and process id
CHECKPOINT_FILES = ("adapters.safetensors", "optimizer.safetensors", "rng.safetensors", STATE_FILE)


def is_adapter_folder(path: Path) -> bool:
    return all((Path(path) / f).is_file() for f in ADAPTER_FILES)


class AdapterSettingsError(ValueError):
    """An adapter folder whose adapter_config.json cannot be read; the message says what to do."""


def read_adapter_settings(folder: Path) -> dict:
    """An adapter's adapter_config.json; AdapterSettingsError (one sentence) when it cannot be read."""
    path = Path(folder) / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AdapterSettingsError(f"{path} cannot be read ({e}); export the adapter again from its run.") from None
    if not isinstance(config, dict):
        raise AdapterSettingsError(f"{path} is not a JSON object; export the adapter again from its run.")
    return config


def adapter_settings(folder: Path) -> dict:
    """An adapter's adapter_config.json, or {} when it cannot be read (for guesses such as the base model)."""
    try:
        return read_adapter_settings(folder)
    except AdapterSettingsError:
        return {}


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    """What a checkpoint's state.json keeps of each of its files, to tell later whether it is intact."""
    return {"bytes": Path(path).stat().st_size, "sha256": file_digest(path)}


def checkpoint_problem(path: Path, hashes: bool = False) -> Optional[str]:
    """None for a complete, intact checkpoint folder; otherwise what is wrong with it, as the end of a
    sentence. Sizes are always compared with those state.json recorded, checksums when ``hashes``."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except FileNotFoundError:
        return f"it has no {STATE_FILE} (it was being written when its run stopped)"
    except (OSError, ValueError) as e:
        return f"its {STATE_FILE} cannot be read ({e})"
    if not isinstance(state, dict) or state.get("complete") is not True:
        return f"its {STATE_FILE} does not mark it complete"
    if not isinstance(state.get("update"), int) or not isinstance(state.get("epoch", 0), int):
        return f"its {STATE_FILE} holds no valid position"
    for name in CHECKPOINT_FILES:
        if not (path / name).is_file():
            return f"{name} is missing"
    files = state.get("files")  # checkpoints of earlier versions recorded none
    if isinstance(files, dict):
        for name, record in files.items():
            target = path / name
            if not target.is_file():
                return f"{name} is missing"
            if not isinstance(record, dict) or target.stat().st_size != record.get("bytes"):
                return f"{name} has {target.stat().st_size:,} bytes, not the {record.get('bytes', 0):,} written"
            if hashes and file_digest(target) != record.get("sha256"):
                return f"{name} does not match the checksum written with it"
    return None


def checkpoint_state(path: Path, hashes: bool = False) -> Optional[dict]:
    """The state of a complete, intact checkpoint folder, or None."""
    if checkpoint_problem(path, hashes) is not None:
        return None
    return json.loads((Path(path) / STATE_FILE).read_text())


def checkpoint_update(path: Path) -> int:
    return int(Path(path).name[len(CHECKPOINT_PREFIX):])


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- files
    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def metrics_json(self) -> Path:
        return self.path / "training_metrics.json"

    @property
    def summary(self) -> Path:
        return self.path / "training_summary.json"

    @property
    def eval_report(self) -> Path:
        return self.path / "eval.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        return self.path / "adapters"

    @property
    def final(self) -> Path:
        return self.path / "final"

    def is_run(self) -> bool:
        """A folder written by a training run (it has its events or its config)."""
        return self.events.is_file() or self.config.is_file()

    # -- checkpoints
    def checkpoint(self, update: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{update:06d}"

    def list_checkpoints(self) -> list[Path]:
        """Checkpoint folders by update, complete or not."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
                 and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
        return sorted(found, key=checkpoint_update)

    def newest_checkpoint(self, hashes: bool = False,
                          damaged: Optional[list] = None) -> Optional[tuple[Path, dict]]:
        """The newest complete, intact checkpoint and its state (checksums compared when ``hashes``);
        the newer ones that are not go into ``damaged`` as (path, problem)."""
        for path in reversed(self.list_checkpoints()):
            problem = checkpoint_problem(path, hashes)
            if problem is None:
                return path, json.loads((path / STATE_FILE).read_text())
            if damaged is not None:
                damaged.append((path, problem))
        return None

    def set_aside(self, path: Path, why: str) -> Path:
        """Move a checkpoint out of the way of resume without deleting it: ``checkpoints/<why>-step_N``."""
        path = Path(path)
        target = path.with_name(f"{why}-{path.name}")
        n = 2
        while target.exists():
            target, n = path.with_name(f"{why}{n}-{path.name}"), n + 1
        path.rename(target)
        return target

    # -- what the run offers
    def adapter(self) -> Optional[Path]:
        """The adapter a run offers: the best (``adapters/``), else the final one, else (a run stopped
        before its first validation) its newest complete checkpoint, which holds an adapter too."""
        found = next((p for p in (self.best, self.final) if is_adapter_folder(p)), None)
        if found is None and (newest := self.newest_checkpoint()) is not None and is_adapter_folder(newest[0]):
            found = newest[0]
        return found

    def settings(self) -> dict:
        """The settings its config.yaml holds ({} when it has none); ConfigError when unreadable."""
        from .config import load_yaml

        return load_yaml(self.config) if self.config.is_file() else {}

    def base_model(self) -> Optional[str]:
        """The model the run trained: its config's, else the one its adapter records."""
        model = self.settings().get("model")
        if not model and self.adapter() is not None:
            model = adapter_settings(self.adapter()).get("model")
        return str(model) if model else None

    @classmethod
    def of_adapter(cls, adapter: str | Path) -> Optional["RunDir"]:
        """The run an adapter folder belongs to (the folder itself, or its parent), if any."""
        folder = Path(adapter)
        return next((cls(p) for p in (folder, folder.parent) if cls(p).events.is_file()), None)


# ------------------------------------------------------------------ which folder a run may use


class RunFolderError(ValueError):
    """A run folder that cannot be used, as one sentence."""


def check_run_folder(run_dir: str | Path, resume: bool = False) -> RunDir:
    """The run folder a train command names, if it can hold the run: a non-empty path; a folder (or
    a path where one can be made) that is writable; for a new run, empty or an earlier run's folder,
    so that no file the user keeps there is overwritten."""
    if not str(run_dir).strip():
        raise RunFolderError("The run folder is not set; give a folder for the run's files, e.g. "
                             f"{RUNS_FOLDER}/run-1.")
    rd = RunDir(run_dir)
    path = rd.path
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{path} is a file, not a folder; give a folder for the run's files.")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunFolderError(f"{path} cannot be made: {existing} is a file, not a folder; choose another place.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFolderError(f"{existing} is not writable, so the run cannot write {path}; choose a folder you can "
                             f"write to.")
    if not resume and path.is_dir() and not rd.events.is_file():
        others = sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise RunFolderError(f"{path} already holds files that are not a run's ({shown}); give a new or empty "
                                 f"folder for the run, so nothing there is overwritten.")
    return rd


# ------------------------------------------------------------------ one run per folder


class RunLocked(Exception):
    """The run folder is in use by a live process; the message names it and says what to do.
    ``holder``: who holds it (pid, host, started, what)."""

    def __init__(self, message: str, holder: Optional[dict] = None):
        super().__init__(message)
        self.holder = holder or {}


def describe_holder(holder: dict) -> str:
    """Who holds a lock, for a sentence: "pid 12 on host, since 2026-11-30 22:00"."""
    started = holder.get("started")
    when = ""
    if isinstance(started, (int, float)):
        when = f", since {_dt.datetime.fromtimestamp(started).strftime('%Y-%m-%d %H:%M')}"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{when}"


class RunLock:
    """The lock a training run holds on its folder while it trains (``run.lock``, an flock the
    operating system releases when the process ends, however it ends: a dead process never holds it).
    The file says who holds it (pid, host, start time), for the sentence a second run is refused with
    and for the UI, which finds live runs by it. ``path``: another lock of the same kind in the folder
    (the run queue's runner holds ``queue.lock`` of the checkpoints folder)."""

    def __init__(self, rd: RunDir, path: Optional[Path] = None):
        self.rd = rd
        self.path = Path(path) if path is not None else rd.lock
        self.fd: Optional[int] = None

    def acquire(self, what: str = "training") -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise RunLocked(f"{self.rd.path} is in use by another run ({describe_holder(holder)}); stop that "
                            f"run first, or train into another folder.", holder) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": _dt.datetime.now().timestamp(),
                  "what": what}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_holder(rd: RunDir, path: Optional[Path] = None) -> Optional[dict]:
    """Who holds the run folder's lock (or the lock at ``path``) now (pid, host, started, what), or None
    when no live process does."""
    try:
        fd = os.open(rd.lock if path is None else path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd) or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)

"""Runs as data: fold an event stream into a run's history, read past runs from their folders.

Pure Python, no Textual: the engine worker folds live events here on its thread, the Monitor
tab reads snapshots on a timer, and a past run is the same fold over its ``events.jsonl``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from farense_core import protocol as P
from farense_core.rundir import ENDPOINT_FILE, RunDir

GB = 1024**3
SERIES_CAPACITY = 4096  # points kept per series; a longer run is thinned, keeping extremes
SERIES = ("loss", "val_loss", "learning_rate", "tokens_per_second", "mlx_active", "mlx_peak", "rss",
          "recall", "recall_trained", "recall_paraphrase", "token_accuracy")


class RunError(ValueError):
    """A run folder or events file that cannot be read (one sentence)."""


# ------------------------------------------------------------------ helpers


def downsample(xs: Sequence[float], ys: Sequence[float], n: int) -> tuple[list, list]:
    """At most about ``n`` points of (xs, ys) in x order, keeping each bucket's minimum and
    maximum so spikes survive, and always the first and last point."""
    count = len(xs)
    if count <= max(n, 2):
        return list(xs), list(ys)
    buckets = max(1, (n - 2) // 2)
    keep = {0, count - 1}
    size = (count - 2) / buckets
    for b in range(buckets):
        lo, hi = 1 + int(b * size), 1 + int((b + 1) * size)
        if lo >= hi:
            continue
        idx = range(lo, hi)
        keep.add(min(idx, key=ys.__getitem__))
        keep.add(max(idx, key=ys.__getitem__))
    order = sorted(keep)
    return [xs[i] for i in order], [ys[i] for i in order]


def format_loss(value: Optional[float]) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


class Series:
    """One bounded (x, y) series; when full it is thinned to half, keeping extremes."""

    def __init__(self, capacity: int = SERIES_CAPACITY):
        self.capacity = capacity
        self.xs: list[float] = []
        self.ys: list[float] = []

    def add(self, x: float, y: float) -> None:
        if not math.isfinite(y):
            return
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) > self.capacity:
            self.xs, self.ys = downsample(self.xs, self.ys, self.capacity // 2)

    def __len__(self) -> int:
        return len(self.xs)


# ------------------------------------------------------------------ history


@dataclass
class Snapshot:
    """A copy of a run's state, safe to read on the UI thread while the worker keeps folding."""

    version: int
    state: str
    run_dir: str
    config: dict
    data: Optional[P.Data]
    model: Optional[P.Model]
    last_step: Optional[P.Step]
    memory: Optional[P.Memory]
    best_val_loss: Optional[float]
    last_val_loss: Optional[float]
    checkpoints: list
    warnings: list
    done: Optional[P.Done]
    last_recall: Optional[P.Recall] = None
    advice: list = field(default_factory=list)  # the advice events, oldest first
    series: dict = field(default_factory=dict)  # name -> (xs, ys)

    @property
    def guard_gb(self) -> float:
        return float(self.config.get("memory_guard_gb", 0.75) or 0.0)


class RunHistory:
    """Everything the UI shows about one run, folded from its events. Thread safe."""

    def __init__(self, source: str = "live"):
        self.source = source
        self._lock = threading.Lock()
        self.version = 0
        self.state = "idle"
        self.hello: Optional[P.Hello] = None
        self.config: dict = {}
        self.run_dir = ""
        self.data: Optional[P.Data] = None
        self.model: Optional[P.Model] = None
        self.last_step: Optional[P.Step] = None
        self.memory: Optional[P.Memory] = None
        self.best_val_loss: Optional[float] = None
        self.last_val_loss: Optional[float] = None
        self.last_recall: Optional[P.Recall] = None
        self.advice: list[P.Advice] = []
        self.checkpoints: list[P.Checkpoint] = []
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.done: Optional[P.Done] = None
        self.series = {name: Series() for name in SERIES}

    def apply(self, event: P.Record) -> None:
        with self._lock:
            self.version += 1
            if isinstance(event, P.Hello):
                self.hello = event
            elif isinstance(event, P.Config):
                self.config = dict(event.config)
                self.run_dir = event.run_dir or self.run_dir
            elif isinstance(event, P.Data):
                self.data = event
            elif isinstance(event, P.Model):
                self.model = event
            elif isinstance(event, P.Step):
                self.last_step = event
                x = event.step
                self.series["loss"].add(x, event.loss)
                self.series["learning_rate"].add(x, event.learning_rate)
                self.series["tokens_per_second"].add(x, event.tokens_per_second)
                self._add_memory(x, event.memory)
            elif isinstance(event, P.MemoryEvent):
                self._add_memory(event.step, event.memory)
            elif isinstance(event, P.Eval):
                self.last_val_loss = event.val_loss
                self.best_val_loss = event.best_val_loss
                self.series["val_loss"].add(event.step, event.val_loss)
            elif isinstance(event, P.Recall):
                self.last_recall = event
                self.series["recall"].add(event.step, event.recall)
                self.series["token_accuracy"].add(event.step, event.token_accuracy)
                if event.trained is not None:
                    self.series["recall_trained"].add(event.step, event.trained)
                if event.paraphrase is not None:
                    self.series["recall_paraphrase"].add(event.step, event.paraphrase)
            elif isinstance(event, P.Advice):
                self.advice.append(event)
            elif isinstance(event, P.Checkpoint):
                self.checkpoints.append(event)
            elif isinstance(event, P.Warning):
                self.warnings.append(event.message)
            elif isinstance(event, P.Error):
                self.errors.append(event.message)
            elif isinstance(event, P.State):
                self.state = event.state
            elif isinstance(event, P.Done):
                self.done = event

    def _add_memory(self, x: float, memory: P.Memory) -> None:
        if not any(vars(memory).values()):
            return  # an engine that could not measure memory sends zeros
        self.memory = memory
        self.series["mlx_active"].add(x, memory.mlx_active / GB)
        self.series["mlx_peak"].add(x, memory.mlx_peak / GB)
        self.series["rss"].add(x, memory.rss / GB)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                version=self.version, state=self.state, run_dir=self.run_dir, config=dict(self.config),
                data=self.data, model=self.model, last_step=self.last_step, memory=self.memory,
                best_val_loss=self.best_val_loss, last_val_loss=self.last_val_loss,
                checkpoints=list(self.checkpoints), warnings=list(self.warnings), done=self.done,
                last_recall=self.last_recall, advice=list(self.advice),
                series={name: (list(s.xs), list(s.ys)) for name, s in self.series.items()},
            )


# ----------------------------------------------------------------- run folders


def events_path(path: str | Path) -> Path:
    """A run folder or its events.jsonl -> the events.jsonl."""
    p = Path(path).expanduser()
    return RunDir(p).events if p.is_dir() else p


def read_events(path: str | Path) -> tuple[list[P.Record], int]:
    """The events of a run and how many lines could not be read (a run cut off mid-line)."""
    file = events_path(path)
    if not file.is_file():
        raise RunError(f"There is no events.jsonl at {file}; open a run folder written by farense-tui.")
    events, bad = [], 0
    try:
        with open(file, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    events.append(P.parse_event(line))
                except P.ProtocolError:
                    bad += 1
    except OSError as e:
        raise RunError(f"{file} cannot be read ({e.strerror}).") from None
    if not events:
        raise RunError(f"{file} holds no events; the run may not have started.")
    return events, bad


def load_run(path: str | Path) -> tuple[RunHistory, int]:
    """A past run's history from its events.jsonl, and the number of unreadable lines."""
    events, bad = read_events(path)
    history = RunHistory(source=str(events_path(path)))
    for event in events:
        history.apply(event)
    history.run_dir = str(events_path(path).parent)  # where it is now, wherever it was trained
    return history, bad


@dataclass
class RunInfo:
    """One line of the runs list."""

    name: str
    path: Path
    status: str  # a done status (protocol.Done.STATUSES), or "unfinished"
    step: int = 0
    total_steps: int = 0
    best_val_loss: Optional[float] = None
    best_recall: Optional[float] = None
    last_checkpoint: Optional[str] = None

    @property
    def adapter(self) -> Optional[Path]:
        return RunDir(self.path).adapter()

    @property
    def resumable(self) -> bool:
        return self.last_checkpoint is not None and self.status not in P.Done.FINISHED

    @property
    def endpoint(self) -> Optional[str]:
        """The URL `farense-tui serve` announced for this run, while its process lives."""
        return served_url(self.path)


def served_url(run: Path) -> Optional[str]:
    import psutil

    try:
        info = json.loads((Path(run) / ENDPOINT_FILE).read_text(encoding="utf-8"))
        return str(info["url"]) if psutil.pid_exists(int(info["pid"])) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarize_run(path: Path) -> RunInfo:
    info = RunInfo(name=path.name, path=path, status="unfinished")
    try:
        events, _ = read_events(path)
    except RunError:
        events = []
    for e in events:
        if isinstance(e, P.Step):
            info.step, info.total_steps = e.step, e.total_steps
        elif isinstance(e, P.Eval):
            info.best_val_loss = e.best_val_loss
        elif isinstance(e, P.Recall):
            info.best_recall = e.best_recall
        elif isinstance(e, P.Done):
            info.status = e.status
    newest = RunDir(path).newest_checkpoint()
    info.last_checkpoint = str(newest[0]) if newest else None
    return info


def list_runs(checkpoints_dir: str | Path) -> list[RunInfo]:
    """Run folders under checkpoints_dir (those with events.jsonl or config.yaml), newest first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    runs = [summarize_run(p) for p in root.iterdir() if p.is_dir() and RunDir(p).is_run()]
    runs.sort(key=lambda r: (_mtime(r.path), r.name), reverse=True)
    return runs


def _mtime(path: Path) -> float:
    rd = RunDir(path)
    try:
        return max((p.stat().st_mtime for p in (rd.events, rd.config) if p.exists()), default=path.stat().st_mtime)
    except OSError:
        return 0.0


def new_run_dir(checkpoints_dir: str | Path, now: Optional[_dt.datetime] = None) -> Path:
    """checkpoints/run-YYYYmmdd-HHMMSS, with a suffix if two runs start in the same second."""
    stamp = (now or _dt.datetime.now()).strftime("run-%Y%m%d-%H%M%S")
    root = Path(checkpoints_dir)
    candidate, n = root / stamp, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


def run_config(run_dir: str | Path) -> dict:
    """The config a run was started with (its config.yaml, else the config event)."""
    from farense_core.config import ConfigError

    path = Path(run_dir)
    if RunDir(path).config.is_file():
        try:
            return RunDir(path).settings()
        except ConfigError as e:
            raise RunError(str(e)) from None
    try:
        events, _ = read_events(path)
    except RunError:
        events = []
    for e in events:
        if isinstance(e, P.Config):
            return dict(e.config)
    raise RunError(f"{path} has neither config.yaml nor a config event, so it cannot be resumed.")


def write_events(path: str | Path, events: Iterable[P.Record]) -> None:
    """Write events as an events.jsonl (tests and recordings)."""
    Path(path).write_text("".join(e.to_line() + "\n" for e in events), encoding="utf-8")


def read_json(path: str | Path) -> Optional[dict]:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None

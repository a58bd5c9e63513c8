"""Checkpoints and the metrics files of a run, written where ``farense_core.rundir.RunDir`` says.

A checkpoint holds everything resume needs: the trained weights, the optimizer state, MLX's RNG key
and ``state.json`` (the position in the data, the judges' state), written into a temporary folder and
renamed into place, so a kill mid-write leaves the previous one intact. ``state.json`` is written
last: a checkpoint without it is incomplete and never chosen.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from farense_core import config as C
from farense_core.format import size
from farense_core.rundir import CHECKPOINT_FILES, STATE_FILE, RunDir, checkpoint_update, file_record

METRIC_FIELDS = [
    "step", "epoch", "loss", "learning_rate", "tokens", "trained_tokens", "tokens_per_second",
    "iterations_per_second", "elapsed", "val_loss", "recall", "token_accuracy", "mlx_active", "mlx_peak", "rss",
    "system_available",
]


SLACK = 16 * 1024 * 1024  # state.json, configs, filesystem overhead


class DiskFull(Exception):
    """A write that the disk has no room for; the message names the place, what is free and what is needed."""

    def __init__(self, path: Path, need: int, free: int, what: str = "a checkpoint",
                 then: str = "then resume the run (its newest checkpoint is intact)"):
        super().__init__(f"The disk holding {path} is full: {size(free)} free, and {what} needs about "
                         f"{size(need)}. Free space there, {then}.")


def free_bytes(path: Path) -> int:
    """Free bytes on the disk holding path (or its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_disk_full(e: BaseException, path: Path, need: int) -> bool:
    """An OSError saying so, or MLX's bare "[write] Unable to write" with too little room left."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(e, RuntimeError) and "[write]" in str(e) and free_bytes(path) < need


def array_bytes(*trees) -> int:
    return sum(a.nbytes for tree in trees for _, a in tree_flatten(tree))


def checkpoint_bytes(weights: dict, optimizer_state) -> int:
    """About what one checkpoint takes on disk."""
    return array_bytes(weights, optimizer_state) + SLACK


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _save_safetensors(path: Path, arrays: dict) -> None:
    mx.save_safetensors(str(path), arrays)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_adapter(folder: Path, weights: dict, adapter_config: dict) -> None:
    """mlx-lm's layout, each file replaced atomically; DiskFull when the disk has no room for it."""
    need = array_bytes(weights) + SLACK
    if free_bytes(folder) < need:
        raise DiskFull(folder, need, free_bytes(folder), "the adapter")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".adapters.{os.getpid()}.tmp.safetensors"
    try:
        _save_safetensors(tmp, weights)
        os.replace(tmp, folder / "adapters.safetensors")
        C.atomic_write_text(folder / "adapter_config.json", json.dumps(adapter_config, indent=2))
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e, folder, need):
            raise DiskFull(folder, need, free_bytes(folder), "the adapter") from None
        raise


def write_checkpoint(rd: RunDir, update: int, weights: dict, optimizer_state, adapter_config: dict,
                     state: dict) -> Path:
    """A complete checkpoint of ``update``, put in place atomically (a re-save of the same update too)."""
    folder = rd.checkpoints
    folder.mkdir(parents=True, exist_ok=True)
    final = rd.checkpoint(update)
    need = checkpoint_bytes(weights, optimizer_state)
    if free_bytes(folder) < need:  # before writing: never start what cannot finish
        raise DiskFull(folder, need, free_bytes(folder))
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        _save_safetensors(tmp / "adapters.safetensors", weights)
        _save_safetensors(tmp / "optimizer.safetensors", dict(tree_flatten(optimizer_state)))
        _save_safetensors(tmp / "rng.safetensors", {"key": mx.random.state[0]})
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        # sizes and checksums of every file, so resume can tell an intact checkpoint from a damaged one
        files = {name: file_record(tmp / name) for name in (*CHECKPOINT_FILES[:-1], "adapter_config.json")}
        with open(tmp / STATE_FILE, "w") as f:  # written last: marks the checkpoint complete
            json.dump({"complete": True, **state, "files": files}, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
    except (OSError, RuntimeError) as e:  # the half-written folder goes; the previous checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e, folder, need):
            raise DiskFull(folder, need, free_bytes(folder)) from None
        raise
    if final.exists():  # re-saving the same update (e.g. stop right after a periodic save)
        old = folder / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(folder)
    return final


class CheckpointLoadError(Exception):
    """A checkpoint whose files read but do not load; the message ends a sentence about it."""


def load_checkpoint(path: Path, model, optimizer) -> None:
    """Weights, optimizer state and RNG key of a checkpoint, into a prepared model and optimizer; a
    checkpoint that does not load, or whose numbers are not finite, raises CheckpointLoadError."""
    try:
        weights = mx.load(str(path / "adapters.safetensors"))
        optimizer_state = mx.load(str(path / "optimizer.safetensors"))
        key = mx.load(str(path / "rng.safetensors"))["key"]
    except Exception as e:  # noqa: BLE001 - whatever the safetensors reader says of a damaged file
        raise CheckpointLoadError(f"it cannot be loaded ({type(e).__name__}: {e})") from None
    bad = [name for name, a in (*weights.items(), *optimizer_state.items())
           if mx.issubdtype(a.dtype, mx.floating) and not mx.all(mx.isfinite(a)).item()]
    if bad:
        raise CheckpointLoadError(f"{len(bad)} of its arrays hold NaN or infinite numbers ({bad[0]}, ...)")
    try:
        model.load_weights(list(weights.items()), strict=False)
    except ValueError as e:
        raise CheckpointLoadError(f"its weights do not fit this model ({e})") from None
    optimizer.state = tree_unflatten(list(optimizer_state.items()))
    mx.random.state[0][...] = key
    mx.eval(model.parameters(), optimizer.state, mx.random.state)


def prune(rd: RunDir, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (0: all)."""
    if keep > 0:
        for path in rd.list_checkpoints()[:-keep]:
            shutil.rmtree(path, ignore_errors=True)


def remove_from(rd: RunDir, first: int) -> None:
    """Remove the checkpoints of update ``first`` and later."""
    for path in rd.list_checkpoints():
        if checkpoint_update(path) >= first:
            shutil.rmtree(path, ignore_errors=True)


def remove_interrupted_writes(rd: RunDir) -> None:
    """Half-written files of a killed process never got their final names: drop them (checkpoint folders,
    adapter files, the run's own files). Called with the run's lock held, so no live writer owns them."""
    for place in (rd.path, rd.best, rd.final):
        if place.is_dir():
            for stale in [*place.glob(".*.tmp"), *place.glob(".*.tmp.safetensors")]:
                stale.unlink(missing_ok=True)
    folder = rd.checkpoints
    if not folder.is_dir():
        return
    for old in folder.glob(".old-*"):  # killed between the two renames of a re-save: put it back
        name = old.name[len(".old-"):].rsplit("-", 1)[0]
        if not (folder / name).exists():
            os.replace(old, folder / name)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


class Metrics:
    """The run's figures: per update (train), per validation (eval: loss; recall), in metrics.csv
    (appended as they come) and training_metrics.json (rewritten at checkpoints and at the end)."""

    def __init__(self, rd: RunDir):
        self.rd = rd
        self.train: list[dict] = []
        self.eval: list[dict] = []
        self.recall: list[dict] = []

    def clear(self) -> None:
        """A fresh (not resumed) run in a used folder starts its metrics anew; events.jsonl keeps history."""
        for path in (self.rd.metrics_csv, self.rd.metrics_json, self.rd.summary):
            path.unlink(missing_ok=True)

    def append(self, row: dict) -> None:
        """One update's row (with its validation figures when it had one)."""
        self.train.append({k: row[k] for k in row if k not in ("val_loss", "recall", "token_accuracy")})
        if row.get("val_loss") is not None:
            self.eval.append({"step": row["step"], "epoch": row["epoch"], "val_loss": row["val_loss"]})
        if row.get("recall") is not None:
            self.recall.append({"step": row["step"], "epoch": row["epoch"], "recall": row["recall"],
                                "token_accuracy": row["token_accuracy"]})
        path = self.rd.metrics_csv
        new = not path.exists()
        try:
            with open(path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(row)
        except OSError as e:
            if is_disk_full(e, path, SLACK):
                raise DiskFull(path, SLACK, free_bytes(path), "the metrics file") from None
            raise

    def load_until(self, update: int) -> None:
        """A resumed run's rows up to its checkpoint; rows written after it belong to work being redone."""
        path = self.rd.metrics_csv
        if not path.exists():
            return
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= update]
        for r in rows:
            row = {k: (float(v) if v not in ("", None) else None) for k, v in r.items()}
            row["step"], row["epoch"] = int(row["step"]), int(row["epoch"])
            if row.get("loss") is not None:
                self.train.append({k: v for k, v in row.items() if k not in ("val_loss", "recall", "token_accuracy")})
            if row.get("val_loss") is not None:
                self.eval.append({"step": row["step"], "epoch": row["epoch"], "val_loss": row["val_loss"]})
            if row.get("recall") is not None:
                self.recall.append({"step": row["step"], "epoch": row["epoch"], "recall": row["recall"],
                                    "token_accuracy": row["token_accuracy"]})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        w.writeheader()
        by_step = {r["step"]: dict(r) for r in self.train}
        for e in self.eval + self.recall:
            by_step.setdefault(e["step"], {"step": e["step"], "epoch": e["epoch"]}).update(e)
        for step in sorted(by_step):
            w.writerow(by_step[step])
        C.atomic_write_text(path, buf.getvalue())

    def write_json(self) -> None:
        text = json.dumps({"train": self.train, "eval": self.eval, "recall": self.recall}, indent=1)
        try:
            C.atomic_write_text(self.rd.metrics_json, text)
        except OSError as e:
            if is_disk_full(e, self.rd.metrics_json, len(text)):
                raise DiskFull(self.rd.metrics_json, len(text) + SLACK, free_bytes(self.rd.path), "the metrics file") from None
            raise

    def last_loss(self) -> Optional[float]:
        return self.train[-1]["loss"] if self.train else None

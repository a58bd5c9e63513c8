"""Checkpoints and the metrics files of a run, written where ``farense_core.rundir.RunDir`` says.

A checkpoint holds everything resume needs: the trained weights, the optimizer state, MLX's RNG key
and ``state.json`` (the position in the data, the judges' state), written into a temporary folder and
renamed into place, so a kill mid-write leaves the previous one intact. ``state.json`` is written
last: a checkpoint without it is incomplete and never chosen.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from farense_core import config as C
from farense_core.rundir import STATE_FILE, RunDir, checkpoint_update

METRIC_FIELDS = [
    "step", "epoch", "loss", "learning_rate", "tokens", "trained_tokens", "tokens_per_second",
    "iterations_per_second", "elapsed", "val_loss", "recall", "token_accuracy", "mlx_active", "mlx_peak", "rss",
    "system_available",
]


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
    """mlx-lm's layout, each file replaced atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".adapters.{os.getpid()}.tmp.safetensors"
    _save_safetensors(tmp, weights)
    os.replace(tmp, folder / "adapters.safetensors")
    C.atomic_write_text(folder / "adapter_config.json", json.dumps(adapter_config, indent=2))


def write_checkpoint(rd: RunDir, update: int, weights: dict, optimizer_state, adapter_config: dict,
                     state: dict) -> Path:
    """A complete checkpoint of ``update``, put in place atomically (a re-save of the same update too)."""
    folder = rd.checkpoints
    folder.mkdir(parents=True, exist_ok=True)
    final = rd.checkpoint(update)
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_safetensors(tmp / "adapters.safetensors", weights)
    _save_safetensors(tmp / "optimizer.safetensors", dict(tree_flatten(optimizer_state)))
    _save_safetensors(tmp / "rng.safetensors", {"key": mx.random.state[0]})
    (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    with open(tmp / STATE_FILE, "w") as f:  # written last: marks the checkpoint complete
        json.dump({"complete": True, **state}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same update (e.g. stop right after a periodic save)
        old = folder / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(folder)
    return final


def load_checkpoint(path: Path, model, optimizer) -> None:
    """Weights, optimizer state and RNG key of a checkpoint, into a prepared model and optimizer."""
    model.load_weights(str(path / "adapters.safetensors"), strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
    mx.random.state[0][...] = mx.load(str(path / "rng.safetensors"))["key"]
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
    """Half-written checkpoints of a killed process never got their final name: drop them."""
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
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

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
        C.atomic_write_text(self.rd.metrics_json,
                            json.dumps({"train": self.train, "eval": self.eval, "recall": self.recall}, indent=1))

    def last_loss(self) -> Optional[float]:
        return self.train[-1]["loss"] if self.train else None

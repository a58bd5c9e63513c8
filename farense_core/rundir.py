"""A training run's folder: the one place that knows its layout.

    events.jsonl            the event stream, one JSON object per line
    config.yaml             the resolved config
    metrics.csv             per update (and validation) figures
    training_metrics.json   the same as lists
    training_summary.json   how the run ended
    eval.json               the last evaluation of its adapter
    checkpoints/step_NNNNNN/  adapters, optimizer and RNG state, state.json (written last: complete)
    adapters/               the best adapter (mlx-lm's layout)
    final/                  the adapter after the last update

The trainer writes it, the engine's chat, evaluation and export read it, the UI lists and opens it:
all through ``RunDir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

RUNS_FOLDER = "checkpoints"  # where run folders, preflight's report and the recommended config go by default
ADAPTER_FILES = ("adapters.safetensors", "adapter_config.json")
CHECKPOINT_PREFIX = "step_"
STATE_FILE = "state.json"
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


def checkpoint_state(path: Path) -> Optional[dict]:
    """The state of a complete checkpoint folder, or None if any part is missing or unreadable."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not all((path / f).is_file() for f in CHECKPOINT_FILES):
        return None
    return state if state.get("complete") else None


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

    def newest_checkpoint(self) -> Optional[tuple[Path, dict]]:
        """The newest complete checkpoint and its state."""
        for path in reversed(self.list_checkpoints()):
            state = checkpoint_state(path)
            if state is not None:
                return path, state
        return None

    # -- what the run offers
    def adapter(self) -> Optional[Path]:
        """The adapter a run offers: the best (``adapters/``), else the final one."""
        return next((p for p in (self.best, self.final) if is_adapter_folder(p)), None)

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

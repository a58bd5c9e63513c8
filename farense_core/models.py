"""Model names: the embedded default, local folders and Hugging Face ids, resolved the same way
everywhere (training, chat, evaluation, preflight, export, the UI)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_NAMES = ("", "default")


class ModelNotFoundError(ValueError):
    """One sentence: which model is missing and what to do."""


def farense_home() -> Path:
    """farense-tui's cache: ``$FARENSE_TUI_HOME``, else ``~/.cache/farense-tui``."""
    home = os.environ.get("FARENSE_TUI_HOME")
    return Path(home).expanduser().absolute() if home else Path.home() / ".cache" / "farense-tui"


def default_model_path() -> Path:
    """Where the default model's MLX folder is (or will be) installed."""
    return farense_home() / "models" / DEFAULT_MODEL_NAME


def default_model_installed() -> bool:
    path = default_model_path()
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def is_hub_id(name: str) -> bool:
    """Shaped like a Hugging Face model id (owner/name), and not a local path."""
    return (not name.startswith(("/", ".", "~")) and name.count("/") == 1 and all(name.split("/"))
            and not Path(name).expanduser().exists())


def resolve_model(name: Optional[str]) -> str:
    """What to hand ``mlx_lm.load``: None, "" or "default" -> the default model's folder; an existing
    local folder -> its absolute path; anything else (a Hugging Face id) -> unchanged."""
    if name is None or name.strip() in DEFAULT_NAMES:
        return str(default_model_path())
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.absolute())
    return name


def locate_model(name: Optional[str]) -> str:
    """``resolve_model``, checked before anything loads: the default must be installed, a path must
    be an MLX model folder; a Hugging Face id is left to mlx-lm."""
    resolved = resolve_model(name)
    if resolved == str(default_model_path()):
        if not default_model_installed():
            raise ModelNotFoundError("The default model is not installed yet; run 'farense-tui model default' "
                                     "(or 'make run').")
        return resolved
    path = Path(resolved)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name} has no config.json, so it is not an MLX model folder; give a folder "
                                     f"written by mlx_lm.convert or 'farense-tui model'.")
        return resolved
    if not is_hub_id(name):
        raise ModelNotFoundError(f"The model folder {name} does not exist; give an MLX model folder, a Hugging "
                                 f"Face model id, or default.")
    return name

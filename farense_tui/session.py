"""What the tabs share: each tab gets the session when it is made, so no tab reaches into the App.

The engine links by role, the checkpoints folder, the config file named at start, the clock that
names new runs, where the current settings come from (the Config tab), preflight's recommendation,
and the keys that show each tab (from the App's bindings, so hints never disagree with them).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

from farense_core.config import RECOMMENDED_FILE

from .runs import read_json


class ConfigSource(Protocol):
    """The current settings (the Config tab)."""

    def raw(self) -> dict: ...

    def resolved(self) -> tuple[Optional[dict], Optional[str]]: ...


@dataclass
class Session:
    links: dict  # role ("train", "preflight", "chat") -> EngineLink
    checkpoints_dir: Path
    config_path: Optional[Path] = None
    clock: Callable[[], _dt.datetime] = _dt.datetime.now
    config: Optional[ConfigSource] = None  # set once the Config tab exists
    recommended: Optional[dict] = None     # this session's preflight recommendation
    tab_keys: dict = field(default_factory=dict)  # tab id -> the key that shows it ("F3")

    def settings(self) -> dict:
        """The current settings as typed (what a field leaves empty is absent)."""
        return self.config.raw() if self.config is not None else {}

    def find_recommended(self) -> Optional[dict]:
        """This session's recommendation, else the one preflight last wrote to the checkpoints folder."""
        return self.recommended or read_json(self.checkpoints_dir / RECOMMENDED_FILE)

    def title(self, tab_id: str) -> str:
        """A tab's label with the key that shows it: 'F3 Train' (the footer then need not list them)."""
        key = self.tab_keys.get(tab_id)
        return f"{key} {tab_id.capitalize()}" if key else tab_id.capitalize()

    def tab(self, tab_id: str) -> str:
        """A tab's name with its key, for hints: 'Train tab (F3)'."""
        key = self.tab_keys.get(tab_id)
        return f"{tab_id.capitalize()} tab" + (f" ({key})" if key else "")

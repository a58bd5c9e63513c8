"""Pick runs from the checkpoints folder (the Monitor's overlays): space picks or unpicks the highlighted
run, enter gives the picked ones, escape gives None."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, SelectionList
from textual.widgets.selection_list import Selection

from ..runs import RunInfo, format_loss


def describe(run: RunInfo) -> str:
    """A run's line: its name, how it ended, how far it got, its best validation loss."""
    progress = f"{run.step}/{run.total_steps}" if run.total_steps else "no update"
    return f"{run.name}  ·  {run.status}  ·  update {progress}  ·  best val loss {format_loss(run.best_val_loss)}"


class RunPickerScreen(ModalScreen[Optional[list[Path]]]):
    BINDINGS = [
        Binding("enter", "pick", "Overlay", priority=True),  # space toggles; enter must not
        Binding("escape", "cancel", "Cancel"),
    ]

    DEFAULT_CSS = """
    RunPickerScreen { align: center middle; }
    RunPickerScreen > Vertical {
        width: 96; max-width: 100%; height: auto; max-height: 90%; border: thick $primary; background: $surface;
        padding: 1 2;
    }
    RunPickerScreen .title { text-style: bold; margin-bottom: 1; }
    RunPickerScreen SelectionList { height: auto; max-height: 20; }
    RunPickerScreen .hint { color: $text-muted; margin-top: 1; }
    """

    def __init__(self, title: str, runs: list[RunInfo], picked: set[Path]) -> None:
        super().__init__()
        self.title_text, self.runs, self.picked = title, runs, picked

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="title")
            yield SelectionList[Path](*(Selection(describe(r), r.path, r.path in self.picked) for r in self.runs))
            yield Label("space picks or unpicks a run, enter shows the picked ones, escape cancels.", classes="hint")

    def action_pick(self) -> None:
        picked = set(self.query_one(SelectionList).selected)
        self.dismiss([r.path for r in self.runs if r.path in picked])

    def action_cancel(self) -> None:
        self.dismiss(None)

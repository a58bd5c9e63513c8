"""The engine's event log: one readable line per event, errors whole."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from farense_core import protocol as P

from ..describe import describe


class EventLog(RichLog):
    DEFAULT_CSS = """
    EventLog { height: 1fr; border: round $panel-lighten-2; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=5000, min_width=20, wrap=True, markup=False, auto_scroll=True)
        self.border_title = "events"

    def add_event(self, event: P.Record) -> None:
        line = describe(event)
        if line is not None:
            self.write(Text(line.text, style=line.style))

    def add_error(self, message: str) -> None:
        self.write(Text(message, style="bold red"))

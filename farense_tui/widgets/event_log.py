"""The engine's event log: one readable line per event, errors whole."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widgets import RichLog

from farense_core import protocol as P

from ..describe import describe
from .app_screen import undisplayed

MAX_LINES = 5000


class EventLog(RichLog):
    """Lines written while the log is hidden (another tab shows) wait until it shows: each line written lays
    out the whole screen (the log's height in lines changes, and it scrolls to the end), 8-27 ms of a busy
    machine's CPU about every 2 s while a run trains, in the way of a key pressed meanwhile."""

    DEFAULT_CSS = """
    EventLog { height: 1fr; border: round $panel-lighten-2; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=MAX_LINES, min_width=20, wrap=True, markup=False, auto_scroll=True)
        self.border_title = "events"
        self.waiting: deque[tuple] = deque(maxlen=MAX_LINES)  # (content, write's other arguments) while hidden

    def add_event(self, event: P.Record) -> None:
        line = describe(event)
        if line is not None:
            self.write(Text(line.text, style=line.style))

    def add_error(self, message: str) -> None:
        self.write(Text(message, style="bold red"))

    def write(self, content, *args, **kwargs) -> EventLog:
        if undisplayed(self):  # another tab shows
            self.waiting.append((content, args, kwargs))
            return self
        if self.waiting:  # they go first (shown again before its Show event came)
            self.on_show()
        return super().write(content, *args, **kwargs)

    def on_show(self) -> None:
        waiting, self.waiting = self.waiting, deque(maxlen=MAX_LINES)
        for content, args, kwargs in waiting:
            super().write(content, *args, **kwargs)

    def clear(self) -> EventLog:
        self.waiting.clear()
        return super().clear()

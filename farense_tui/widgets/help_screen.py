"""The help screen: every key of the app, where it works and what it does."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", show=True)]

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical {
        width: 96; height: 90%; border: thick $primary; background: $surface; padding: 0 1;
    }
    HelpScreen .title { text-style: bold; padding: 0 0 1 0; }
    HelpScreen .hint { color: $text-muted; }
    HelpScreen DataTable { height: 1fr; }
    """

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        """rows: (keys, what it does, where it works)."""
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("farense-tui keys", classes="title")
            table = DataTable(cursor_type="row", zebra_stripes=True)
            table.add_columns("key", "action", "where")
            for row in self.rows:
                table.add_row(*row)
            yield table
            yield Label("ctrl+p opens the command palette with every action. Escape closes this screen.",
                        classes="hint")

    def on_mount(self) -> None:
        # the table takes the keys: arrows, page up/down and end reach its last rows on a small terminal
        self.query_one(DataTable).focus()

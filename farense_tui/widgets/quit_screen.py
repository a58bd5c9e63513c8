"""Asked when the app is quit while a run trains: stop it with a checkpoint, keep it training in the
background (the app can be started again to follow it), or stay."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class QuitScreen(ModalScreen[str]):
    """Dismissed with "stop", "background" or "cancel"."""

    BINDINGS = [
        Binding("s", "choose('stop')", "Stop with a checkpoint"),
        Binding("b", "choose('background')", "Keep training in the background"),
        Binding("escape,c", "choose('cancel')", "Cancel"),
    ]

    DEFAULT_CSS = """
    QuitScreen { align: center middle; }
    QuitScreen > Vertical {
        width: 76; max-width: 100%; height: auto; border: thick $warning; background: $surface; padding: 1 2;
    }
    QuitScreen .title { text-style: bold; }
    QuitScreen Label { width: 100%; margin-bottom: 1; }
    QuitScreen Horizontal { height: auto; }
    QuitScreen Button { margin-right: 1; }
    """

    def __init__(self, run_dir: str) -> None:
        super().__init__()
        self.run_dir = run_dir

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("A run is training.", classes="title")
            yield Label(f"{self.run_dir}\nStop it with a checkpoint (it can be resumed later), or keep it training "
                        f"in the background: start farense-tui again to follow it.")
            with Horizontal():
                yield Button("Stop (s)", id="stop", variant="error")
                yield Button("Background (b)", id="background", variant="primary")
                yield Button("Cancel (esc)", id="cancel")

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)

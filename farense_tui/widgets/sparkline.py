"""The loss sparkline: the latest losses as a one-line sparkline with their range."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, Sparkline

from ..runs import format_loss


class LossSparkline(Horizontal):
    """``show(losses)`` draws the latest losses (two per cell of the room the range's label leaves) and labels
    min, last and max. How many fit follows this widget's own width, drawn again as it changes, never the
    sparkline's width of the moment (that follows the label's, and the screen's layout, still to come)."""

    TITLE_WIDTH = 14
    DEFAULT_CSS = f"""
    LossSparkline {{ height: 1; }}
    LossSparkline > .title {{ width: {TITLE_WIDTH}; color: $text-muted; }}
    LossSparkline > Sparkline {{ width: 1fr; height: 1; }}
    LossSparkline > .range {{ width: auto; padding-left: 1; color: $text-muted; }}
    LossSparkline > Sparkline > .sparkline--max-color {{ color: $error; }}
    LossSparkline > Sparkline > .sparkline--min-color {{ color: $success; }}
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.losses: list[float] = []
        self.drawn_width = 0

    def compose(self) -> ComposeResult:
        yield Label("loss", classes="title")
        yield Sparkline([], summary_function=max)
        yield Label("waiting for the first update", classes="range")

    def show(self, losses: list[float]) -> None:
        self.losses, self.drawn_width = losses, self.size.width
        recent = self.recent()
        self.query_one(Sparkline).data = recent
        self.query_one(".range", Label).update(range_text(recent))

    def recent(self) -> list[float]:
        width = self.size.width or 80  # not laid out yet: drawn again once it is
        room = width - self.TITLE_WIDTH - 1 - len(range_text(self.losses[-2 * width:]))
        return self.losses[-max(1, 2 * room):]

    def on_resize(self, event: events.Resize) -> None:
        # Textual sends Resize as a widget shows again too; the same width draws the same losses (and the
        # label's update would lay out the whole screen for nothing)
        if self.losses and event.size.width != self.drawn_width:
            self.show(self.losses)


def range_text(losses: list[float]) -> str:
    if not losses:
        return "waiting for the first update"
    return f"min {format_loss(min(losses))}  last {format_loss(losses[-1])}  max {format_loss(max(losses))}"

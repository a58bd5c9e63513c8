"""The loss sparkline: the latest losses as a one-line sparkline with their range."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, Sparkline

from ..runs import format_loss


class LossSparkline(Horizontal):
    """``show(losses)`` draws the latest losses (as many as fit) and labels min, last and max."""

    DEFAULT_CSS = """
    LossSparkline { height: 1; }
    LossSparkline > .title { width: 14; color: $text-muted; }
    LossSparkline > Sparkline { width: 1fr; height: 1; }
    LossSparkline > .range { width: auto; padding-left: 1; color: $text-muted; }
    LossSparkline > Sparkline > .sparkline--max-color { color: $error; }
    LossSparkline > Sparkline > .sparkline--min-color { color: $success; }
    """

    def compose(self) -> ComposeResult:
        yield Label("loss", classes="title")
        yield Sparkline([], summary_function=max)
        yield Label("waiting for the first update", classes="range")

    def show(self, losses: list[float]) -> None:
        spark = self.query_one(Sparkline)
        recent = losses[-max(1, 2 * (spark.size.width or 40)):]
        spark.data = recent
        text = (
            f"min {format_loss(min(recent))}  last {format_loss(recent[-1])}  max {format_loss(max(recent))}"
            if recent else "waiting for the first update"
        )
        self.query_one(".range", Label).update(text)

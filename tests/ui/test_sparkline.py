"""The Monitor's loss sparkline shows as many of the latest losses as its width holds, whenever it is drawn."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Sparkline

from farense_tui.widgets.sparkline import LossSparkline, range_text


class One(App):
    def compose(self) -> ComposeResult:
        yield LossSparkline()


async def test_the_latest_losses_follow_the_width_whenever_they_are_shown():
    losses = [float(i) for i in range(1, 301)]
    app = One()
    async with app.run_test(size=(80, 3)) as pilot:
        spark = app.query_one(LossSparkline)
        spark.show(losses)  # before any layout of its own: drawn again once laid out
        await pilot.pause()
        room = 80 - LossSparkline.TITLE_WIDTH - 1 - len(range_text(losses[-160:]))
        assert spark.recent() == losses[-2 * room:]
        await pilot.resize_terminal(120, 3)
        await pilot.pause()
        wider = spark.recent()
        assert wider == losses[-2 * (120 - LossSparkline.TITLE_WIDTH - 1 - len(range_text(losses[-240:]))):]
        assert len(wider) > 2 * room
        assert spark.query_one(Sparkline).data == wider  # drawn again at the new width
        assert str(spark.query_one(".range").render()) == range_text(wider)

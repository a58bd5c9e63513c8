"""The Monitor draws other runs' loss over the shown run's (ctrl+r picks them from the checkpoints folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import SelectionList, Static
from ui_helpers import SIZE, wait_for

from farense_tui.runs import load_run
from farense_tui.widgets.metric_plot import MetricPlot
from farense_tui.widgets.run_picker import RunPickerScreen

pytestmark = pytest.mark.slow  # a Textual app

SHOWN, OTHER = "run-20250430-090000", "run-20250430-180000"  # the workdir fixture's past runs


async def test_ctrl_r_overlays_another_run_s_loss_and_takes_it_away(app_factory, workdir):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        monitor = app.monitor_tab
        monitor.open(f"checkpoints/{SHOWN}")
        await wait_for(pilot, lambda: monitor.history is not None and monitor._drawn_version == monitor.history.version,
                       "the opened run drawn")
        plot = app.query_one("#plot-loss", MetricPlot)
        assert [line.name for line in plot.lines] == ["loss", "val_loss"]

        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunPickerScreen), "the run picker")
        choices = app.screen.query_one(SelectionList)
        # the other runs of the checkpoints folder, not the one shown
        assert [choices.get_option_at_index(i).value.name for i in range(choices.option_count)] == [OTHER]
        await pilot.press("space", "enter")
        await wait_for(pilot, lambda: monitor.overlays, "the overlay")

        other = Path("checkpoints") / OTHER  # as the checkpoints folder lists it
        overlay = f"overlay:{other}"
        assert [(line.name, line.label) for line in plot.lines] == [
            (overlay, OTHER), ("loss", "train"), ("val_loss", "validation")]
        await wait_for(pilot, lambda: overlay in plot._series, "the overlay drawn")
        assert plot._series[overlay] == load_run(other)[0].snapshot().series["loss"]
        assert len(plot._series[overlay][0]) == 40 and len(plot._series["loss"][0]) == 25  # its whole run, over 25
        assert str(app.query_one("#monitor-source", Static).render()) == (
            f"opened: checkpoints/{SHOWN} · training · overlaid: {OTHER}")

        # the picker shows it picked; unpicking it takes it off the plot
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunPickerScreen), "the run picker")
        assert [p.name for p in app.screen.query_one(SelectionList).selected] == [OTHER]
        await pilot.press("space", "enter")
        await wait_for(pilot, lambda: not monitor.overlays and overlay not in plot._series, "the overlay gone")
        assert [line.name for line in plot.lines] == ["loss", "val_loss"]

        # escape leaves things as they were
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunPickerScreen), "the run picker")
        await pilot.press("space", "escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunPickerScreen), "the picker closed")
        assert not monitor.overlays

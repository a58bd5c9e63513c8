"""Snapshot tests of each tab at 120x40 and at 80x24, driven by the fake engine's recorded streams.

The clock, theme and paths are pinned (the app runs in a temporary folder with relative paths);
cursors do not blink and notifications are cleared before the picture is taken.
Regenerate with: .venv/bin/pytest tests/ui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

from fake_engine import FakeFactory
from textual.widgets import Input
from ui_helpers import SIZE, wait_for

from farense_tui.widgets.metric_plot import MetricPlot
import pytest

pytestmark = pytest.mark.slow  # rendering the app


@pytest.fixture(params=[SIZE, (80, 24)], ids=["120x40", "80x24"])
def size(request) -> tuple[int, int]:
    return request.param


async def settle(pilot) -> None:
    app = pilot.app
    for field in app.query(Input):
        field.cursor_blink = False
    app.clear_notifications()
    await pilot.pause()


def test_preflight_tab(snap_compare, app_factory, size):
    async def run_before(pilot):
        app = pilot.app
        await pilot.press("r")
        await wait_for(pilot, lambda: app.preflight_tab.recommended is not None, "preflight_done")
        await settle(pilot)

    assert snap_compare(app_factory(FakeFactory()), terminal_size=size, run_before=run_before)


def test_config_tab(snap_compare, app_factory, size):
    async def run_before(pilot):
        app = pilot.app
        await pilot.press("f2")
        await wait_for(pilot, lambda: app.config_tab.fields_mounted, "the settings")
        app.config_tab.fields["warmup_steps"].set_text("-3")
        await wait_for(pilot, lambda: app.config_tab.fields["warmup_steps"].message is not None, "the message")
        app.config_tab.fields["warmup_steps"].scroll_visible(animate=False)
        await settle(pilot)

    assert snap_compare(app_factory(FakeFactory()), terminal_size=size, run_before=run_before)


async def _train_to_the_end(pilot) -> None:
    app = pilot.app
    await pilot.press("f3", "s")
    await wait_for(pilot, lambda: app.train_tab.state == "completed", "the run to complete")


def test_train_tab(snap_compare, app_factory, size):
    async def run_before(pilot):
        await _train_to_the_end(pilot)
        await settle(pilot)

    assert snap_compare(app_factory(FakeFactory()), terminal_size=size, run_before=run_before)


def test_train_tab_engine_crash(snap_compare, app_factory, size):
    async def run_before(pilot):
        app = pilot.app
        await pilot.press("f3", "s")
        await wait_for(pilot, lambda: app.train_tab.state == "exited", "the crash")
        await settle(pilot)

    assert snap_compare(app_factory(FakeFactory(crash_after=25)), terminal_size=size, run_before=run_before)


def test_monitor_tab(snap_compare, app_factory, size):
    async def run_before(pilot):
        app = pilot.app
        await _train_to_the_end(pilot)
        await pilot.press("f4")
        monitor = app.monitor_tab
        await wait_for(pilot, lambda: monitor._drawn_version == monitor.history.version, "the redraw")
        await wait_for(pilot, lambda: all(p._has_data for p in app.query(MetricPlot)), "the plots")
        await settle(pilot)

    assert snap_compare(app_factory(FakeFactory()), terminal_size=size, run_before=run_before)


def test_chat_tab_compare(snap_compare, app_factory, size):
    async def run_before(pilot):
        app = pilot.app
        await pilot.press("f5")
        app.query_one("#prompt", Input).focus()
        await pilot.press(*"Quem fundou o Farense?", "enter")
        await wait_for(pilot, lambda: app.chat_tab.current is None, "the reply")
        await pilot.press("ctrl+t", *"E em que estádio joga?", "enter")
        await wait_for(pilot, lambda: app.chat_tab.current is None and not app.chat_tab.pending, "both replies")
        await settle(pilot)

    assert snap_compare(app_factory(FakeFactory()), terminal_size=size, run_before=run_before)


def test_help_screen(snap_compare, app_factory, size):
    async def run_before(pilot):
        await pilot.press("f3", "question_mark")
        await settle(pilot)

    assert snap_compare(app_factory(FakeFactory()), terminal_size=size, run_before=run_before)

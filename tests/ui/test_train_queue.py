"""The Train tab shows the run queue (`farense-tui queue`), read-only: hidden while there is none, read
again when the tab is shown and on a timer, so a runner's progress shows without a key."""

from __future__ import annotations

from fake_engine import FakeFactory
from textual.widgets import DataTable, Label
from ui_helpers import CLOCK, SIZE, wait_for

from farense_core import queue as Q
import pytest

pytestmark = pytest.mark.slow  # a Textual app per test


def queue_sweep(checkpoints) -> Q.Queue:
    """Three runs of the workdir's config.yaml, as `queue add config.yaml --set learning_rate=...` makes them."""
    queue = Q.Queue(checkpoints)
    entries, _ = Q.plan(["config.yaml"], ["learning_rate=1e-4,2e-4,3e-4"], "checkpoints/", CLOCK)
    Q.add(queue, entries)
    with queue.edit() as edit:
        edit.entries[0].status = "completed"
        edit.entries[1].status, edit.entries[1].exit_code = "failed", 1
    return queue


def rows(app) -> list[tuple[str, ...]]:
    table = app.train_tab.query_one("#queue", DataTable)
    return [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]


async def test_the_queue_shows_when_the_tab_is_shown_and_follows_its_file(app_factory, workdir, monkeypatch):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await pilot.pause()
        box = app.train_tab.query_one("#queue-box")
        assert not box.display and rows(app) == []  # no queue: no room taken

        queue = queue_sweep(workdir / "checkpoints")
        await pilot.press("f2", "f3")  # shown again: read again (the timer's 5 s have not passed)
        await pilot.pause()
        assert box.display
        assert rows(app) == [("1", "completed", "config-learning_rate=0.0001-20250501-120000"),
                             ("2", "failed", "config-learning_rate=0.0002-20250501-120000"),
                             ("3", "queued", "config-learning_rate=0.0003-20250501-120000")]
        assert str(app.train_tab.query_one("#queue-caption", Label).render()) == "Queue, read-only (farense-tui queue)"

        held = queue.hold_runner()  # `queue run` starts on run 3
        try:
            with queue.edit() as edit:
                edit.entries[2].status = "running"
            app.train_tab.refresh_queue()
            assert rows(app)[2][1] == "running"
            assert str(app.train_tab.query_one("#queue-caption", Label).render()).endswith(
                f"(run by pid {queue.runner()['pid']})")
        finally:
            held.release()


async def test_the_timer_reads_the_queue_again(app_factory, workdir, monkeypatch):
    import farense_tui.tabs.train as train_tab

    monkeypatch.setattr(train_tab, "QUEUE_REFRESH_SECONDS", 0.05)
    queue = queue_sweep(workdir / "checkpoints")
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await wait_for(pilot, lambda: len(rows(app)) == 3, "the queue")
        with queue.edit() as edit:
            edit.entries = edit.entries[1:]
            edit.entries[-1].status = "running"
        await wait_for(pilot, lambda: [r[:2] for r in rows(app)] == [("2", "failed"), ("3", "running")],
                       "the queue's new state, with no key pressed")


@pytest.fixture(params=[SIZE, (80, 24)], ids=["120x40", "80x24"])
def size(request) -> tuple[int, int]:
    return request.param


def test_train_tab_with_a_queue(snap_compare, app_factory, workdir, size):
    queue_sweep(workdir / "checkpoints")

    async def run_before(pilot):
        await pilot.press("f3")
        await wait_for(pilot, lambda: len(rows(pilot.app)) == 3, "the queue")
        pilot.app.clear_notifications()
        await pilot.pause()

    assert snap_compare(app_factory(FakeFactory()), terminal_size=size, run_before=run_before)

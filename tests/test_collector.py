"""The UI's full garbage passes wait for the app to be idle (farense_tui/collector.py)."""

from __future__ import annotations

import gc

import pytest

from farense_tui import collector as G


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def full_passes() -> int:
    return gc.get_stats()[2]["collections"]


@pytest.fixture
def idle():
    clock = Clock()
    c = G.IdleCollector(clock)
    before = gc.get_threshold()
    c.start()
    yield c, clock
    c.stop()
    assert gc.get_threshold() == before


def test_python_runs_no_full_pass_of_its_own_once_started(idle):
    assert gc.get_threshold()[2] == G.NEVER


def test_a_full_pass_waits_until_no_key_came_for_a_while(idle):
    c, clock = idle
    clock.now += G.EVERY_SECONDS
    c.input_seen()
    clock.now += G.IDLE_SECONDS / 2
    n = full_passes()
    assert not c.tick() and full_passes() == n
    clock.now += G.IDLE_SECONDS
    assert c.tick() and full_passes() == n + 1
    clock.now += G.IDLE_SECONDS  # idle, but a pass ran just now
    assert not c.tick() and full_passes() == n + 1


def test_typing_without_pause_still_gets_a_pass_now_and_then(idle):
    c, clock = idle
    n = full_passes()
    while clock.now < 1000.0 + G.LATEST_SECONDS - 0.5:
        c.input_seen()
        assert not c.tick()
        clock.now += 0.5
    clock.now += 0.5
    c.input_seen()
    assert c.tick() and full_passes() == n + 1


def test_a_stopped_collector_leaves_the_passes_to_python():
    clock = Clock()
    c = G.IdleCollector(clock)
    clock.now += G.LATEST_SECONDS
    assert not c.tick()

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


def young_passes() -> int:
    return gc.get_stats()[0]["collections"]


def test_no_pass_runs_while_a_key_s_frame_is_made(idle):
    c, _ = idle
    first = c.hold()
    assert first is not None and not gc.isenabled()
    n = young_passes()
    garbage = [[i] for i in range(20 * gc.get_threshold()[0])]  # enough new objects for many young passes
    assert young_passes() == n
    del garbage
    c.release(first)
    assert gc.isenabled() and c.held_since is None


def test_the_next_key_before_the_release_takes_it_over(idle):
    c, clock = idle
    first = c.hold()
    since = c.held_since
    clock.now += 0.01
    second = c.hold()
    assert second != first and c.held_since == since  # held since the first key, for the tick's limit
    c.release(first)  # the first key's frame is out, the second's is not
    assert not gc.isenabled()
    c.release(second)
    assert gc.isenabled()


def test_passes_held_too_long_are_let_go_on_the_next_tick(idle):
    c, clock = idle
    c.hold()
    clock.now += G.HOLD_SECONDS / 2
    c.hold()  # a key every so often: still let go HOLD_SECONDS after the first
    c.tick()
    assert not gc.isenabled()
    clock.now += G.HOLD_SECONDS / 2
    c.tick()
    assert gc.isenabled()


def test_a_collector_switched_off_by_someone_else_stays_off(idle):
    c, _ = idle
    gc.disable()
    try:
        assert c.hold() is None
        c.release()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_stopping_lets_held_passes_go():
    c = G.IdleCollector(Clock())
    assert c.hold() is None  # not started: the passes are not the app's to hold
    c.start()
    c.hold()
    c.stop()
    assert gc.isenabled()

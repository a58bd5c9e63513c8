"""The UI's garbage collection, kept out of a key's way (issue 13).

Python's collector runs a full pass whenever enough objects have survived the younger passes, at any
moment: in the app that was every few tab switches, inside the switch, 10-55 ms of a tab's frame (the
slowest switches). Here the full passes wait for the app to be idle: no key or click for
``IDLE_SECONDS``, at most one pass every ``EVERY_SECONDS``, and one in any case once ``LATEST_SECONDS``
have passed (a person typing without pause must not let garbage pile up). The young passes (under 3 ms
each, but some 25 of them in a tab switch's 30 ms) wait from a key or click until its frame is drawn and
written out (``hold``, ``release``: the first pass after them holds the interpreter for 3-10 ms, which the
thread writing the frame would wait for), at most ``HOLD_SECONDS`` and the next tick after them.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

IDLE_SECONDS = 1.0
EVERY_SECONDS = 5.0
LATEST_SECONDS = 30.0
HOLD_SECONDS = 0.5
NEVER = 1 << 30  # a threshold the count of young passes never reaches


class IdleCollector:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last_input = self.last_pass = clock()
        self._thresholds: tuple[int, int, int] | None = None
        self.held_since: float | None = None  # when the passes were first held, None while they run
        self.holds = 0

    def start(self) -> None:
        """Take the full passes over from Python."""
        if self._thresholds is None:
            self._thresholds = gc.get_threshold()
            gc.set_threshold(self._thresholds[0], self._thresholds[1], NEVER)

    def stop(self) -> None:
        """Give them back (the app quits; tests run many apps in one process)."""
        self.release()
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None

    def input_seen(self) -> None:
        self.last_input = self.clock()

    def hold(self) -> int | None:
        """No pass of any kind until ``release`` (a key's frame is being made and written); returns this
        hold's number, or None where Python's collector is off or not ours. A hold while held (the next key
        before the last one's release) takes the release over: only the newest hold's number releases."""
        if self._thresholds is None or (self.held_since is None and not gc.isenabled()):
            return None
        if self.held_since is None:
            gc.disable()
            self.held_since = self.clock()
        self.holds += 1
        return self.holds

    def release(self, hold: int | None = None) -> None:
        """Let the passes run again: those of hold number ``hold`` if it is still the newest, any with None."""
        if self.held_since is not None and hold in (None, self.holds):
            self.held_since = None
            gc.enable()

    def tick(self) -> bool:
        """Run a full pass if it is time (called every second or so); True if it ran. Passes held for
        longer than ``HOLD_SECONDS`` (the frame never came: the screen kept changing) are let go."""
        now = self.clock()
        if self.held_since is not None and now - self.held_since >= HOLD_SECONDS:
            self.release()
        idle = now - self.last_input >= IDLE_SECONDS and now - self.last_pass >= EVERY_SECONDS
        if self._thresholds is None or not (idle or now - self.last_pass >= LATEST_SECONDS):
            return False
        gc.collect()
        self.last_pass = self.clock()
        return True

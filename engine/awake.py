"""Keep a Mac awake while it trains: macOS sleeps an idle Mac (and with it a run of hours) unless a
process asserts it must not. ``caffeinate -i -w PID`` holds that assertion until PID exits, so a
crashed engine never leaves the Mac unable to sleep. Nothing to do on other systems."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Optional


def keep_awake(pid: Optional[int] = None) -> Optional[subprocess.Popen]:
    """Start ``caffeinate -i -w PID`` on macOS (this process by default); None elsewhere or when it
    cannot be started (training goes on; the Mac may then sleep)."""
    if sys.platform != "darwin":
        return None
    exe = shutil.which("caffeinate")
    if exe is None:
        return None
    try:
        return subprocess.Popen([exe, "-i", "-w", str(pid or os.getpid())], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def let_sleep(proc: Optional[subprocess.Popen]) -> None:
    """End what keep_awake started (the run is over; the engine may stay for other jobs)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()

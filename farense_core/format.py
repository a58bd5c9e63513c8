"""Human-readable figures, shared by the engine, the CLI and the TUI."""

from __future__ import annotations

import math


def duration(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def size(n: float) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def share(fraction: float) -> str:
    """A fraction as a whole percentage that never hides a few: 0.002 is "<1%", 0.998 is ">99%"."""
    shown = f"{fraction:.0%}"
    if 0 < fraction and shown == "0%":
        return "<1%"
    if fraction < 1 and shown == "100%":
        return ">99%"
    return shown


MB, GB = 1024 ** 2, 1024 ** 3


def gb(n: float) -> str:
    """Bytes for sentences: MB under a gigabyte (one decimal under 10 MB), GB from there."""
    if abs(n) < 10 * MB:
        return f"{n / MB:.1f} MB"
    return f"{n / MB:,.0f} MB" if abs(n) < GB else f"{n / GB:.1f} GB"


def count(n: float) -> str:
    """A parameter count: 135M, 1.7B."""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:,.0f}M" if n >= 10e6 else f"{n / 1e6:.2f}M"

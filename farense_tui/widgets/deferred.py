"""Mount a hidden tab's heavy parts just after the first frame, so the app shows at once."""

from __future__ import annotations

import gc
from typing import Callable, Iterable, Optional

from textual.widget import Widget


def mount_after_first_frame(parent: Widget, widgets: Iterable[Widget],
                            then: Optional[Callable[[], None]] = None) -> None:
    """Mount widgets into parent after the next refresh, then call ``then``; nothing happens if
    the app is closing by then (where Textual's Lazy raises)."""
    widgets = list(widgets)

    async def mount() -> None:
        if parent.is_attached:
            await parent.mount_all(widgets)
            if then is not None:
                then()
        if parent.is_attached:
            # what it mounted lives as long as the app: out of the collector's full passes from now on
            # (each pass walked all of the app's widgets again: 25-55 ms, a tab switch's slowest part)
            gc.freeze()

    parent.call_after_refresh(mount)

"""The footer of key hints, rebuilt only when the keys it shows change."""

from __future__ import annotations

from textual.widgets import Footer


class KeyFooter(Footer):
    """Textual's Footer rebuilds all its keys (removes and mounts them, a layout of the whole screen)
    on every change of focus, twice per tab switch. Here a rebuild that would show the same keys is
    skipped, and the keys a rebuild removes are let go."""

    _shown: tuple | None = None  # what the keys show now

    def _keys(self) -> tuple:
        """What the footer draws: the shown bindings, and the command palette's."""
        active = self.screen.active_bindings
        palette = self.app.COMMAND_PALETTE_BINDING if self.show_command_palette else ""
        return self.compact, tuple(
            (b.key, b.action, b.description, b.key_display, b.group, b.tooltip, enabled, tooltip)
            for key, (_, b, enabled, tooltip) in active.items() if b.show or key == palette)

    async def recompose(self) -> None:
        keys = self._keys() if self.is_attached else None
        if keys is not None and keys == self._shown:
            return
        await super().recompose()
        # each key watches the footer's `compact`; Textual forgets the removed keys' watchers only when
        # `compact` changes, so without this every rebuild would keep its keys alive for good
        self.mutate_reactive(Footer.compact)
        # an empty footer (drawn before the screen's first bindings) is built again next time
        self._shown = keys if self.children else None

"""The footer of key hints, changed in place as focus moves, rebuilt only when its keys need more widgets."""

from __future__ import annotations

from textual.compose import compose
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

KEY_CLASSES = ("-disabled", "-grouped", "-command-palette")  # the classes Footer.compose gives its keys


class KeyFooter(Footer):
    """Textual's Footer rebuilds all its keys (removes and mounts them: two layouts of the whole screen,
    each with its frame) after the frame that follows a change of focus, on every tab switch. Here the keys
    it has take the new keys' text instead (one layout), still after that frame: done before it, the tab's
    own frame would wait for it. The footer is rebuilt only when it needs more keys than it has (or a
    group), a rebuild that would show the same keys is skipped, and the keys a rebuild removes are let go."""

    _shown: tuple | None = None  # what the keys show now

    def _keys(self) -> tuple:
        """What the footer draws: the shown bindings, and the command palette's."""
        active = self.screen.active_bindings
        palette = self.app.COMMAND_PALETTE_BINDING if self.show_command_palette else ""
        return self.compact, tuple(
            (b.key, b.action, b.description, b.key_display, b.group, b.tooltip, enabled, tooltip)
            for key, (_, b, enabled, tooltip) in active.items() if b.show or key == palette)

    def bindings_changed(self, screen: Screen) -> None:
        if screen.app.app_focus and self.is_attached and screen is self.screen:
            self.call_after_refresh(self._show_in_place)  # queued first: the rebuild then finds nothing to do
        super().bindings_changed(screen)  # queues the rebuild

    def _show_in_place(self) -> None:
        """Put what Footer.compose would show into the keys the footer has (hiding those left over)."""
        keys = self._keys()
        if not self.children or keys == self._shown:
            return
        with self._context():  # compose binds each key to this footer's `compact`
            wanted = compose(self)  # unmounted keys: what to show, in order
        have = list(self.children)
        if len(wanted) > len(have) or any(type(w) is not FooterKey for w in (*wanted, *have)):
            return  # rebuilt instead (more keys, or a group of keys)
        for key, new in zip(have, wanted):
            for name in ("key", "key_display", "description", "action", "_disabled", "tooltip"):
                setattr(key, name, getattr(new, name))
            for name in KEY_CLASSES:
                key.set_class(new.has_class(name), name)
            key.display = True
            key.refresh(layout=True)  # its width follows its text
        for key in have[len(wanted):]:
            key.display = False
        self._shown = keys

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

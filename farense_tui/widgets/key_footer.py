"""The footer of key hints: one line, one widget.

Textual's Footer is a row of widgets, one per key, each as wide as its text: when focus moves to a widget
with other keys (every tab switch) it rebuilds or changes them, and the screen arranges all its widgets
again (9-12 ms of a busy machine's CPU per switch, on top of the tab's own layout). This footer draws the
same keys as text on its one line: a change of keys repaints that line and nothing else. Like Textual's,
a key is clicked to press it (a disabled one rings the bell), shows its tooltip under the pointer, the
command palette's key sits at the right end, and a mouse wheel scrolls keys that do not fit. Each tab's
line is drawn once and kept: tabs come back, and drawing the line cost ~0.85 ms of every switch's frame.
"""

from __future__ import annotations

from typing import NamedTuple

from rich.text import Text
from textual import events
from textual.screen import Screen
from textual.widget import Widget


class FooterKey(NamedTuple):
    key: str  # what pressing it sends (the binding's first key)
    display: str  # how the footer writes the key
    description: str
    action: str
    enabled: bool
    tooltip: str
    palette: bool = False  # the command palette's key, drawn at the right end


class KeyFooter(Widget):
    ALLOW_SELECT = False
    COMPONENT_CLASSES = {"key-footer--key", "key-footer--description", "key-footer--hover", "key-footer--edge"}
    DEFAULT_CSS = """
    KeyFooter {
        dock: bottom;
        height: 1;
        width: 1fr;
        color: $footer-foreground;
        background: $footer-background;
    }
    KeyFooter > .key-footer--key {
        color: $footer-key-foreground;
        background: $footer-key-background;
        text-style: bold;
    }
    KeyFooter > .key-footer--description {
        color: $footer-description-foreground;
        background: $footer-description-background;
    }
    KeyFooter > .key-footer--hover { background: $block-hover-background; }
    KeyFooter > .key-footer--edge { color: $foreground 20%; }
    """

    def __init__(self, *, show_command_palette: bool = True, id: str | None = None) -> None:
        super().__init__(id=id)
        self.show_command_palette = show_command_palette
        self.keys: tuple[FooterKey, ...] = ()
        self.spans: list[tuple[int, int, FooterKey]] = []  # (first cell, end cell, key) as last drawn
        self.hovered: FooterKey | None = None
        self.scrolled = 0  # cells of the left-hand keys scrolled out of sight
        self.kept: dict[tuple, tuple] = {}  # lines drawn, by what they are drawn from -> what render made

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self.bindings_changed)
        self.bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def bindings_changed(self, screen: Screen) -> None:
        if screen is not self.screen or not screen.app.app_focus:
            return  # another screen's, or the terminal lost focus (its bindings come back with it)
        keys = self.shown_keys()
        if keys != self.keys:
            self.keys = keys
            self.refresh()  # the same line, other text: no layout

    def shown_keys(self) -> tuple[FooterKey, ...]:
        """What Textual's Footer shows: one key per action among the shown bindings (the first bound),
        then the command palette's."""
        active = self.screen.active_bindings
        palette_key = self.app.COMMAND_PALETTE_BINDING
        keys: dict[str, FooterKey] = {}
        for key, (_, binding, enabled, tooltip) in active.items():
            if binding.show and binding.action not in keys and key != palette_key:
                keys[binding.action] = FooterKey(key, self.app.get_key_display(binding), binding.description,
                                                 binding.action, enabled, tooltip)
        shown = list(keys.values())
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE and palette_key in active:
            _, binding, enabled, tooltip = active[palette_key]
            shown.append(FooterKey(palette_key, self.app.get_key_display(binding), binding.description,
                                   binding.action, enabled, binding.tooltip or binding.description, palette=True))
        return tuple(shown)

    KEEP = 16  # lines kept: a tab's keys in a few states each

    def _render_content(self) -> None:
        # what the line is drawn from: its keys and their state, its size, its own style (inline styles
        # change it without a style update) and its keys' styles (Textual replaces them when they change)
        components = tuple(self._component_styles.values())
        drawn = (self.keys, self.size, self.hovered, self.scrolled, self.visual_style, tuple(map(id, components)))
        kept = self.kept.get(drawn)
        if kept is None:
            super()._render_content()  # calls render, which sets spans and keeps scrolled within the keys
            if len(self.kept) >= self.KEEP:
                del self.kept[next(iter(self.kept))]
            # the keys' styles are kept alive with the line, so that their ids stay theirs
            self.kept[drawn] = (self._render_cache, self.spans, self.scrolled, components)
        else:
            self._render_cache, self.spans, self.scrolled, _ = kept
            self._dirty_regions.clear()

    def notify_style_update(self) -> None:
        self.kept.clear()  # a theme or a style of its keys changed: draw again
        super().notify_style_update()

    def render(self) -> Text:
        width = self.size.width
        styles = {name: self.get_component_rich_style(f"key-footer--{name}", partial=name == "hover")
                  for name in ("key", "description", "hover", "edge")}

        def drawn(key: FooterKey) -> Text:
            text = Text.assemble((key.display, styles["key"]),
                                 (f" {key.description}" if key.description else "", styles["description"]))
            if not key.enabled:
                text.stylize("dim")
            if key == self.hovered:
                text.stylize(styles["hover"])
            return text

        left, right = Text(), Text()
        spans: list[tuple[int, int, FooterKey]] = []  # in the cells of all the left-hand keys, then the line's
        for key in self.keys:
            if key.palette:
                right = Text.assemble(("▏", styles["edge"]), drawn(key), " ")  # the edge, the key, a cell to spare
                spans.append((width - right.cell_len + 1, width - 1, key))
            else:
                start = left.cell_len
                left.append_text(drawn(key))
                spans.append((start, left.cell_len, key))
                left.append(" ")
        room = max(0, width - right.cell_len)
        self.scrolled = max(0, min(self.scrolled, left.cell_len - room))
        spans = [(a, b, k) if k.palette else (a - self.scrolled, b - self.scrolled, k) for a, b, k in spans]
        left = left[self.scrolled:]  # by characters, as the cells are counted: keys are ASCII
        left.truncate(room, pad=True)
        # a key scrolled out of sight, or beneath the palette's, cannot be clicked
        self.spans = [(max(0, a), min(b, room if not k.palette else width), k) for a, b, k in spans
                      if (k.palette or (b > 0 and a < room))]
        return Text.assemble(left, right, no_wrap=True, end="")

    def key_at(self, x: int) -> FooterKey | None:
        return next((key for start, end, key in self.spans if start <= x < end), None)

    def on_mouse_move(self, event: events.MouseMove) -> None:
        self._hover(self.key_at(event.x))

    def on_leave(self, event: events.Leave) -> None:
        self._hover(None)

    def _hover(self, key: FooterKey | None) -> None:
        if key != self.hovered:
            self.hovered = key
            self.tooltip = (key.tooltip or None) if key else None
            self.refresh()

    def on_mouse_down(self, event: events.MouseDown) -> None:
        key = self.key_at(event.x)
        if key is None:
            return
        if key.enabled:
            self.app.simulate_key(key.key)
        else:
            self.app.bell()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        self._scroll(4)
        event.stop()

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self._scroll(-4)
        event.stop()

    def _scroll(self, cells: int) -> None:
        self.scrolled = max(0, self.scrolled + cells)  # render keeps it within the keys
        self.refresh()

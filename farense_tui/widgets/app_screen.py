"""The app's screen and its tabs: Textual's, less work of theirs that a tab switch does not need (issue 13:
a full arrangement and two full repaints per switch, some 15 ms of its frame), and no wait for the update
timer's next tick once a key's changes are in."""

from __future__ import annotations

from textual import events
from textual._compositor import Compositor, ReflowResult
from textual.geometry import Size
from textual.reactive import Reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import TabbedContent


class _Compositor(Compositor):
    """A layout first marks the map stale when a widget it repaints is not on screen (one of the tab just
    hidden, say); then it arranges every widget. Textual leaves the map marked stale after that, so the
    frame's first look-up of a widget's region arranged them all again (some 5 ms of a tab switch)."""

    def reflow(self, parent: Widget, size: Size) -> ReflowResult:
        result = super().reflow(parent, size)
        self._full_map_invalidated = False  # the map reflow just made is the full map
        return result


class AppScreen(Screen):
    # Textual repaints the whole screen when focus moves (a second full frame per tab switch), though the
    # screen draws nothing by it: the widgets that gain or lose focus restyle and repaint themselves
    focused: Reactive[Widget | None] = Reactive(None, repaint=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._compositor = _Compositor()
        self.input_waits = False

    def draw_input(self) -> None:
        """A key or click came: what it changes is drawn as soon as the screen has had its messages, not at
        Textual's update timer's next tick. That timer keeps to a 60 Hz grid, and a tick just before (a
        progress line's repaint, say) puts the next one 17-33 ms later: some switches waited that long
        with nothing to do."""
        self.input_waits = True

    async def _on_idle(self, event: events.Idle) -> None:
        pending = self._layout_required or self._repaint_required or self._dirty_widgets or self._scroll_required
        if self.input_waits and pending and self.is_current and not self.app._batch_count:
            self.input_waits = False
            event.prevent_default()  # Textual's own idle handler would wait for the timer
            self._on_timer_update()  # the timer's work: layout, frame, then the callbacks after a refresh


class AppTabs(TabbedContent):
    # Textual repaints the whole tabbed area when the active tab changes, though it draws nothing by it:
    # the tabs and panes that show or hide repaint themselves
    active: Reactive[str] = Reactive("", init=False, repaint=False)

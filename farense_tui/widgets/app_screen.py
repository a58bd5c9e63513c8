"""The app's screen and its tabs: Textual's, less work of theirs that a tab switch does not need (issue 13:
a full arrangement and two full repaints per switch, some 15 ms of its frame; a second arrangement and a
second frame after it, for the footer's keys and the tabs' underline), no wait for the update timer's
next tick once a key's changes are in, and the widgets told that they show, hide or resized after the
key's frame, not before it."""

from __future__ import annotations

import asyncio

from textual import events
from textual._compositor import Compositor, ReflowResult
from textual.geometry import Size
from textual.reactive import Reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import TabbedContent, TabPane
from textual.widgets._tabbed_content import ContentTabs
from textual.widgets._tabs import Underline


class _Compositor(Compositor):
    """A layout first marks the map stale when a widget it repaints is not on screen (one of the tab just
    hidden, say); then it arranges every widget. Textual leaves the map marked stale after that, so the
    frame's first look-up of a widget's region arranged them all again (some 5 ms of a tab switch)."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False  # while a key's frame is drawn: what the layout changed is told after it
        self.held: list[ReflowResult] = []

    def reflow(self, parent: Widget, size: Size) -> ReflowResult:
        result = super().reflow(parent, size)
        self._full_map_invalidated = False  # the map reflow just made is the full map
        if self.holding:
            self.held.append(result)
            return ReflowResult(hidden=set(), shown=set(), resized=set())
        return result

    def tell_held(self) -> None:
        """The Hide, Resize and Show events that the layouts held back, as Textual sends them (a Resize to a
        widget that shows or changed size). A tab switch has some 110 widgets hide and as many show: posting
        their 330 events took 2-3 ms before the frame; the widgets handle them after it either way."""
        held, self.held = self.held, []
        for result in held:
            for widget in result.hidden:
                widget.post_message(events.Hide())
            for widget in result.shown | result.resized:
                geometry = self._full_map.get(widget)
                if geometry is not None:
                    widget.post_message(events.Resize(geometry.region.size, geometry.virtual_size,
                                                      geometry.container_size))
            for widget in result.shown:
                widget.post_message(events.Show())

    def update_widgets(self, widgets: set[Widget]) -> None:
        """Textual arranges every widget again when one it repaints is not in the map, taking it for new.
        A widget of a hidden tab (the button that loses focus as the tab hides) is in no map and needs no
        arranging: it is drawn when its tab shows, and that is a layout anyway. Such repaints cost a
        second full arrangement after each tab switch (some 4 ms)."""
        shown = self.visible_widgets.keys()
        super().update_widgets({w for w in widgets if w in shown or not undisplayed(w)})


def undisplayed(widget: Widget) -> bool:
    """Whether the widget or one of its ancestors is ``display: none`` (a tab that is not the active one)."""
    return not all(node.display for node in widget.ancestors_with_self if isinstance(node, Widget))


class AppScreen(Screen):
    # Textual repaints the whole screen when focus moves (a second full frame per tab switch), though the
    # screen draws nothing by it: the widgets that gain or lose focus restyle and repaint themselves
    focused: Reactive[Widget | None] = Reactive(None, repaint=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._compositor = _Compositor()
        self.input_waits = False
        self.input_settled = False  # the widgets' tasks have had their turn since the input came

    def draw_input(self) -> None:
        """A key or click came: what it changes is drawn as soon as the screen has had its messages, not at
        Textual's update timer's next tick. That timer keeps to a 60 Hz grid, and a tick just before (a
        progress line's repaint, say) puts the next one 17-33 ms later: some switches waited that long
        with nothing to do."""
        if not self.input_waits:  # a key during another's turn of the loop does not start it again
            self.input_settled = False
        self.input_waits = True

    async def _on_idle(self, event: events.Idle) -> None:
        pending = self._layout_required or self._repaint_required or self._dirty_widgets or self._scroll_required
        if self.input_settled and not pending:
            self.input_waits = self.input_settled = False  # drawn meanwhile, or nothing to draw
        elif self.input_waits and pending and self.is_current and not self.app._batch_count:
            event.prevent_default()  # Textual's own idle handler would wait for the timer
            if not self.input_settled:
                # Textual tells the footer of a new focus only after the next frame, and the widgets the
                # key repainted (the tabs' underline, the button that lost focus) tell the screen so from
                # their own tasks, which run once the screen lets them: the tab showed with the last
                # tab's keys, and a second frame followed 10-20 ms later (some 8 ms of CPU)
                self.input_settled = True
                self.refresh_bindings()
                await asyncio.sleep(0)
                self.check_idle()  # back here once their messages are in
                return
            self.input_waits = self.input_settled = False
            self._compositor.holding = True
            try:
                self._on_timer_update()  # the timer's work: layout, frame, then the callbacks after a refresh
            finally:
                self._compositor.holding = False
                self._compositor.tell_held()


class AppTabs(TabbedContent):
    # Textual repaints the whole tabbed area when the active tab changes, though it draws nothing by it:
    # the tabs and panes that show or hide repaint themselves
    active: Reactive[str] = Reactive("", init=False, repaint=False)

    def _on_tab_pane_focused(self, event: TabPane.Focused) -> None:
        """Textual shows the tab of a widget focused from code when this message comes, even where focus
        has moved to another tab since: a key pressed as the app starts (F2 before the first tab's
        focus was reported) showed the first tab again for a frame, which took the focus the key gave."""
        focused = self.screen.focused
        if focused is None or event.tab_pane not in focused.ancestors_with_self:
            event.stop()
            event.prevent_default()  # the later focus, and its tab, stand

    def underline_active(self) -> None:
        """Move the underline beneath the active tab now, in the switch's own frame: Textual moves it once
        that frame is drawn (the tabs' places are known only after a layout), which is a second frame per
        switch. The tabs' labels keep their places as the active one changes, so the last layout's places
        hold; Textual's own move after the frame then finds the underline where it goes and draws nothing.
        Left to Textual where animations are on (the underline slides from the frame after)."""
        if self.app.animation_level != "none":
            return
        tabs = self.get_child_by_type(ContentTabs)
        active = tabs.active_tab
        if active is None or not active.region:
            return
        start, end = active.virtual_region.shrink(active.styles.gutter).column_span
        underline = tabs.query_one(Underline)
        underline.highlight_start, underline.highlight_end = start, end

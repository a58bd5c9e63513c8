"""What keeps a tab switch cheap while a run trains (issue 13; bench/profile_ui_keys.py measures it): the
Config tab's list does not restyle its fields as it gains or loses focus, the footer's new keys repaint its
one line (no layout of the screen), the Monitor draws only while it shows, the app keeps its long-lived
objects out of the garbage collector's full passes and runs those passes when no key waits and none at all
between a key and its frame, a key's frame is drawn without waiting for Textual's update timer and holds the
tab's keys in the footer and the underline beneath it (no second frame for them), the widgets hear that they
show, hide or resized after that frame, the footer draws each tab's keys once, a repaint in a hidden tab
arranges nothing, and the tabs' underline moves at once instead of sliding."""

from __future__ import annotations

import gc
import sys

import pytest
from textual import events
from textual.color import Color
from textual.widget import Widget
from textual.widgets import Static
from textual.widgets._tabs import Underline
from ui_helpers import SIZE, wait_for

from farense_tui import collector
from farense_tui.app import SWITCH_SECONDS
from farense_tui.widgets.key_footer import KeyFooter

pytestmark = pytest.mark.slow  # a Textual app per test


async def each_tab_seen(app, pilot, last: str = "f3") -> None:
    """F2 and F3 pressed once each, ``last`` last: the Config tab's first sight builds its fields, which the
    switches a test times come after."""
    await pilot.press("f3" if last == "f2" else "f2", last)
    await wait_for(pilot, lambda: app.config_tab.fields_mounted, "the Config tab's fields")
    await pilot.pause(0.3)


async def test_switching_to_the_config_tab_does_not_restyle_its_fields(app_factory, monkeypatch):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await each_tab_seen(app, pilot)
        restyled = []
        update_nodes = app.stylesheet.update_nodes

        def counting(nodes, animate=False):
            nodes = list(nodes)
            restyled.extend(nodes)
            return update_nodes(nodes, animate=animate)

        monkeypatch.setattr(app.stylesheet, "update_nodes", counting)
        for key in ("f2", "f3") * 3:
            await pilot.press(key)
            await pilot.pause()
            assert app.screen.focused is (app.query_one("#settings") if key == "f2" else app.query_one("#start"))
        fields = set(app.config_tab.query("SettingField, SettingField *"))
        assert len(fields) > 100 and not fields & set(restyled)


def described(footer: KeyFooter) -> set[str]:
    return {k.description for k in footer.keys}


async def test_the_settings_list_is_restyled_by_its_focus_only_where_a_rule_styles_it_so(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await each_tab_seen(app, pilot)
        settings = app.query_one("#settings")
        bar, repaints = settings.vertical_scrollbar, []
        refresh = bar.refresh
        bar.refresh = lambda *a, **k: (repaints.append(1), refresh(*a, **k))[1]
        await pilot.press("f2")
        await pilot.pause()
        assert app.screen.focused is settings
        assert repaints == []  # restyling it set every rule again, and that repaints its scrollbar
        app.stylesheet.add_source("SettingsList:focus { background: red; }", read_from=("test", "focus rule"))
        app.refresh_css(animate=False)
        await pilot.pause()
        backgrounds = []
        for key in ("f3", "f2"):
            await pilot.press(key)
            await pilot.pause()
            backgrounds.append(settings.styles.background == Color.parse("red"))
        assert backgrounds == [False, True]  # a rule that styles it by its focus is followed


async def test_the_footer_follows_the_tab_in_its_keys_without_a_layout_of_the_screen(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        footer = app.query_one(KeyFooter)
        await pilot.press("f2", "f3")
        await pilot.pause()
        layouts, footer_layouts = [], []
        refresh_layout, refresh = app.screen._refresh_layout, footer.refresh
        app.screen._refresh_layout = lambda *a, **k: (layouts.append(1), refresh_layout(*a, **k))
        footer.refresh = lambda *a, layout=False, **k: (footer_layouts.append(layout), refresh(*a, layout=layout, **k))
        for key in ("f2", "f3") * 3:
            layouts.clear()
            await pilot.press(key)
            await pilot.pause()
            assert ("Load YAML" in described(footer), "Start" in described(footer)) == (key == "f2", key == "f3")
            assert len(layouts) == 1, key  # the tab's; the footer's new keys are a repaint of its line
        assert footer_layouts and not any(footer_layouts)


async def test_a_footer_key_is_pressed_by_a_click(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2", "f3")
        await pilot.pause()
        footer = app.query_one(KeyFooter)
        start, end, key = next(span for span in footer.spans if span[2].description == "Start")
        assert footer.key_at(start) == footer.key_at(end - 1) == key and key.action == "start"
        assert footer.key_at(end) != key
        await pilot.click(KeyFooter, offset=(start + 1, 0))
        await wait_for(pilot, lambda: app.train_tab.state == "completed", "the run the key started")


async def test_keys_that_do_not_fit_scroll_into_sight(app_factory):
    app = app_factory()
    async with app.run_test(size=(40, 12)) as pilot:
        await pilot.press("f2")
        await pilot.pause()
        footer = app.query_one(KeyFooter)
        last = [k for k in footer.keys if not k.palette][-1]
        assert last not in [k for _, _, k in footer.spans] and footer.key_at(30).palette
        for _ in range(10):  # the wheel turned over the footer
            footer.post_message(events.MouseScrollDown(footer, 5, 0, 0, 1, 0, False, False, False))
            await pilot.pause()
        assert last in [k for _, _, k in footer.spans] and footer.scrolled > 0


async def test_the_monitor_draws_only_while_it_shows(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3", "s")
        await wait_for(pilot, lambda: app.train_tab.state == "completed", "the run to complete")
        monitor = app.monitor_tab
        monitor.redraw()  # what its timer does: nothing while the Train tab shows
        assert monitor.history is not None and monitor._drawn_version == -1
        assert str(app.query_one("#figures", Static).render()) == ""
        await pilot.press("f4")  # drawn as it shows, not on the timer's next tick
        await wait_for(pilot, lambda: monitor._drawn_version == monitor.history.version, "the redraw")
        assert "update 40/40" in str(app.query_one("#figures", Static).render())


async def test_the_app_freezes_its_widgets_once_mounted_and_a_run_s_objects_until_it_quits(app_factory, factory):
    app = app_factory(factory)
    assert gc.get_freeze_count() == 0
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.config_tab.fields_mounted and app.monitor_tab.query("MetricPlot"),
                       "the tabs' deferred parts")
        await wait_for(pilot, lambda: gc.get_freeze_count() > 0, "the app's widgets frozen")
        frozen = gc.get_freeze_count()
        fields = list(app.config_tab.query("SettingField"))
        collected = {id(o) for o in gc.get_objects()}  # what the full passes walk (frozen objects are not)
        assert len(fields) > 20 and not any(id(f) in collected for f in fields)
        await pilot.press("f3", "s")
        await wait_for(pilot, lambda: gc.get_freeze_count() > frozen, "the run's objects frozen")
    assert gc.get_freeze_count() == 0  # collectable again once it has quit


async def test_full_garbage_passes_wait_for_an_idle_app_which_gives_them_back_as_it_quits(app_factory):
    app = app_factory()
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    async with app.run_test(size=SIZE) as pilot:
        assert gc.get_threshold()[2] == collector.NEVER  # Python runs none of its own meanwhile
        assert sys.getswitchinterval() == SWITCH_SECONDS  # a frame's writer thread waits less
        seen = app.collector.last_input
        await pilot.press("f2")
        assert app.collector.last_input > seen
    assert gc.get_threshold() == thresholds and sys.getswitchinterval() == interval


async def test_no_garbage_pass_runs_between_a_key_and_its_frame(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await pilot.pause()
        seen = []  # whether Python's collector may run: as the key's action runs, and as each frame goes out
        show_tab, display = app.action_show_tab, app._display
        app.action_show_tab = lambda tab: (seen.append(("action", gc.isenabled())), show_tab(tab))
        app._display = lambda screen, update: (seen.append(("frame", gc.isenabled())), display(screen, update))
        await pilot.press("f3")
        await wait_for(pilot, lambda: len(seen) >= 2 and gc.isenabled(), "the key's frame, and the passes let go")
        assert seen[:2] == [("action", False), ("frame", False)]


async def test_a_key_s_frame_does_not_wait_for_the_update_timer(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await pilot.pause()
        timer, frames, resumed = app.screen._update_timer, [], []  # frames drawn when the timer was resumed
        resume, display = timer.resume, app._display
        timer.resume = lambda: (resumed.append(len(frames)), resume())[1]
        app._display = lambda screen, update: (frames.append(update), display(screen, update))[1]
        await pilot.press("f3")
        await wait_for(pilot, lambda: frames, "the key's frame")
        assert all(n >= 1 for n in resumed)  # the first frame came before the timer was asked for one


@pytest.mark.parametrize("key, tab, footer_key", [("f2", "config", "Load YAML"), ("f3", "train", "Start")])
async def test_a_tab_switch_s_first_frame_has_the_tab_s_keys_and_underline(app_factory, key, tab, footer_key):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await each_tab_seen(app, pilot, last="f3" if key == "f2" else "f2")
        screen, footer, underline = app.screen, app.query_one(KeyFooter), app.query_one(Underline)
        frames = []  # per frame: the widgets it repainted, the footer's keys, the underline's place
        refresh = screen._compositor_refresh

        def drawing():
            frames.append(({type(w).__name__ for w in screen._dirty_widgets}, described(footer),
                           (underline.highlight_start, underline.highlight_end)))
            return refresh()

        screen._compositor_refresh = drawing
        await pilot.press(key)
        await pilot.pause(0.3)  # the frames a switch makes come within a few milliseconds
        label = app.query_one(f"#--content-tab-{tab}")
        span = label.virtual_region.shrink(label.styles.gutter).column_span
        repainted, keys, place = frames[0]
        assert {"KeyFooter", "Underline"} <= repainted  # Textual repainted both one frame later
        assert footer_key in keys and place == span
        assert not any({"KeyFooter", "Underline"} & repainted for repainted, _, _ in frames[1:])
        if tab == "config":
            assert len(frames) == 1


async def test_widgets_hear_that_they_show_hide_or_resized_after_the_key_s_frame(app_factory, monkeypatch):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await each_tab_seen(app, pilot)
        told = []  # in order: ("frame", None, None), or (event, widget, size) as posted
        post, display = Widget.post_message, app._display

        def posting(widget, message):
            if isinstance(message, (events.Show, events.Hide, events.Resize)):
                told.append((type(message).__name__, widget, getattr(message, "size", None)))
            return post(widget, message)

        monkeypatch.setattr(Widget, "post_message", posting)
        settings, start = app.query_one("#settings"), app.query_one("#start")
        frame = lambda: ("frame", settings in app.screen._compositor.visible_widgets, None)  # noqa: E731
        app._display = lambda screen, update: (told.append(frame()), display(screen, update))[1]
        await pilot.press("f2")
        await pilot.pause(0.3)
        first = told.index(("frame", True, None))  # the first frame that shows the Config tab
        assert all(event == "frame" for event, _, _ in told[:first])  # Textual posted some 330 events first
        shown = {widget for event, widget, _ in told if event == "Show"}
        assert settings in shown and start not in shown
        assert start in {widget for event, widget, _ in told if event == "Hide"}
        assert ("Resize", settings, settings.size) in told  # as Textual sends it, with the size it has


async def test_the_footer_draws_each_tab_s_keys_once(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await each_tab_seen(app, pilot)
        footer = app.query_one(KeyFooter)
        drawn, render = [], footer.render
        footer.render = lambda: (drawn.append(described(footer)), render())[1]
        for key, description in (("f2", "Load YAML"), ("f3", "Start")) * 2:
            await pilot.press(key)
            await pilot.pause()
            assert description in footer.render_line(0).text  # the kept line, on screen again
            assert description in {k.description for _, _, k in footer.spans}  # and its keys to click
        assert drawn == []
        footer.styles.background = "red"  # an inline style: Textual tells the widget of no style update
        await pilot.pause()
        assert list(footer.render_line(0))[-1].style.bgcolor.triplet == (255, 0, 0) and len(drawn) == 1
        app.theme = "textual-light" if app.theme != "textual-light" else "textual-dark"
        await pilot.pause(0.3)
        footer.render_line(0)
        assert len(drawn) == 2  # a new theme draws it again


async def test_a_repaint_in_a_hidden_tab_arranges_nothing(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await each_tab_seen(app, pilot, last="f2")
        compositor = app.screen._compositor
        arranged, arrange = [], compositor._arrange_root
        compositor._arrange_root = lambda *a, **k: (arranged.append(1), arrange(*a, **k))[1]
        app.query_one("#start").refresh()  # the Train tab's, hidden behind the Config tab
        app.query_one("#settings").refresh()  # and one on screen, so a frame is drawn
        await pilot.pause(0.3)
        assert arranged == []  # Textual took the hidden button for a new widget and arranged them all


async def test_a_tab_switch_moves_the_underline_at_once(app_factory, monkeypatch):
    monkeypatch.delenv("TEXTUAL_ANIMATIONS", raising=False)
    slides = []
    monkeypatch.setattr(Underline, "animate", lambda self, attribute, *args, **kwargs: slides.append(attribute))
    app = app_factory(as_started=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await pilot.pause(0.1)  # the slide would start 0.02 s after the switch
        tab = app.query_one("#--content-tab-train")
        start, end = tab.virtual_region.shrink(tab.styles.gutter).column_span
        underline = app.query_one(Underline)
        assert (underline.highlight_start, underline.highlight_end) == (start, end) and slides == []


def test_animations_are_the_user_s_to_turn_on(app_factory, monkeypatch):
    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "full")
    assert app_factory(as_started=True).animation_level == "full"

"""The one-line footer of key hints (widgets/key_footer.py) on a small app of its own: what Textual's Footer
shows and does, drawn as text."""

from __future__ import annotations

from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Static

from farense_tui.widgets.key_footer import KeyFooter


class Keys(App):
    BINDINGS = [Binding("a", "add", "Add", tooltip="Add one"), Binding("b", "add", "Also add"),
                Binding("d", "drop", "Drop"), Binding("z", "hidden", "Hidden", show=False)]

    def __init__(self) -> None:
        super().__init__()
        self.added, self.bells = 0, 0

    def compose(self) -> ComposeResult:
        yield Static("keys")
        yield KeyFooter()

    def action_add(self) -> None:
        self.added += 1

    def check_action(self, action: str, parameters) -> bool | None:
        return None if action == "drop" else True  # shown, disabled

    def bell(self) -> None:
        self.bells += 1


async def test_one_key_per_action_the_hidden_left_out_the_palette_last():
    app = Keys()
    async with app.run_test(size=(60, 5)) as pilot:
        await pilot.pause()
        footer = app.query_one(KeyFooter)
        shown = [(k.display, k.description, k.enabled, k.palette) for k in footer.keys]
        assert shown[:2] == [("a", "Add", True, False), ("d", "Drop", False, False)]
        assert shown[-1][1:] == ("palette", True, True) and len(shown) == 3
        line = str(footer.render())
        assert line.startswith("a Add d Drop ") and line.endswith("▏^p palette ") and len(line) == 60


async def test_a_click_presses_the_key_a_disabled_one_rings_the_bell():
    app = Keys()
    async with app.run_test(size=(60, 5)) as pilot:
        await pilot.pause()
        footer = app.query_one(KeyFooter)
        await pilot.click(KeyFooter, offset=(2, 0))  # on "Add"
        await pilot.click(KeyFooter, offset=(7, 0))  # on "Drop"
        await pilot.click(KeyFooter, offset=(5, 0))  # between them
        await pilot.pause()
        assert (app.added, app.bells) == (1, 1) and footer.key_at(5) is None


async def test_the_key_under_the_pointer_is_lit_and_gives_its_tooltip():
    app = Keys()
    async with app.run_test(size=(60, 5)) as pilot:
        await pilot.pause()
        footer = app.query_one(KeyFooter)
        plain = footer.render().spans
        await pilot.hover(KeyFooter, offset=(1, 0))
        assert footer.hovered.description == "Add" and footer.tooltip == "Add one"
        assert footer.render().spans != plain
        await pilot.hover(KeyFooter, offset=(8, 0))
        assert footer.hovered.description == "Drop" and footer.tooltip is None


async def test_after_a_wheel_turn_a_click_still_presses_the_key_under_it():
    app = Keys()
    async with app.run_test(size=(60, 5)) as pilot:
        await pilot.pause()
        footer = app.query_one(KeyFooter)
        footer.post_message(events.MouseScrollDown(footer, 5, 0, 0, 1, 0, False, False, False))
        await pilot.pause()  # all the keys fit: nothing scrolls, the keys stay where they were drawn
        assert footer.scrolled == 0 and footer.key_at(2).description == "Add"
        await pilot.click(KeyFooter, offset=(2, 0))
        await pilot.pause()
        assert app.added == 1

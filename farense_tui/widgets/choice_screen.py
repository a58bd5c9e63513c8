"""A question with a few answers, each a button and a key: asked before the app quits while a run
trains, before a config file is overwritten, before unsaved settings are lost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


@dataclass(frozen=True)
class Choice:
    key: str      # the key that picks it ("s")
    label: str    # its button ("Stop")
    answer: str   # what the screen is dismissed with ("stop")
    variant: str = "default"


CANCEL = Choice("escape", "Cancel", "cancel")


class ChoiceScreen(ModalScreen[str]):
    """Dismissed with the answer of the choice picked (escape: "cancel")."""

    DEFAULT_CSS = """
    ChoiceScreen { align: center middle; }
    ChoiceScreen > Vertical {
        width: 76; max-width: 100%; height: auto; max-height: 100%; border: thick $warning; background: $surface;
        padding: 1 2;
    }
    ChoiceScreen .title { text-style: bold; }
    ChoiceScreen Label { width: 100%; margin-bottom: 1; }
    ChoiceScreen Horizontal { height: auto; }
    ChoiceScreen Button { margin-right: 1; }
    """

    def __init__(self, title: str, text: str, choices: list[Choice]) -> None:
        super().__init__()
        self.title_text, self.text, self.choices = title, text, [*choices, CANCEL]
        for choice in self.choices:
            self._bindings.bind(choice.key, f"choose('{choice.answer}')", choice.label)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, classes="title")
            yield Label(self.text)
            with Horizontal():
                for choice in self.choices:
                    key = "esc" if choice.key == "escape" else choice.key
                    yield Button(f"{choice.label} ({key})", id=f"choice-{choice.answer}", variant=choice.variant)

    def action_choose(self, answer: str) -> None:
        self.answer(answer)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.answer(event.button.id.removeprefix("choice-"))

    def answer(self, answer: Optional[str]) -> None:
        """Dismiss with this answer, once (the app answers for the user when the question is moot; a click
        already queued must not dismiss the screen beneath)."""
        if self.is_current:
            self.dismiss(answer)

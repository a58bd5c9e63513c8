"""The chat transcript. A reply's box is mounted on its first token and its text replaced as
tokens stream in; the view follows the bottom only if the reader is already there."""

from __future__ import annotations

from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static


class ChatMessage(Static):
    DEFAULT_CSS = """
    ChatMessage { padding: 0 1; margin: 0 0 1 0; height: auto; border: round $panel-lighten-2; }
    ChatMessage.user { border: round $primary; margin-right: 8; }
    ChatMessage.reply { border: round $success; margin-left: 4; }
    ChatMessage.reply.-streaming { border: round $warning; }
    ChatMessage.reply.-failed { border: round $error; }
    ChatMessage.note { border: none; color: $text-muted; margin: 0; }
    """

    def __init__(self, content: str = "", **kwargs) -> None:
        # what the user typed and what the model wrote, shown as written: "[/" in a reply is no markup
        super().__init__(content, markup=False, **kwargs)


class CompareRow(Horizontal):
    """Two replies to one prompt side by side: the base model and base + adapter."""

    DEFAULT_CSS = """
    CompareRow { height: auto; }
    CompareRow > ChatMessage.reply { width: 1fr; margin-left: 0; margin-right: 1; }
    """


class ChatLog(VerticalScroll):
    DEFAULT_CSS = """
    ChatLog { height: 1fr; border: round $panel-lighten-2; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._replies: dict[str, ChatMessage] = {}
        self._slots: dict[str, tuple[CompareRow, str]] = {}  # compare reply id -> (row, title)

    @property
    def at_bottom(self) -> bool:
        return self.scroll_y >= self.max_scroll_y - 1

    def _mount_following(self, widget, parent=None) -> None:
        follow = self.at_bottom
        (parent or self).mount(widget)
        if follow:
            self.call_after_refresh(self.scroll_end, animate=False)

    def add_user(self, text: str) -> None:
        message = ChatMessage(text, classes="user")
        message.border_title = "you"
        self._mount_following(message)

    def add_note(self, text: str) -> None:
        self._mount_following(ChatMessage(text, classes="note"))

    def expect_compare(self, slots: list[tuple[str, str]]) -> None:
        """A row whose replies (reply id, title) are mounted side by side as they start."""
        row = CompareRow()
        self._mount_following(row)
        for reply_id, title in slots:
            self._slots[reply_id] = (row, title)

    def update_reply(self, reply_id: str, text: str, title: str = "assistant") -> None:
        """The reply so far; the first call mounts its box."""
        follow = self.at_bottom
        box = self._replies.get(reply_id)
        if box is None:
            row, title = self._slots.pop(reply_id, (None, title))
            box = ChatMessage(text, classes="reply -streaming")
            box.border_title = title
            self._replies[reply_id] = box
            (row or self).mount(box)
        else:
            box.update(text)
        if follow:
            self.call_after_refresh(self.scroll_end, animate=False)

    def finish_reply(self, reply_id: str, text: str, subtitle: str, *, title: str = "assistant",
                     failed: bool = False) -> None:
        """The reply's final text and a subtitle (its figures); the box stays as it is from now on."""
        self.update_reply(reply_id, text, title)
        box = self._replies.pop(reply_id)
        box.remove_class("-streaming")
        box.set_class(failed, "-failed")
        box.border_subtitle = subtitle

    def clear_log(self) -> None:
        self._replies.clear()
        self._slots.clear()
        self.remove_children()

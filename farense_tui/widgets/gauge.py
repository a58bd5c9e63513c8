"""A one-line gauge: label, bar, and "used / total"."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

LEVELS = ("ok", "warn", "danger")


class Gauge(Widget):
    """``update(value, total, text, level)``; the level (ok, warn, danger) colours the bar."""

    COMPONENT_CLASSES = {"gauge--label", "gauge--bar", "gauge--empty", "gauge--text"}

    DEFAULT_CSS = """
    Gauge { height: 1; width: 1fr; }
    Gauge > .gauge--label { color: $text-muted; }
    Gauge > .gauge--bar { color: $success; }
    Gauge.-warn > .gauge--bar { color: $warning; }
    Gauge.-danger > .gauge--bar { color: $error; }
    Gauge.-danger > .gauge--text { color: $error; text-style: bold; }
    Gauge > .gauge--empty { color: $foreground 15%; }
    """

    value: reactive[float] = reactive(0.0)
    total: reactive[float] = reactive(0.0)
    text: reactive[str] = reactive("-")

    def __init__(self, label: str, *, label_width: int = 14, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        self.label_width = label_width

    def update(self, value: float, total: float, text: str, level: str = "ok") -> None:
        self.value, self.total, self.text = value, total, text
        for name in LEVELS:
            self.set_class(name == level and name != "ok", f"-{name}")

    def render(self) -> Text:
        label = self.label.ljust(self.label_width)[: self.label_width]
        text = f" {self.text}"
        width = max(0, self.size.width - len(label) - len(text))
        share = min(1.0, max(0.0, self.value / self.total)) if self.total > 0 else 0.0
        filled = round(share * width)
        return Text.assemble(
            (label, self.get_component_rich_style("gauge--label")),
            ("█" * filled, self.get_component_rich_style("gauge--bar")),
            ("░" * (width - filled), self.get_component_rich_style("gauge--empty")),
            (text, self.get_component_rich_style("gauge--text")),
        )

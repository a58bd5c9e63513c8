"""What the loaded model knows: the evaluation's scores and every wrong answer, on one screen."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static


def summary_lines(report: dict) -> list[str]:
    """One line per probe and system: facts and exact shares, then the shares per kind."""
    lines = []
    for probe in report.get("probes", []):
        for system, result in probe["systems"].items():
            overall = result["all"]
            lines.append(f"{probe['probe']} ({system}): {overall['facts']:.1%} with every fact right, "
                         f"{overall['exact']:.1%} word for word, of {probe['n']} questions from {probe['source']}")
            kinds = result.get("by_kind", {})
            if len(kinds) > 1:
                lines.append("  by kind: " + ", ".join(f"{k} {v['facts']:.0%} of {v['n']}" for k, v in kinds.items()))
    return lines


def wrong_answers(report: dict) -> Text:
    text = Text()
    for probe in report.get("probes", []):
        for system, result in probe["systems"].items():
            for w in result.get("wrong", []):
                text.append(f"Q: {w['question']}\n", style="bold")
                text.append(f"expected: {w['expected']}\n", style="green")
                text.append(f"got:      {' '.join(w['got'].split())}\n", style="red")  # one paragraph
                why = "; ".join(f"{label}: {', '.join(items)}" for label, items in
                                (("missing", w.get("missing", [])), ("contradicted", w.get("contradicted", [])))
                                if items)
                if why:
                    text.append(f"({why})\n", style="dim")
                text.append("\n")
    return text or Text("No wrong answers.", style="bold green")


class EvalReportScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "dismiss", "Close", show=True)]

    DEFAULT_CSS = """
    EvalReportScreen { align: center middle; }
    EvalReportScreen > Vertical {
        width: 95%; height: 90%; border: thick $primary; background: $surface; padding: 0 1;
    }
    EvalReportScreen .title { text-style: bold; padding-bottom: 1; }
    EvalReportScreen #eval-summary { height: auto; padding-bottom: 1; }
    EvalReportScreen VerticalScroll { height: 1fr; }
    EvalReportScreen .hint { color: $text-muted; }
    """

    def __init__(self, report: dict, path: str = "") -> None:
        super().__init__()
        self.report = report
        self.path = path

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("What the model knows: its greedy answers to the training questions", classes="title")
            yield Static("\n".join(summary_lines(self.report)), id="eval-summary")
            with VerticalScroll():
                yield Static(wrong_answers(self.report), id="eval-wrong")
            saved = f"Saved in {self.path}. " if self.path else ""
            yield Label(f"{saved}Escape closes. 'farense-tui eval' asks paraphrases and held-out facts too.",
                        classes="hint")

"""The engine's event log: one readable line per event, errors whole."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from farense_core import protocol as P

from ..format import duration, size
from ..runs import format_loss


def describe(event: P.Record) -> Text | None:
    """One line for an event, or None for events the log does not show."""
    if isinstance(event, P.Hello):
        return Text(f"engine {event.engine_version} · mlx {event.mlx_version} · mlx-lm {event.mlx_lm_version} "
                    f"· {event.device} · BLAS {event.blas}", style="dim")
    if isinstance(event, P.Config):
        what = f"resuming from {event.resumed_from}" if event.resumed_from else "new run"
        return Text(f"run {event.run_dir or '-'} ({what})", style="bold")
    if isinstance(event, P.Data):
        return Text(f"data: {event.format}, {event.train_samples} train / {event.valid_samples} valid samples, "
                    f"{event.updates_per_epoch} updates per epoch, {event.total_updates} in all, "
                    f"{event.truncated} truncated")
    if isinstance(event, P.Model):
        quant = f"{event.quantization['bits']}-bit" if event.quantization else event.base_dtype or "float"
        return Text(f"model: {event.path} ({quant}), {event.trainable_parameters:,} of {event.parameters:,} "
                    f"parameters trainable, loaded in {event.load_seconds:.1f} s")
    if isinstance(event, P.Step):
        return Text(f"update {event.step}/{event.total_steps}  loss {format_loss(event.loss)}  "
                    f"lr {event.learning_rate:.2e}  {event.tokens_per_second:.0f} tok/s  "
                    f"ETA {duration(event.eta)}")
    if isinstance(event, P.Eval):
        best = "  (best so far)" if event.is_best else ""
        return Text(f"update {event.step}  validation loss {format_loss(event.val_loss)}  "
                    f"best {format_loss(event.best_val_loss)}{best}", style="cyan")
    if isinstance(event, P.Recall):
        parts = ", ".join(f"{name} {value:.1%}" for name, value in
                          (("trained", event.trained), ("paraphrase", event.paraphrase)) if value is not None)
        best = "  (best so far)" if event.is_best else ""
        return Text(f"update {event.step}  recall {event.recall:.1%} ({parts})  token accuracy "
                    f"{event.token_accuracy:.1%}{best}", style="cyan")
    if isinstance(event, P.Advice):
        return Text(f"advice ({event.code}): {event.message}", style="bold yellow")
    if isinstance(event, P.Checkpoint):
        return Text(f"checkpoint ({event.reason}) at update {event.step}: {event.path}", style="green")
    if isinstance(event, P.MemoryEvent):
        return Text(f"memory: {event.action.replace('_', ' ')} at update {event.step}, "
                    f"{size(event.memory.system_available)} available", style="dim")
    if isinstance(event, P.Warning):
        return Text(f"warning: {event.message}", style="yellow")
    if isinstance(event, P.Error):
        text = Text(f"error: {event.message}", style="bold red")
        if event.traceback:
            text.append("\n" + event.traceback.rstrip(), style="red")
        return text
    if isinstance(event, P.State):
        if event.state == "idle":
            return None  # every job ends so; the done or error line already said how
        detail = f" ({event.detail})" if event.detail else ""
        return Text(f"engine {event.state}{detail}", style="dim")
    if isinstance(event, P.Done):
        summary = event.summary
        best, recall = summary.get("best_val_loss"), summary.get("best_recall")
        extra = f", best recall {recall:.1%}" if recall is not None else ""
        extra += f", best validation loss {format_loss(best)}" if best is not None else ""
        style = "bold green" if event.status in P.Done.FINISHED else "bold yellow"
        return Text(f"training {event.status}{extra}", style=style)
    if isinstance(event, P.Log):
        return Text(event.message, style="red" if event.level == "error" else "")
    return None


class EventLog(RichLog):
    DEFAULT_CSS = """
    EventLog { height: 1fr; border: round $panel-lighten-2; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=5000, min_width=20, wrap=True, markup=False, auto_scroll=True)
        self.border_title = "events"

    def add_event(self, event: P.Record) -> None:
        line = describe(event)
        if line is not None:
            self.write(line)

    def add_error(self, message: str) -> None:
        self.write(Text(message, style="bold red"))

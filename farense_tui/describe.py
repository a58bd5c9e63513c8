"""Events as lines for people: one source for the TUI's event log and the command-line tools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from farense_core import protocol as P

from farense_core.format import duration, size
from .runs import format_loss


@dataclass(frozen=True)
class Line:
    text: str
    style: str = ""  # a rich style for the TUI ("dim", "cyan", "bold red", ...); the CLI prints the text


def describe(event: P.Record) -> Optional[Line]:
    """One line for an event, or None for events not shown as a line (tokens, plain memory reports)."""
    if isinstance(event, P.Hello):
        return Line(f"engine {event.engine_version} · mlx {event.mlx_version} · mlx-lm {event.mlx_lm_version} "
                    f"· {event.device} · BLAS {event.blas}"
                    + (f" · {event.processes} processes training together" if event.processes > 1 else ""),
                    style="dim")
    if isinstance(event, P.Config):
        what = f"resuming from {event.resumed_from}" if event.resumed_from else "new run"
        return Line(f"run {event.run_dir or '-'} ({what})", style="bold")
    if isinstance(event, P.Data):
        return Line(f"data: {event.format}, {event.train_samples} train / {event.valid_samples} valid samples, "
                    f"{event.updates_per_epoch} updates per epoch, {event.total_updates} in all, "
                    f"{event.truncated} truncated")
    if isinstance(event, P.Model):
        quant = f"{event.quantization['bits']}-bit" if event.quantization else event.base_dtype or "float"
        return Line(f"model: {event.path} ({quant}), {event.trainable_parameters:,} of {event.parameters:,} "
                    f"parameters trainable, loaded in {event.load_seconds:.1f} s")
    if isinstance(event, P.Step):
        return Line(f"update {event.step}/{event.total_steps}  loss {format_loss(event.loss)}  "
                    f"lr {event.learning_rate:.2e}  {event.tokens_per_second:.0f} tok/s  "
                    f"ETA {duration(event.eta)}")
    if isinstance(event, P.Eval):
        best = "  (best so far)" if event.is_best else ""
        return Line(f"update {event.step}  validation loss {format_loss(event.val_loss)}  "
                    f"best {format_loss(event.best_val_loss)}{best}", style="cyan")
    if isinstance(event, P.Recall):
        parts = ", ".join(f"{name} {value:.1%}" for name, value in
                          (("trained", event.trained), ("paraphrase", event.paraphrase)) if value is not None)
        best = "  (best so far)" if event.is_best else ""
        return Line(f"update {event.step}  recall {event.recall:.1%} ({parts})  token accuracy "
                    f"{event.token_accuracy:.1%}{best}", style="cyan")
    if isinstance(event, P.Advice):
        return Line(f"advice ({event.code}): {event.message}", style="bold yellow")
    if isinstance(event, P.Checkpoint):
        return Line(f"checkpoint ({event.reason}) at update {event.step}: {event.path}", style="green")
    if isinstance(event, P.MemoryEvent):
        return Line(f"memory: {event.action.replace('_', ' ')} at update {event.step}, "
                    f"{size(event.memory.system_available)} available", style="dim")
    if isinstance(event, P.Warning):
        return Line(f"warning: {event.message}", style="yellow")
    if isinstance(event, P.Error):
        return Line(f"error: {event.message}" + (f"\n{event.traceback.rstrip()}" if event.traceback else ""),
                    style="bold red")
    if isinstance(event, P.State):
        if event.state == "idle":
            return None  # every job ends so; the done or error line already said how
        detail = f" ({event.detail})" if event.detail else ""
        return Line(f"engine {event.state}{detail}", style="dim")
    if isinstance(event, P.Done):
        summary = event.summary
        best, recall = summary.get("best_val_loss"), summary.get("best_recall")
        extra = f", best recall {recall:.1%}" if recall is not None else ""
        extra += f", best validation loss {format_loss(best)}" if best is not None else ""
        style = "bold green" if event.status in P.Done.FINISHED else "bold yellow"
        return Line(f"training {event.status}{extra}", style=style)
    if isinstance(event, P.Log):
        return Line(event.message, style="red" if event.level == "error" else "")
    return None

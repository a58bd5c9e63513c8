"""The Monitor tab: memory gauges, the current figures, a loss sparkline, plots of loss, recall
(what share of the probe's answers the model reproduces), learning rate and memory, and the
engine's latest advice. It draws a run's history on a timer (twice a second, only when something
changed and the tab shows; the app redraws it as it shows), whether the run is live or a past one
opened from its files. Other runs of the checkpoints folder can be picked (ctrl+r) to draw their loss over it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static, TabPane

from farense_core.format import duration, size
from ..runs import GB, RunError, RunHistory, Snapshot, format_loss, list_runs, load_run
from ..widgets.deferred import mount_after_first_frame
from ..widgets.gauge import Gauge
from ..widgets.metric_plot import Line, MetricPlot
from ..widgets.run_picker import RunPickerScreen
from ..widgets.sparkline import LossSparkline
from ..session import Session

REDRAW_SECONDS = 0.5
LOSS_LINES = [Line("loss", "train", "cyan"), Line("val_loss", "validation", "orange", "dot")]
OVERLAY_COLORS = ("green", "magenta", "yellow", "red", "blue", "white")  # one run each: at most this many


def available_level(available: int, guard_gb: float) -> str:
    """danger under the memory guard's threshold, warn when near it (within max(guard, 1 GB))."""
    if guard_gb <= 0:
        return "ok"
    gb = available / GB
    if gb <= guard_gb:
        return "danger"
    return "warn" if gb <= guard_gb + max(guard_gb, 1.0) else "ok"


class MonitorTab(TabPane):
    BINDINGS = [
        Binding("ctrl+o", "open_run", "Open run"),
        Binding("ctrl+l", "follow_live", "Live run"),
        Binding("ctrl+r", "overlay_runs", "Overlay runs"),
    ]

    DEFAULT_CSS = """
    MonitorTab #monitor-top { height: 7; }
    MonitorTab #gauges { width: 1fr; padding-right: 2; }
    MonitorTab #figures-box { width: 1fr; }
    MonitorTab #figures { height: 5; }
    MonitorTab #plots { grid-size: 2 2; grid-gutter: 0 1; height: 1fr; }
    MonitorTab #open-row { height: 3; }
    MonitorTab #open-row Label { padding: 1 1 0 0; }
    MonitorTab #run-path { width: 1fr; }
    MonitorTab #open-row Button { margin-left: 1; min-width: 10; }
    MonitorTab #monitor-source { color: $text-muted; height: 1; }
    MonitorTab #advice { color: $warning; height: auto; display: none; }
    MonitorTab #advice.-shown { display: block; }
    """

    def __init__(self, session: Session) -> None:
        super().__init__(session.title("monitor"), id="monitor")
        self.session = session
        self.history: Optional[RunHistory] = None
        self.live: Optional[RunHistory] = None
        self.following_live = True
        self._drawn_version = -1
        self.overlays: dict[Path, RunHistory] = {}  # other runs whose loss is drawn over this one's
        self._overlays_version = 0
        self._drawn_overlays = 0

    def compose(self) -> ComposeResult:
        yield Static(self._no_run_text(), id="monitor-source")
        yield Static("", id="advice")
        with Horizontal(id="monitor-top"):
            with Vertical(id="gauges"):
                yield Gauge("MLX active", id="g-active")
                yield Gauge("MLX cache", id="g-cache")
                yield Gauge("MLX peak", id="g-peak")
                yield Gauge("process RSS", id="g-rss")
                yield Gauge("available", id="g-available")
            with Vertical(id="figures-box"):
                yield Static("", id="figures")
                yield LossSparkline()
        yield Grid(id="plots")
        with Horizontal(id="open-row"):
            yield Label("Open a run:")
            yield Input(placeholder="run folder or events.jsonl, then enter", id="run-path")
            yield Button("Open", id="open")
            yield Button("Live", id="live")

    def _no_run_text(self) -> str:
        return f"No run yet: start one in the {self.session.tab('train')}, or open a past run below."

    def _plots(self) -> list[MetricPlot]:
        return [
            MetricPlot("loss", list(LOSS_LINES), id="plot-loss"),
            MetricPlot("recall (share of answers)", [Line("recall_trained", "trained", "green"),
                                                     Line("recall_paraphrase", "paraphrase", "yellow"),
                                                     Line("token_accuracy", "tokens", "cyan", "dot")],
                       id="plot-recall", waiting_for="the first validation (steps_per_eval)"),
            MetricPlot("learning rate", [Line("learning_rate", "lr", "magenta")], id="plot-lr"),
            MetricPlot("memory (GB)", [Line("mlx_active", "MLX active", "blue"), Line("mlx_peak", "MLX peak", "red"),
                                       Line("rss", "RSS", "yellow")], id="plot-memory"),
        ]

    def on_mount(self) -> None:
        # the plots mount after the first frame; a redraw draws them from then on
        mount_after_first_frame(self.query_one("#plots", Grid), self._plots(), then=self._plots_mounted)
        self.set_interval(REDRAW_SECONDS, self.redraw, name="monitor-redraw")

    def _plots_mounted(self) -> None:
        self._drawn_version = -1
        self._set_loss_lines()

    # -- which run is shown

    def follow(self, history: RunHistory) -> None:
        """A live run started; show it unless a past run is open."""
        self.live = history
        if self.following_live:
            self.show(history)

    def show(self, history: RunHistory) -> None:
        self.history = history
        self._drawn_version = -1
        self.redraw()

    def action_follow_live(self) -> None:
        self.following_live = True
        if self.live is None:
            self.app.notify(f"No run is live; start one in the {self.session.tab('train')}.", severity="warning")
            return
        self.show(self.live)

    def action_open_run(self) -> None:
        path = self.query_one("#run-path", Input).value.strip()
        if not path:
            self.query_one("#run-path", Input).focus()
            return
        self.open(path)

    def open(self, path: str) -> None:
        self.query_one("#run-path", Input).value = path
        self.run_worker(self._open(path), exclusive=True, group="open-run", exit_on_error=False,
                        description=f"Opening {path}")

    async def _open(self, path: str) -> None:
        try:
            history, bad = await asyncio.to_thread(load_run, path)
        except RunError as e:
            self.app.notify(str(e), title="Run not opened", severity="error")
            return
        self.following_live = False
        self.show(history)
        if bad:
            self.app.notify(f"{bad} lines of {history.source} could not be read and were skipped.",
                            severity="warning")

    # -- other runs drawn over it

    def action_overlay_runs(self) -> None:
        self.run_worker(self._pick_overlays(), exclusive=True, group="overlay-runs", exit_on_error=False,
                        description="Picking runs to overlay")

    async def _pick_overlays(self) -> None:
        shown = Path(self.history.run_dir).resolve() if self.history is not None and self.history.run_dir else None
        runs = [r for r in await asyncio.to_thread(list_runs, self.session.checkpoints_dir)
                if r.path.resolve() != shown]
        if not runs:
            self.app.notify(f"{self.session.checkpoints_dir} holds no other run to draw over this one; train one "
                            f"in the {self.session.tab('train')} first.", severity="warning")
            return
        picked = await self.app.push_screen_wait(RunPickerScreen(
            f"Runs to draw over the loss plot (at most {len(OVERLAY_COLORS)})", runs, set(self.overlays)))
        if picked is None:
            return
        if len(picked) > len(OVERLAY_COLORS):
            self.app.notify(f"{len(picked)} runs picked; the loss plot shows the first {len(OVERLAY_COLORS)}.",
                            severity="warning")
        overlays = {}
        for path in picked[:len(OVERLAY_COLORS)]:
            try:
                overlays[path] = self.overlays.get(path) or (await asyncio.to_thread(load_run, path))[0]
            except RunError as e:
                self.app.notify(str(e), title="Run not overlaid", severity="error")
        self.overlays = overlays
        self._overlays_version += 1
        self._set_loss_lines()
        self.redraw()

    def _set_loss_lines(self) -> None:
        for plot in self.query("#plot-loss").results(MetricPlot):
            # the other runs first, so the shown run's lines are drawn over theirs
            plot.lines = [Line(f"overlay:{path}", path.name, color)
                          for path, color in zip(self.overlays, OVERLAY_COLORS)] + LOSS_LINES

    def _overlay_series(self) -> dict:
        return {f"overlay:{path}": history.snapshot().series["loss"] for path, history in self.overlays.items()}

    @on(Input.Submitted, "#run-path")
    def _path_submitted(self) -> None:
        self.action_open_run()

    @on(Button.Pressed, "#open")
    def _open_pressed(self) -> None:
        self.action_open_run()

    @on(Button.Pressed, "#live")
    def _live_pressed(self) -> None:
        self.action_follow_live()

    # -- drawing (on the timer)

    def redraw(self) -> None:
        if not self.display:  # behind another tab: no layout of the whole screen per update for nothing
            return
        snap = self.history.snapshot() if self.history is not None else None
        version = snap.version if snap is not None else -1
        if version == self._drawn_version and self._overlays_version == self._drawn_overlays:
            return
        self._drawn_version, self._drawn_overlays = version, self._overlays_version
        self._draw_source(snap)
        series = dict(snap.series) if snap is not None else {}
        if snap is not None:
            self._draw_advice(snap)
            self._draw_gauges(snap)
            self._draw_figures(snap)
            self.query_one(LossSparkline).show(snap.series["loss"][1])
        series.update(self._overlay_series())
        for plot in self.query(MetricPlot):
            plot.replot(series)

    def _draw_source(self, snap: Optional[Snapshot]) -> None:
        text = "" if snap is not None or self.overlays else self._no_run_text()
        if snap is not None:
            what = "live" if self.history is self.live else "opened"
            status = snap.done.status if snap.done else snap.state
            text = f"{what}: {snap.run_dir or self.history.source} · {status}"
        if self.overlays:
            text += (" · " if text else "") + "overlaid: " + ", ".join(p.name for p in self.overlays)
        self.query_one("#monitor-source", Static).update(text)

    def _draw_advice(self, snap: Snapshot) -> None:
        widget = self.query_one("#advice", Static)
        last = snap.advice[-1] if snap.advice else None
        widget.set_class(last is not None, "-shown")
        widget.update(f"advice at update {last.step} ({last.code}): {last.message}" if last else "")

    def _draw_gauges(self, snap: Snapshot) -> None:
        m = snap.memory
        if m is None:
            return
        total = m.system_total or max(m.mlx_peak, m.rss, 1)
        for gauge_id, value in (("g-active", m.mlx_active), ("g-cache", m.mlx_cache), ("g-rss", m.rss)):
            self.query_one(f"#{gauge_id}", Gauge).update(value, total, size(value))
        peak_level = "warn" if m.system_total and m.mlx_peak > 0.8 * m.system_total else "ok"
        self.query_one("#g-peak", Gauge).update(m.mlx_peak, total, size(m.mlx_peak), peak_level)
        available = f"{size(m.system_available)} of {size(m.system_total)}"
        self.query_one("#g-available", Gauge).update(
            m.system_available, total, available, available_level(m.system_available, snap.guard_gb)
        )

    def _draw_figures(self, snap: Snapshot) -> None:
        s = snap.last_step
        if s is None:
            self.query_one("#figures", Static).update(f"state: {snap.state}\nwaiting for the first update")
            return
        best = format_loss(snap.best_val_loss)
        r = snap.last_recall
        recall = (f"recall {r.recall:.0%}" + "".join(f" · {name} {v:.0%}" for name, v in
                                                   (("trained", r.trained), ("paraphrase", r.paraphrase))
                                                   if v is not None) + f" · best {r.best_recall:.0%}\n") if r else ""
        self.query_one("#figures", Static).update(
            f"update {s.step}/{s.total_steps} · epoch {s.epoch} ({s.epoch_progress:.0%})\n"
            f"loss {format_loss(s.loss)} · best val loss {best} · last val {format_loss(snap.last_val_loss)}\n"
            f"{recall}"
            f"{s.tokens_per_second:.0f} tokens/s · {s.iterations_per_second:.2f} steps/s · "
            f"lr {s.learning_rate:.2e}\n"
            f"elapsed {duration(s.elapsed)} · ETA {duration(s.eta)} · "
            f"guard {snap.guard_gb:.2f} GB"
        )

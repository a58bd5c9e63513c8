"""The Preflight tab: runs preflight in the engine; checks and probe results appear as they finish;
one key applies the recommended config."""

from __future__ import annotations

from typing import Optional

import yaml
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, DataTable, Label, Static, TabPane

from farense_core import protocol as P

from ..messages import EngineEvent, EngineExited, RecommendedConfig
from farense_core.format import size
from ..session import Session

CHECK_COLUMNS = (("status", 6), ("category", 8), ("check", 13), ("detail", 44), ("fix", 33))  # fits 120 columns
STATUS_STYLE = {"pass": ("✔ pass", "bold green"), "warn": ("! warn", "bold yellow"), "fail": ("✘ fail", "bold red")}


class PreflightTab(TabPane):
    BINDINGS = [
        Binding("r", "run_preflight", "Run preflight"),
        Binding("p", "run_preflight(True)", "With probe"),
        Binding("a", "apply_recommended", "Apply recommended"),
    ]

    DEFAULT_CSS = """
    PreflightTab #preflight-bar { height: auto; }
    PreflightTab #preflight-bar Button { margin-right: 1; }
    PreflightTab #preflight-status { padding: 0 1; height: auto; }
    PreflightTab #preflight-status.-error { color: $error; }
    PreflightTab #checks { height: 2fr; }
    PreflightTab #preflight-lower { height: 1fr; }
    PreflightTab #probes { width: 1fr; }
    PreflightTab #recommended-box { width: 40; padding-left: 1; }
    PreflightTab .caption { text-style: bold; color: $accent; }
    """

    def __init__(self, session: Session) -> None:
        super().__init__(session.title("preflight"), id="preflight")
        self.session = session
        self.recommended: Optional[dict] = None
        self.report: dict = {}
        self.counts = {"pass": 0, "warn": 0, "fail": 0}

    def compose(self) -> ComposeResult:
        with Horizontal(id="preflight-bar"):
            yield Button("Run preflight (r)", id="run", variant="primary")
            yield Button("With probe (p)", id="run-probe")
            yield Button("Apply recommended (a)", id="apply", disabled=True)
        yield Static("Press r to check this machine, the data and the model.", id="preflight-status")
        table = DataTable(id="checks", cursor_type="row", zebra_stripes=True)
        for label, width in CHECK_COLUMNS:
            table.add_column(label, width=width)
        yield table
        with Horizontal(id="preflight-lower"):
            with Vertical(id="probes-box"):
                yield Label("Probe (real steps at candidate sizes)", classes="caption")
                probes = DataTable(id="probes", cursor_type="row")
                probes.add_columns("batch", "seq length", "peak memory", "tokens/s", "fits", "note")
                yield probes
            with VerticalScroll(id="recommended-box"):
                yield Label("Recommended config", classes="caption")
                yield Static("(after preflight)", id="recommended")

    # -- running

    def action_run_preflight(self, probe: bool = False) -> None:
        link = self.session.links["preflight"]
        if link.running:
            self.app.notify("Preflight is already running.", severity="warning")
            return
        cfg, _ = self.session.config.resolved()
        self.query_one("#checks", DataTable).clear()
        self.query_one("#probes", DataTable).clear()
        self.counts = dict.fromkeys(self.counts, 0)
        try:
            link.start()
        except OSError as e:
            self._status(f"The engine could not be started ({e.strerror or e}).", error=True)
            return
        link.send(P.Preflight(config=cfg if cfg is not None else self.session.settings(),
                              out=str(self.session.checkpoints_dir), probe=probe))
        self._status("Running preflight" + (" with a probe of real steps…" if probe else "…"))

    def action_apply_recommended(self) -> None:
        recommended = self.session.find_recommended()
        if recommended is None:
            self.app.notify("There is no recommended config yet; run preflight first (r).", severity="warning")
            return
        self.post_message(RecommendedConfig(recommended, apply=True))

    @on(Button.Pressed, "#run")
    def _run_pressed(self) -> None:
        self.action_run_preflight()

    @on(Button.Pressed, "#run-probe")
    def _probe_pressed(self) -> None:
        self.action_run_preflight(True)

    @on(Button.Pressed, "#apply")
    def _apply_pressed(self) -> None:
        self.action_apply_recommended()

    # -- engine events

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#preflight-status", Static)
        status.update(text)
        status.set_class(error, "-error")

    def on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        if isinstance(event, P.Check):
            label, style = STATUS_STYLE.get(event.status, (event.status, ""))
            self.counts[event.status] = self.counts.get(event.status, 0) + 1
            self.query_one("#checks", DataTable).add_row(
                Text(label, style=style), event.category, event.name, event.detail, Text(event.fix, style="italic"),
                height=None,  # long details and fixes wrap
            )
            self._status(self._summary("Checking…"))
        elif isinstance(event, P.ProbeResult):
            measured = event.measured
            fits = (Text("yes", style="green") if event.ok else Text("no", style="red")) if measured else (
                Text("no (predicted)", style="red") if event.over_memory else Text("not run", style="dim"))
            self.query_one("#probes", DataTable).add_row(
                str(event.batch_size), str(event.max_seq_length), size(event.peak_memory) if measured else "-",
                f"{event.tokens_per_second:.0f}" if measured else "-", fits, event.note,
            )
        elif isinstance(event, P.PreflightDone):
            self.recommended = dict(event.recommended)
            self.report = dict(event.report)
            self.query_one("#recommended", Static).update(self._describe_recommended())
            self.query_one("#apply", Button).disabled = False
            where = f" Report: {event.report_path}." if event.report_path else ""
            self._status(self._summary("Preflight finished.") + where)
            self.session.recommended = self.recommended
        elif isinstance(event, P.State) and event.state == "preflight" and event.detail:
            self._status(self._summary(f"Checking ({event.detail})…"))
        elif isinstance(event, P.Error):
            self._status(f"Preflight failed: {event.message}", error=True)
        elif isinstance(event, P.Warning):
            self.app.notify(event.message, title="Preflight", severity="warning")

    def on_engine_exited(self, message: EngineExited) -> None:
        if message.crashed:
            self._status(message.report, error=True)

    def _describe_recommended(self) -> str:
        """What the recommendation would change in the Config tab's current settings."""
        current, _ = self.session.config.resolved()
        changes = {k: v for k, v in self.recommended.items() if (current or {}).get(k) != v}
        if not changes:
            text = "The Config tab already holds the recommended settings."
        else:
            listing = yaml.safe_dump(changes, sort_keys=False, default_flow_style=False, width=36).strip()
            text = f"Changes to the current settings:\n{listing}\n\nPress a to apply them to the Config tab."
        how_long = next((c.get("detail", "") for c in self.report.get("checks", []) if c.get("category") == "time"), "")
        if how_long:
            text += f"\n\nHow long: {how_long}"
        reasons = self.report.get("recommendation", {}).get("reasons", [])
        if reasons:
            text += "\n\nWhy:\n" + "\n".join(f"• {r}" for r in reasons)
        return text

    def _summary(self, lead: str) -> str:
        c = self.counts
        return f"{lead} {c['pass']} passed, {c['warn']} warnings, {c['fail']} failed."

"""``farense-tui preflight [--config FILE] [--out DIR] [--json] [--probe]``: check and recommend, on the engine.

The checks run in the engine (the same stream the Preflight tab shows); this prints each as it
arrives, the probe's rows, the recommendation and where the two files went. ``--json`` prints
only the report, as JSON, when it is done. Exit 0 when no check failed, 1 when one did, 2 for a
config file that does not load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import textwrap
from typing import Optional, Sequence, TextIO

from farense_core import config as C
from farense_core import protocol as P
from farense_core.rundir import RUNS_FOLDER

from ..describe import describe
from ..engine_client import EngineGone, EngineProcess
from farense_core.format import size

COLOURS = {"pass": "32", "warn": "33", "fail": "31"}  # ANSI green, yellow, red
SHOWN_SETTINGS = ("model", "base_dtype", "batch_size", "grad_accumulation_steps", "max_seq_length",
                  "learning_rate", "epochs", "iters", "warmup_steps", "num_layers", "grad_checkpoint")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farense-tui preflight",
                                description="Check this machine, the data and the model; recommend a config.")
    p.add_argument("--config", help="YAML config to check (ours or an mlx_lm.lora -c file); defaults otherwise")
    p.add_argument("--out", default=RUNS_FOLDER,
                   help=f"folder for preflight_report.json and recommended_config.json (default: {RUNS_FOLDER})")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--probe", action="store_true",
                   help="measure real training steps at candidate batch sizes and lengths (takes a few minutes)")
    p.add_argument("--probe-seconds", type=float, default=120.0, metavar="S",
                   help="time budget for the probe's training steps (default 120); more measures larger settings")
    return p


class Table:
    """Checks and probe rows as aligned lines; status in colour on a terminal."""

    WIDTHS = (6, 10, 16)

    def __init__(self, out: TextIO, tty: bool):
        self.out, self.tty = out, tty
        self.width = shutil.get_terminal_size((120, 24)).columns if tty else 0
        self.header_done = False

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def _status(self, status: str) -> str:
        word = status.ljust(self.WIDTHS[0])
        return f"\033[{COLOURS.get(status, '0')}m{word}\033[0m" if self.tty else word

    def _wrapped(self, prefix_width: int, text: str) -> list[str]:
        if not self.width or self.width - prefix_width < 30:
            return [text]
        return textwrap.wrap(text, self.width - prefix_width) or [""]

    def check(self, ev: P.Check) -> None:
        if not self.header_done:
            self.line(f"{'STATUS'.ljust(self.WIDTHS[0])}  {'CATEGORY'.ljust(self.WIDTHS[1])}"
                      f"{'CHECK'.ljust(self.WIDTHS[2])}DETAIL")
            self.header_done = True
        indent = self.WIDTHS[0] + 2 + self.WIDTHS[1] + self.WIDTHS[2]
        detail = self._wrapped(indent, ev.detail)
        self.line(f"{self._status(ev.status)}  {ev.category.ljust(self.WIDTHS[1])}"
                  f"{ev.name.ljust(self.WIDTHS[2] - 1)} {detail[0]}")
        for more in detail[1:]:
            self.line(" " * indent + more)
        if ev.fix:
            for i, text in enumerate(self._wrapped(indent + 5, ev.fix)):
                self.line(" " * indent + ("fix: " if i == 0 else "     ") + text)

    def probe(self, ev: P.ProbeResult) -> None:
        shape = f"batch {ev.batch_size} x {ev.max_seq_length}"
        if ev.peak_memory:
            figures = f"peak {size(ev.peak_memory):>9}  {ev.tokens_per_second:>8,.0f} tok/s  "
        else:
            figures = ""
        status = self._status("pass" if ev.ok else "warn").replace("pass", " ok ").replace("warn", " -- ")
        self.line(f"probe   {status}{shape:<18}{figures}{ev.note}")

    def done(self, ev: P.PreflightDone) -> None:
        report = ev.report
        rec = report.get("recommendation", {})
        cfg = ev.recommended
        source = "measured by the probe" if rec.get("source") == "probe" else "from the memory tiers"
        self.line()
        self.line(f"recommended config ({rec.get('tier', '?')} tier, {source}):")
        for key in SHOWN_SETTINGS:
            if cfg.get(key) is not None:
                self.line(f"  {key:<24} {cfg[key]}")
        self.line("why:")
        for reason in rec.get("reasons", []):
            wrapped = self._wrapped(4, reason)
            self.line(f"  - {wrapped[0]}")
            for more in wrapped[1:]:
                self.line(f"    {more}")
        counts = report.get("summary", {})
        self.line()
        self.line(f"{counts.get('pass', 0)} passed, {counts.get('warn', 0)} warnings, {counts.get('fail', 0)} failed "
                  f"in {report.get('seconds', 0):.1f} s")
        if ev.report_path:
            self.line(f"report: {ev.report_path}")
        if ev.recommended_path:
            self.line(f"recommended config: {ev.recommended_path} (train with it: farense-tui train --config "
                      f"{ev.recommended_path} --run-dir checkpoints/run)")


def run(args: argparse.Namespace, engine: Optional[EngineProcess] = None, tty: Optional[bool] = None,
        out: TextIO = sys.stdout) -> int:
    raw: dict = {}
    if args.config:
        try:
            raw = C.load_yaml(args.config)
            C.validate(raw)  # fail fast, before the engine starts
        except C.ConfigError as e:
            print(f"farense-tui: {e}", file=sys.stderr)
            return 2
    engine = engine or EngineProcess()
    engine.start()
    table = Table(out, out.isatty() if tty is None else tty)
    done: Optional[P.PreflightDone] = None
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            print("stopping: the probe ends after its current step (press ctrl+c again to abandon)...",
                  file=sys.stderr)
            engine.send(P.Stop())
        else:
            engine.proc.kill()

    def show(ev: P.Record) -> None:
        nonlocal done
        if isinstance(ev, P.PreflightDone):
            done = ev
        elif isinstance(ev, P.Check):
            if not args.json:
                table.check(ev)
        elif isinstance(ev, P.ProbeResult):
            if not args.json:
                table.probe(ev)
        elif isinstance(ev, (P.Warning, P.Error)):
            print(describe(ev).text, file=sys.stderr)
        elif isinstance(ev, P.Hello) and not args.json:
            table.line(describe(ev).text)

    old = signal.signal(signal.SIGINT, on_signal)
    try:
        finished = engine.request(P.Preflight(config=raw, out=args.out, probe=bool(args.probe),
                                              probe_seconds=args.probe_seconds), show)
    except EngineGone as e:
        print(f"farense-tui: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, old)
        engine.close()
    if done is None:
        print(f"farense-tui: preflight ended without a report ({finished.message or finished.status}); fix the "
              f"error above and run it again.", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(done.report, indent=2, ensure_ascii=False), file=out)
    else:
        table.done(done)
    return 0 if done.report.get("ok") else 1


def main(argv: Sequence[str]) -> int:
    return run(build_parser().parse_args(list(argv)))

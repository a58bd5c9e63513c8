"""``farense-tui compare RUN... [--html FILE] [--force]``: runs side by side: the settings that differ,
best recall, best validation loss, training time, peak memory, status and updates; with ``--html`` the same
as a page, with the runs' loss curves on one plot."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rich.console import Console
from rich.table import Table

from ..report import ReportError, compare_rows, read_run, run_labels, write_compare


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="farense-tui compare",
        description="Compare runs: the config settings that differ between them, then best recall, best "
                    "validation loss, training time, peak memory, status and updates.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders")
    p.add_argument("--html", metavar="FILE", help="also write the table and the runs' loss curves as an HTML page")
    p.add_argument("--force", action="store_true", help="replace FILE even if farense-tui did not write it")
    return p


def table(labels: list[str], rows: list[tuple[str, list[str]]]) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    t.add_column("run")
    for label in labels:
        t.add_column(label, overflow="fold")
    for key, values in rows:
        t.add_row(key, *values)
    return t


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if len(args.runs) < 2:
        print("farense-tui: compare needs at least two run folders; give two or more, e.g. 'farense-tui compare "
              "checkpoints/run-a checkpoints/run-b'.", file=sys.stderr)
        return 2
    try:
        runs = [read_run(path) for path in args.runs]
        rows = compare_rows(runs)
        Console(highlight=False, soft_wrap=False).print(table(run_labels(runs), rows))
        if args.html:
            print(f"wrote {write_compare(runs, args.html, args.force)}")
    except ReportError as e:
        print(f"farense-tui: {e}", file=sys.stderr)
        return 2
    return 0

"""``farense-tui report --run DIR [--out FILE] [--force]``: a run's report as one self-contained HTML page
(plots, figures, config, summary, the evaluation's wrong answers) and its plots as PNG files in DIR/plots/."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..report import ReportError, write_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="farense-tui report",
        description="Write a run's report: one HTML page that needs no network (plots of loss, validation loss, "
                    "recall, learning rate, tokens/s and memory over updates; the config; the summary; the wrong "
                    "answers of its last 'farense-tui eval'), and the plots as PNG files in the run's plots/ "
                    "folder. A run still training, or stopped early, is reported as far as it got.")
    p.add_argument("--run", required=True, metavar="DIR", help="the run folder")
    p.add_argument("--out", metavar="FILE", help="where the page goes (default: DIR/report.html)")
    p.add_argument("--force", action="store_true",
                   help="replace FILE even if farense-tui did not write it (a page it wrote is always replaced: it "
                        "carries <meta name=\"generator\" content=\"farense-tui\">)")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        written = write_report(args.run, args.out, args.force)
    except ReportError as e:
        print(f"farense-tui: {e}", file=sys.stderr)
        return 2
    print(f"wrote {written.page}")
    if written.plots:
        print(f"plots: {', '.join(p.name for p in written.plots)} in {written.plots[0].parent}")
    return 0

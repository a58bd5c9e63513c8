"""``farense-tui attach DIR [--stop]``: follow a run training in the background (``train --detach``,
or left running when the app quit): its progress from the run folder, as ``train`` shows it.
ctrl+c leaves it training; ``--stop`` stops it with a checkpoint and follows it until it has."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Optional, Sequence

from farense_core import protocol as P

from ..attach import AttachedEngine, NotAttachable
from .train import EXIT, View


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farense-tui attach", description="Follow a run training in the background.")
    p.add_argument("run_dir", metavar="DIR", help="the run folder")
    p.add_argument("--stop", action="store_true", help="stop the run (it saves a checkpoint), then show how it ended")
    return p


def run(args: argparse.Namespace, tty: Optional[bool] = None) -> int:
    try:
        engine = AttachedEngine(args.run_dir, replay=False)
    except NotAttachable as e:
        print(f"farense-tui: {e}", file=sys.stderr)
        return 2
    view = View(args.run_dir, tty)
    if args.stop:
        if not engine.send(P.Stop()):
            print(f"farense-tui: the training process (pid {engine.pid}) could not be signalled; it may have just "
                  f"ended: its events.jsonl says how; 'farense-tui train --run-dir {args.run_dir} --resume' continues it.",
                  file=sys.stderr)
            return 1
        view.progress.line(f"stopping: the run (pid {engine.pid}) saves a checkpoint, then ends...")

    def leave(signum, frame):
        engine.close()

    old = signal.signal(signal.SIGINT, leave)
    finished = False
    try:
        for event in engine.events():
            if isinstance(event, P.Finished):
                finished = True
                break
            view.show(event)
    finally:
        view.progress.stop()
        signal.signal(signal.SIGINT, old)
    if finished:
        return EXIT.get(view.status, 1)
    if engine.closed:
        print(f"left {args.run_dir} training in the background; 'farense-tui attach {args.run_dir} --stop' stops it")
        return 0
    print(f"farense-tui: {engine.crash_report()}", file=sys.stderr)
    print(f"farense-tui: continue from its newest checkpoint with 'farense-tui train --run-dir {args.run_dir} "
          f"--resume'", file=sys.stderr)
    return 1


def main(argv: Sequence[str]) -> int:
    return run(build_parser().parse_args(list(argv)))

"""``farense-tui queue {add,list,remove,clear,run}``: runs (and sweeps) trained one after another.

``queue run`` trains each entry with ``farense-tui train`` in a child process of its own, so a run
that crashes ends only itself: it is marked failed with its exit status and last error line, and the
next one starts. Ctrl+C stops the current run with a checkpoint (as ``train`` does) and the runner;
``queue run`` again resumes that entry and goes on. The queue's file and entries: farense_core.queue.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from farense_core import config as C
from farense_core import queue as Q
from farense_core.rundir import RUNS_FOLDER, RunDir, lock_holder

from ..runs import summarize_run

STOPPED = 130  # train's exit status for a run stopped with a checkpoint (and ours when the queue is stopped)
OUTPUT_KEPT = 200  # lines of a run's output kept to find its last error line


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--checkpoints", default=RUNS_FOLDER, metavar="DIR",
                        help=f"the checkpoints folder whose queue ({Q.QUEUE_FILE}) this is (default: {RUNS_FOLDER})")
    p = argparse.ArgumentParser(prog="farense-tui queue", description="Queue runs and sweeps; train them one after "
                                                                      "another with 'queue run'.")
    sub = p.add_subparsers(dest="action", required=True, metavar="{add,list,remove,clear,run}")
    a = sub.add_parser("add", parents=[common], help="queue a run per config (and per value of each --set)",
                       description="Queue a run per config file; --set makes a sweep: a run per value (several "
                                   "--set: every combination). Each run is validated now and gets its own folder.")
    a.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML config (ours or an mlx_lm.lora -c file)")
    a.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2",
                   help="a setting's values, one run each, as in the YAML: --set learning_rate=1e-4,2e-4")
    a.add_argument("--run-dir-prefix", metavar="PREFIX",
                   help="what each run folder's name starts with: a folder ending in / (checkpoints/night/) or a "
                        "name start (checkpoints/night-); default: the checkpoints folder")
    sub.add_parser("list", parents=[common], help="the queued runs and their status")
    r = sub.add_parser("remove", parents=[common], help="take runs off the queue (their folders stay)")
    r.add_argument("ids", nargs="+", type=int, metavar="N", help="the run's number in 'queue list'")
    c = sub.add_parser("clear", parents=[common], help="take finished runs (completed, failed) off the queue")
    c.add_argument("--all", action="store_true", help="take every run off but the one training now")
    sub.add_parser("run", parents=[common], help="train the queued runs one after another (ctrl+c stops; run "
                                                 "again to go on)")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    queue = Q.Queue(args.checkpoints)
    try:
        return ACTIONS[args.action](queue, args)
    except Q.QueueError as e:
        print(f"farense-tui: {e}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------ add, list, remove, clear


def add(queue: Q.Queue, args: argparse.Namespace) -> int:
    prefix = args.run_dir_prefix if args.run_dir_prefix is not None else str(queue.folder) + os.sep
    entries, notes = Q.plan(args.configs, args.sets, prefix, _dt.datetime.now(),
                            taken=[e.run_dir for e in queue.read()])
    for note in notes:
        print(f"note: {note}")
    Q.add(queue, entries)
    for entry in entries:
        print(f"queued {entry.id}: {Q.shown_path(entry.run_dir)}  ({Q.shown_path(entry.config)}"
              f"{', ' + entry.overrides_text if entry.overrides else ''})")
    runner = queue.runner()
    print(f"{len(entries)} run{'s' if len(entries) != 1 else ''} queued; "
          + (f"the queue's runner (pid {runner.get('pid')}) trains them in turn."
             if runner else "train them with 'farense-tui queue run'."))
    return 0


def list_(queue: Q.Queue, args: argparse.Namespace) -> int:
    entries = queue.read()
    if not entries:
        print(f"The queue of {queue.folder} is empty; add runs with 'farense-tui queue add CONFIG'.")
        return 0
    runner = queue.runner()
    for entry in entries:
        line = Q.summary_line(entry)
        if entry.status == "running" and runner is None:
            orphan = lock_holder(RunDir(entry.run_dir))
            line += (f"  its runner ended; still training in pid {orphan.get('pid')}" if orphan else
                     "  interrupted (its runner ended); 'farense-tui queue run' goes on from its newest checkpoint")
        elif entry.status == "running":
            run = summarize_run(Path(entry.run_dir))
            line += f"  update {run.step}/{run.total_steps}" if run.total_steps else "  starting"
        print(line)
    counts = collections.Counter(e.status for e in entries)
    print(", ".join(f"{n} {status}" for status, n in counts.items()) + "; "
          + (f"run by pid {runner.get('pid')}." if runner else "no runner ('farense-tui queue run' starts one)."))
    return 0


def remove(queue: Q.Queue, args: argparse.Namespace) -> int:
    with queue.edit() as edit:
        for entry_id in args.ids:
            entry = edit.find(entry_id)
            if entry is None:
                raise Q.QueueError(f"There is no run {entry_id} in the queue; 'farense-tui queue list' shows their "
                                   f"numbers.")
            if entry.status == "running" and queue.runner():
                raise Q.QueueError(f"Run {entry_id} is training now; stop the queue first (ctrl+c where "
                                   f"'farense-tui queue run' runs), then remove it.")
        edit.entries = [e for e in edit.entries if e.id not in args.ids]
    print(f"removed {', '.join(map(str, args.ids))} from the queue (run folders are kept).")
    return 0


def clear(queue: Q.Queue, args: argparse.Namespace) -> int:
    live = queue.runner() is not None
    with queue.edit() as edit:
        kept = [e for e in edit.entries
                if (e.status == "running" and live) or (not args.all and e.status not in Q.FINISHED)]
        gone = len(edit.entries) - len(kept)
        edit.entries = kept
    what = "runs" if args.all else "finished runs"
    print(f"removed {gone} {what} from the queue (run folders are kept); {len(kept)} left.")
    return 0


# ------------------------------------------------------------------ run


class Runner:
    """Trains the queue's entries in turn, each in a child ``farense-tui train``."""

    def __init__(self, queue: Q.Queue):
        self.queue = queue
        self.child: Optional[subprocess.Popen] = None
        self.stopping = False

    def on_signal(self, signum, frame) -> None:
        if not self.stopping:
            self.stopping = True
            # a raw write: print() here could land inside a print of the main loop's
            os.write(sys.stdout.fileno(), b"stopping the queue: the current run saves a checkpoint and stops "
                                          b"(ctrl+c again to abandon it)...\n")
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGINT)  # train: the first stops with a checkpoint, a second abandons

    def run(self) -> int:
        lock = self.queue.hold_runner()
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        old = {s: signal.signal(s, self.on_signal) for s in handled}
        try:
            while not self.stopping:
                found = self.next_entry()
                if found is None:
                    break
                self.train(*found)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            lock.release()
        entries = self.queue.read()
        if entries:
            print("queue:")
            for entry in entries:
                print(Q.summary_line(entry))
        else:
            print("The queue is empty; add runs with 'farense-tui queue add CONFIG'.")
        if self.stopping:
            return STOPPED
        return 0 if all(e.status == "completed" for e in entries) else 1

    def next_entry(self) -> Optional[tuple[Q.Entry, bool]]:
        """The first entry with something to train, marked running, and whether it resumes."""
        with self.queue.edit() as edit:
            entry = next((e for e in edit.entries if e.status in Q.TO_RUN), None)
            if entry is None:
                return None
            holder = lock_holder(RunDir(entry.run_dir))
            if holder is not None:  # a runner that was killed left its run training
                raise Q.QueueError(f"{Q.shown_path(entry.run_dir)} is still training (pid {holder.get('pid')}), "
                                   f"left by a queue runner that ended; stop it with 'farense-tui attach "
                                   f"{Q.shown_path(entry.run_dir)} --stop' or let it finish, then run the queue "
                                   f"again.")
            resume = Q.resumable(entry)
            entry.status, entry.started, entry.ended, entry.exit_code, entry.note = (
                "running", time.time(), None, None, "")
            entry.attempts += 1
        return entry, resume

    def command(self, entry: Q.Entry, resume: bool) -> list[str]:
        command = [sys.executable, "-m", "farense_tui.cli", "train", "--run-dir", entry.run_dir]
        if resume:
            return command + ["--resume"]  # the run's own config.yaml
        # every setting as its flag, in JSON (which the flags read as YAML): the settings as queued
        return command + [f"{C.flag(k)}={json.dumps(v, ensure_ascii=False)}" for k, v in entry.settings.items()]

    def train(self, entry: Q.Entry, resume: bool) -> None:
        print(f"── queue run {entry.id}: {Q.shown_path(entry.run_dir)} "
              f"({'resuming' if resume else 'starting'}) ──", flush=True)
        lines: collections.deque = collections.deque(maxlen=OUTPUT_KEPT)
        if not resume and RunDir(entry.run_dir).is_run() and entry.attempts == 1:
            code, lines = None, [f"error: {entry.run_dir} already holds a run; remove this entry, or move that "
                                 f"folder away and add the config again."]
        else:
            code = self.run_child(self.command(entry, resume), entry.cwd, lines)
        with self.queue.edit() as edit:
            current = edit.find(entry.id)
            if current is None:  # removed from the queue while it trained
                print(f"run {entry.id} was removed from the queue while it trained; its folder is kept.")
                return
            current.ended, current.exit_code = time.time(), code
            if code == 0:
                current.status, current.note = "completed", Q.completed_note(current)
            elif code == STOPPED or (self.stopping and code is not None):
                # stopped by its user (here, in the app or with attach --stop): the queue stops too; a run
                # abandoned with a second ctrl+c goes on from its newest checkpoint as well
                current.status, current.note = "stopped", Q.stopped_note(current)
                self.stopping = True
            else:
                current.status, current.note = "failed", Q.failure_reason(list(lines), code)
            code_text = f" (exit {code})" if current.status == "failed" and code is not None else ""
            print(f"── queue run {entry.id} {current.status}{code_text}: {current.note or '-'}", flush=True)

    def run_child(self, command: list[str], cwd: str, lines: collections.deque) -> Optional[int]:
        """Run ``train``, passing its output through; its exit status (None when it could not start)."""
        try:
            # its own session: the terminal's ctrl+c reaches only us, and we pass exactly one on
            self.child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True, errors="replace", start_new_session=True,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as e:
            lines.append(f"error: the run could not be started in {cwd} ({e.strerror or e}); add it again from an "
                         f"existing folder.")
            return None
        try:
            for line in self.child.stdout:
                print(line, end="", flush=True)
                lines.append(line)
            return self.child.wait()
        finally:
            self.child.stdout.close()
            self.child = None


def run(queue: Q.Queue, args: argparse.Namespace) -> int:
    return Runner(queue).run()


ACTIONS = {"add": add, "list": list_, "remove": remove, "clear": clear, "run": run}

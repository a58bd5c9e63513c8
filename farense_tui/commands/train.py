"""``farense-tui train --config FILE --run-dir DIR [--resume [--from-checkpoint STEP]] [--detach]``: headless
training.

Shows a progress bar with ETA on a terminal, plain lines otherwise; exits 0 when the run
completes. The engine writes the run folder itself, so this is only a view of its stream.
"""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Sequence

from farense_core import batching
from farense_core import config as C
from farense_core import protocol as P
from farense_core.crash import crash_report, explain_exit, retry_config
from farense_core.rundir import RunDir, RunFolderError, check_run_folder

from ..describe import describe
from ..engine_client import EngineGone, EngineProcess, LaunchError, launch_command
from farense_core.format import duration, size

EXIT = {"completed": 0, "early_stopped": 0, "detached": 0, "failed": 1, "memory_guard": 3, "diverged": 4, "disk_full": 5,
        "stopped": 130}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farense-tui train", description="Train headless on the engine.")
    p.add_argument("--config", help="YAML config (ours or an mlx_lm.lora -c file); optional with --resume")
    p.add_argument("--run-dir", required=True, help="run folder: events, metrics, checkpoints and adapters go here")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run folder's newest intact checkpoint (checksums verified)")
    p.add_argument("--from-checkpoint", type=int, metavar="STEP",
                   help="resume from the checkpoint of update STEP instead of the newest (implies --resume; "
                        "later checkpoints are set aside, not deleted)")
    settings = p.add_argument_group("settings", "each overrides the config's value (the run's own with --resume); "
                                                "values as in the YAML: --learning-rate 2e-4, --mask-prompt, "
                                                "--lora-parameters '{rank: 16, scale: 20}'")
    for s in C.SETTINGS:
        bool_flag = isinstance(s.default, bool)
        settings.add_argument(C.flag(s.key), dest=f"set_{s.key}", metavar="VALUE", help=s.help,
                              nargs="?" if bool_flag else None, const="true" if bool_flag else None)
    shared = p.add_argument_group("several processes", "data-parallel over MLX's distributed runtime (mlx.launch): "
                                                       "each process trains an equal share of every micro-batch")
    shared.add_argument("-n", "--processes", type=int, default=1, metavar="N",
                        help="processes training the run together on this machine (per host with --hosts)")
    shared.add_argument("--hosts", metavar="FILE", help="an mlx.launch hosts file: train across these machines")
    shared.add_argument("--backend", choices=("ring", "mpi", "nccl"),
                        help="how the processes talk (default: mlx.launch's choice, ring or NCCL on CUDA)")
    p.add_argument("--detach", action="store_true",
                   help="once the run has started, leave it training in the background and return; follow it "
                        "with 'farense-tui attach DIR'")
    return p


class Progress:
    """A rich progress bar on a terminal, a line per report otherwise."""

    def __init__(self, tty: bool, out=None):
        self.tty = tty
        self.out = out  # None: sys.stdout as it is when a line is written
        self.bar = None
        self.task = None
        self.report_every = 10

    def start(self, total: int) -> None:
        if self.tty and self.bar is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Bar(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                           TimeRemainingColumn(), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, info="")

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.out or sys.stdout, flush=True)

    def step(self, ev: P.Step) -> None:
        info = (f"epoch {ev.epoch} loss {ev.loss:.3f} lr {ev.learning_rate:.2e} "
                f"{ev.tokens_per_second:.0f} tok/s mem {size(ev.memory.mlx_active)}")
        if ev.ranks:  # a shared run: the slowest process sets the pace, the fullest the memory
            info += (f" ({len(ev.ranks)} processes, slowest {min(r['tokens_per_second'] for r in ev.ranks):.0f} "
                     f"tok/s, peak {size(max(r['mlx_peak'] for r in ev.ranks))})")
        if self.bar is not None:
            self.bar.update(self.task, completed=ev.step, total=ev.total_steps, info=info)
        if ev.step % self.report_every == 0 or ev.step == ev.total_steps or ev.step == 1:  # kept in the scrollback
            self.line(f"update {ev.step}/{ev.total_steps} {info} elapsed {duration(ev.elapsed)} eta {duration(ev.eta)}")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def run(args: argparse.Namespace, make_engine: Callable[[], EngineProcess] = EngineProcess,
        tty: Optional[bool] = None) -> int:
    raw: dict = {}
    if args.from_checkpoint is not None:
        args.resume = True
    try:
        overrides = {s.key: C.parse_value(s.key, getattr(args, f"set_{s.key}")) for s in C.SETTINGS
                     if getattr(args, f"set_{s.key}", None) is not None}
        if args.config:
            raw = C.load_yaml(args.config)
        elif overrides and args.resume:
            raw = RunDir(args.run_dir).settings()  # the run's own config, with the flags over it
        raw = {**raw, **overrides}
        if raw:
            C.validate(raw)  # fail fast, before the engine loads anything
    except C.ConfigError as e:
        print(f"farense-tui: {e}", file=sys.stderr)
        return 2
    if not args.config and not args.resume and not overrides:
        print("farense-tui: --config (or settings flags, e.g. --data DIR --iters 100) is needed to start a run; "
              "only --resume goes on without.", file=sys.stderr)
        return 2
    if (not args.config and args.resume and not RunDir(args.run_dir).config.exists()
            and not RunDir(args.run_dir).list_checkpoints()):
        print(f"farense-tui: {args.run_dir} holds no run to resume (no config.yaml, no checkpoints); pass --config "
              f"to start one.", file=sys.stderr)
        return 2

    try:
        check_run_folder(args.run_dir, args.resume)
    except RunFolderError as e:
        print(f"farense-tui: {e}", file=sys.stderr)
        return 2
    if args.processes > 1 or args.hosts:
        if (problem := shared_problem(args, raw)) is not None:
            print(f"farense-tui: {problem}", file=sys.stderr)
            return 2
        if make_engine is EngineProcess:
            make_engine = partial(EngineProcess, launch_command(args.processes, args.hosts, args.backend))

    retries = auto_resume(raw, args.run_dir)
    attempt = 0
    while True:
        status, gone = _train_once(args, raw, make_engine, tty)
        if gone is None:
            return EXIT.get(status, 1)
        cause = explain_exit(gone.returncode, gone.stderr)
        print(f"farense-tui: {crash_report(gone.returncode, gone.stderr)}", file=sys.stderr)
        rd = RunDir(args.run_dir)
        if attempt >= retries or not rd.list_checkpoints() or gone.stopping:
            if rd.list_checkpoints():
                print(f"farense-tui: continue from the newest checkpoint with 'farense-tui train --run-dir "
                      f"{args.run_dir} --resume'", file=sys.stderr)
            return 1
        attempt += 1
        raw, note = retry_config(rd.settings(), cause)
        args.resume, args.from_checkpoint = True, None
        print(f"auto_resume ({attempt} of {retries}): {note}", file=sys.stderr)


def shared_problem(args: argparse.Namespace, raw: dict) -> Optional[str]:
    """One sentence when a run cannot be shared as asked (checked again by the engine, which knows the
    hosts file's count)."""
    if args.processes < 1:
        return f"-n is {args.processes}, but it counts processes: give 1 or more (-n 2 trains on two)."
    if args.detach:
        return ("--detach cannot leave a run of several processes in the background; run it inside tmux or screen "
                "instead.")
    try:
        launch_command(args.processes, args.hosts, args.backend)
    except LaunchError as e:
        return str(e)
    if args.hosts is None and raw:
        return batching.share_problem(C.validate(raw)[0]["batch_size"], args.processes)
    return None


def auto_resume(raw: dict, run_dir: str) -> int:
    """How many times this run may be resumed on its own (the config's auto_resume)."""
    rd = RunDir(run_dir)
    try:
        return C.validate(raw or (rd.settings() if rd.config.is_file() else {}))[0]["auto_resume"]
    except (C.ConfigError, OSError, ValueError):
        return 0


@dataclass
class Gone:
    """How an engine that died ended: its exit code, last stderr lines, and whether the user was
    stopping it (then it is not resumed on its own)."""
    returncode: Optional[int]
    stderr: list[str]
    stopping: bool


class View:
    """What a headless command shows of a run's events: progress, one line per notable event, the
    outcome. ``status`` is the run's done status once it came."""

    def __init__(self, run_dir: str, tty: Optional[bool]):
        self.run_dir = run_dir
        self.progress = Progress(sys.stdout.isatty() if tty is None else tty)
        self.status: Optional[str] = None

    def show(self, ev: P.Record) -> None:
        progress = self.progress
        if isinstance(ev, P.Config):
            progress.report_every = int(ev.config.get("steps_per_report", 10))
        if isinstance(ev, P.Data):
            progress.start(ev.total_updates)
        if isinstance(ev, P.Step):
            progress.start(ev.total_steps)
            progress.step(ev)
        elif isinstance(ev, P.Done):
            self.status = ev.status
            progress.stop()
            print(describe(ev).text)
            print(outcome(ev, self.run_dir))
        elif (line := describe(ev)) is not None:
            progress.line(line.text)


class _Detached(Exception):
    pass


def _train_once(args: argparse.Namespace, raw: dict, make_engine: Callable[[], EngineProcess],
                tty: Optional[bool]) -> tuple[Optional[str], Optional[Gone]]:
    """One engine, one train job: (the done status, None), or (None, how the engine died); with
    --detach, ("detached", None) once the run has started."""
    engine = make_engine()
    engine.start()
    view = View(args.run_dir, tty)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            view.progress.line("stopping: saving a checkpoint (press ctrl+c again to abandon)...")
            engine.send(P.Stop())
        else:
            engine.kill()

    old = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)

    def show(ev: P.Record) -> None:
        view.show(ev)
        if args.detach and isinstance(ev, P.Config) and engine.detach():  # the run holds its folder now
            raise _Detached()

    try:
        engine.request(P.Train(config=raw, run_dir=str(args.run_dir), resume=bool(args.resume),
                               from_checkpoint=args.from_checkpoint), show)
    except _Detached:
        view.progress.stop()
        print(f"training in the background (pid {engine.proc.pid}); follow it with 'farense-tui attach "
              f"{args.run_dir}', stop it with 'farense-tui attach {args.run_dir} --stop'")
        return "detached", None
    except EngineGone:
        view.progress.stop()
        engine.crash_report()  # waits for the process and its stderr
        return None, Gone(engine.returncode, list(engine.stderr_tail), stopping)
    finally:
        view.progress.stop()
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
        engine.close()
    return view.status, None


def outcome(done: P.Done, run_dir: str) -> str:
    """What the run left and what to do next."""
    s = done.summary
    if done.status in P.Done.FINISHED:
        return (f"{s.get('updates')} updates in {duration(s.get('elapsed', 0))}, {s.get('tokens_per_second', 0):.0f} "
                f"tok/s, final loss {s.get('final_loss') or 0:.4f}\n"
                f"best adapter (by {s.get('best_by')}, update {s.get('best_step')}): {s.get('adapters')}\n"
                f"final adapter: {s.get('final')}")
    if done.status == "diverged":
        return f"diverged at update {s.get('updates')}: no final adapter; see the advice above."
    if done.status in ("stopped", "memory_guard"):
        return (f"checkpoint saved at update {s.get('updates')}; continue with "
                f"'farense-tui train --run-dir {run_dir} --resume'")
    if done.status == "disk_full" and "updates" in s:
        return (f"stopped at update {s.get('updates')}: the disk is full (see above); free space, then continue "
                f"from the newest checkpoint with 'farense-tui train --run-dir {run_dir} --resume'")
    return "no run; fix the error above and start again."


def main(argv: Sequence[str]) -> int:
    return run(build_parser().parse_args(list(argv)))

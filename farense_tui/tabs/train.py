"""The Train tab: start, pause, continue and stop a run; its progress and event log; resume any
earlier run found in the checkpoints folder; the folder's run queue (`farense-tui queue`), read-only.
An engine that dies or prints garbage shows here with its last stderr lines, and the app stays usable."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, DataTable, Label, ProgressBar, Select, Static, TabPane

from farense_core import protocol as P
from farense_core.batching import share_problem
from farense_core.crash import retry_config
from farense_core.queue import Queue, QueueError
from farense_core.format import size
from farense_core.rundir import RunDir, checkpoint_update, lock_holder

from ..attach import AttachedEngine, NotAttachable
from ..widgets.choice_screen import Choice, ChoiceScreen
from ..widgets.name_screen import NameScreen
from ..messages import EngineEvent, EngineExited, OpenRun, TrainingEnded, TrainingProgress, TrainingStarted
from farense_core.format import duration
from ..runs import RunError, RunHistory, RunInfo, format_loss, list_runs, new_run_dir, run_config
from ..widgets.event_log import EventLog
from ..session import Session


RUNS_REFRESH_SECONDS = 10.0  # the runs list follows a live run's checkpoints at most this often
QUEUE_REFRESH_SECONDS = 5.0
PROCESS_CHOICES = (1, 2, 3, 4)  # a local run of several processes (farense-tui train -n N)  # the queue's list follows `farense-tui queue` this often (and when the tab shows)


class TrainTab(TabPane):
    BINDINGS = [
        Binding("s", "start", "Start"),
        Binding("p", "pause", "Pause"),
        Binding("c", "continue", "Continue"),
        Binding("x", "stop", "Stop"),
        Binding("r", "resume_run", "Resume run", show=False),  # the runs list's hint shows these two
        Binding("o", "open_run", "Open in Monitor", show=False),
        Binding("d", "delete_run", "Delete run", show=False),
        Binding("n", "rename_run", "Rename run", show=False),
        Binding("m", "pick_processes", "Processes", show=False),
    ]

    DEFAULT_CSS = """
    TrainTab #train-bar { height: auto; }
    TrainTab #train-bar Button { margin-right: 1; }
    TrainTab #processes { width: 19; }
    TrainTab #train-state { padding: 0 1; height: auto; }
    TrainTab #progress-row { height: 1; margin: 0; }
    TrainTab #progress-row ProgressBar { width: 40; }
    TrainTab #progress-text { width: 1fr; height: 1; }
    TrainTab #train-error {
        display: none; border: round $error; color: $error; max-height: 14; overflow-y: auto;
        padding: 0 1; margin-top: 1;
    }
    TrainTab #train-error.-visible { display: block; }
    TrainTab #train-lower { margin-top: 1; }
    TrainTab #runs-box { width: 62; padding-left: 1; }
    TrainTab #runs { height: 1fr; }
    TrainTab #queue-box { display: none; height: auto; }
    TrainTab #queue-box.-visible { display: block; }
    TrainTab #queue { height: auto; max-height: 7; overflow-x: hidden; }
    TrainTab .caption { text-style: bold; color: $accent; }
    TrainTab .hint { color: $text-muted; width: 100%; height: auto; }
    """

    def __init__(self, session: Session) -> None:
        super().__init__(session.title("train"), id="train")
        self.session = session
        self.busy = False
        self.state = "idle"
        self.run_dir: Optional[str] = None
        self.runs: list[RunInfo] = []
        self.runs_read = 0.0  # when the runs list was last read
        self.quitting = False  # the app quits once the run has stopped
        self.history: Optional[RunHistory] = None
        self.background_pid: Optional[int] = None  # the engine of a run followed from another process
        self.processes = 1  # processes training the run this tab started
        self.auto_resumes: dict[str, int] = {}  # run folder -> automatic resumes so far this session
        self.queue_read: Optional[tuple] = None  # what the queue list shows: (queue file's mtime, size, runner)

    def compose(self) -> ComposeResult:
        with Horizontal(id="train-bar"):
            yield Button("Start (s)", id="start", variant="success")
            yield Button("Pause (p)", id="pause", disabled=True)
            yield Button("Continue (c)", id="continue", disabled=True)
            yield Button("Stop (x)", id="stop", variant="error", disabled=True)
            processes = Select([(f"{n} process" + ("es" if n > 1 else ""), n) for n in PROCESS_CHOICES], value=1,
                               allow_blank=False, id="processes")
            processes.tooltip = ("m: processes training the next run together on this machine (data-parallel, "
                                 "mlx.launch); batch_size must divide by them.")
            yield processes
        yield Static("No run yet. Press s to train with the Config tab's settings.", id="train-state")
        with Horizontal(id="progress-row"):
            yield ProgressBar(total=1, show_eta=False, id="progress")
            yield Static("", id="progress-text")
        yield Static("", id="train-error")
        with Horizontal(id="train-lower"):
            yield EventLog(id="train-log")
            with Vertical(id="runs-box"):
                yield Label("Runs in the checkpoints folder", classes="caption")
                table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
                table.add_columns("run", "status", "update", "recall", "best val")
                yield table
                yield Label("r resume · o open in Monitor · n rename · d delete", classes="hint")
                with Vertical(id="queue-box"):  # shown once the checkpoints folder has a queue
                    yield Label("Queue", id="queue-caption", classes="caption")
                    queue = DataTable(id="queue", cursor_type="none", zebra_stripes=True)
                    queue.can_focus = False  # read-only: farense-tui queue changes it
                    queue.add_columns("#", "status", "run")  # why one failed: farense-tui queue list
                    yield queue

    def on_mount(self) -> None:
        self.refresh_runs()
        self.refresh_queue()
        self.set_interval(QUEUE_REFRESH_SECONDS, self.refresh_queue, name="queue-refresh")

    # -- the run queue (read-only: `farense-tui queue` adds and runs)

    def refresh_queue(self) -> None:
        queue = Queue(self.session.checkpoints_dir)
        try:
            stat = queue.path.stat()
            seen = (stat.st_mtime_ns, stat.st_size, (queue.runner() or {}).get("pid"))
        except OSError:
            seen = None
        if seen == self.queue_read:
            return
        self.queue_read = seen
        table = self.query_one("#queue", DataTable)
        table.clear()
        try:
            entries = queue.read()
            problem = ""
        except QueueError as e:
            entries, problem = [], str(e)
        for entry in entries:
            table.add_row(str(entry.id), entry.status, entry.name, key=str(entry.id))
        runner = seen[2] if seen else None
        who = f"run by pid {runner}" if runner else "farense-tui queue"
        self.query_one("#queue-caption", Label).update(problem or f"Queue, read-only ({who})")
        self.query_one("#queue-box").set_class(bool(entries or problem), "-visible")

    # -- runs list

    def refresh_runs(self) -> None:
        selected = self.selected_run()
        self.runs_read = time.monotonic()
        runs = list_runs(self.session.checkpoints_dir)
        if runs == self.runs:
            return  # shown already: rebuilt, the table would be drawn anew in every switch to this tab
        self.runs = runs
        table = self.query_one("#runs", DataTable)
        table.clear()
        for run in self.runs:
            step = f"{run.step}/{run.total_steps}" if run.total_steps else "-"
            recall = f"{run.best_recall:.0%}" if run.best_recall is not None else "-"
            table.add_row(run.name, run.status, step, recall, format_loss(run.best_val_loss), key=str(run.path))
        if selected is not None:  # the cursor stays on the run it was on
            self._select_run(str(selected.path))

    def selected_run(self) -> Optional[RunInfo]:
        table = self.query_one("#runs", DataTable)
        if not self.runs or table.cursor_row is None or table.cursor_row >= len(self.runs):
            return None
        return self.runs[table.cursor_row]

    # -- commands

    def _begin(self, config: dict, run_dir: Path, resume: bool) -> None:
        link = self.session.links["train"]
        processes = int(self.query_one("#processes", Select).value)
        if problem := share_problem(int(config.get("batch_size", 1)), processes):
            self.show_error(problem)
            return
        history = self.history = RunHistory()
        self.background_pid = None
        self.processes = processes
        self.show_error(None)
        try:
            link.start(history, processes=processes)
        except OSError as e:
            self.show_error(f"The engine could not be started ({e.strerror or e}).")
            return
        if not link.send(P.Train(config=config, run_dir=str(run_dir), resume=resume)):
            self.show_error("The engine did not accept the train command; it may have exited.")
            return
        self.busy, self.run_dir = True, str(run_dir)
        log = self.query_one(EventLog)
        on = f" on {processes} processes" if processes > 1 else ""
        log.write(f"── {'resuming' if resume else 'starting'} {run_dir}{on} ──")
        self.query_one("#progress", ProgressBar).update(total=1, progress=0)
        self.query_one("#progress-text", Static).update("loading…")
        self._set_state("loading")
        log.focus()  # Start is now disabled; the tab's keys must keep working
        self.post_message(TrainingStarted(history))

    def attach(self, run_dir: Path) -> bool:
        """Follow a run another process trains (left in the background, or headless): its progress,
        plots, pause and stop work as for a run started here. False when nothing trains it."""
        try:
            engine = AttachedEngine(run_dir)
        except NotAttachable as e:
            self.show_error(str(e))
            return False
        history = self.history = RunHistory()
        self.show_error(None)
        self.session.links["train"].start(history, engine=engine)
        self.busy, self.run_dir, self.background_pid = True, str(run_dir), engine.pid
        self.query_one(EventLog).write(f"── following {run_dir}, training in the background (pid {engine.pid}) ──")
        self._set_state("training")
        self.post_message(TrainingStarted(history))
        return True

    def quit_when_stopped(self) -> None:
        """The app quits once the run has stopped: say so until then."""
        self.quitting = True
        self._set_state("stopping")

    def detach(self) -> bool:
        """Leave the run training in the background (the app is quitting); a run of several processes
        cannot be (their launcher lives with the app)."""
        return self.busy and self.processes == 1 and self.session.links["train"].detach()

    def action_pick_processes(self) -> None:
        """Open the processes list (how many train the next run together)."""
        select = self.query_one("#processes", Select)
        select.focus()
        select.expanded = True

    def action_start(self) -> None:
        if self.busy:
            self.app.notify("A run is in progress; stop it first (x).", severity="warning")
            return
        config, error = self.session.config.resolved()
        if config is None:
            self.show_error(f"The config is not valid: {error} Fix it in the {self.session.tab('config')}.")
            return
        self._begin(config, new_run_dir(self.session.checkpoints_dir, self.session.clock()), resume=False)

    def action_resume_run(self) -> None:
        if self.busy:
            self.app.notify("A run is in progress; stop it first (x).", severity="warning")
            return
        run = self.selected_run()
        if run is None:
            self.app.notify("There is no earlier run in the checkpoints folder to resume.", severity="warning")
            return
        if not run.resumable:
            why = (f"it {'completed' if run.status == 'completed' else 'stopped early'}"
                   if run.status in P.Done.FINISHED else "it has no checkpoint yet")
            self.app.notify(f"{run.name} cannot be resumed: {why}.", severity="warning")
            return
        try:
            config = run_config(run.path)
        except RunError as e:
            self.show_error(str(e))
            return
        self._begin(config, run.path, resume=True)

    def action_open_run(self) -> None:
        run = self.selected_run()
        if run is None:
            self.app.notify("There is no run in the checkpoints folder to open.", severity="warning")
            return
        self.post_message(OpenRun(str(run.path)))

    def _idle_run(self, what: str) -> Optional[RunInfo]:
        """The selected run, if nothing trains it now (else a notice and None)."""
        run = self.selected_run()
        if run is None:
            self.app.notify(f"There is no run in the checkpoints folder to {what}.", severity="warning")
            return None
        live = self.busy and self.run_dir and Path(self.run_dir).resolve() == run.path.resolve()
        if live or lock_holder(RunDir(run.path)) is not None:
            self.app.notify(f"{run.name} is training now; stop it first (x).", severity="warning")
            return None
        return run

    def action_rename_run(self) -> None:
        run = self._idle_run("rename")
        if run is not None:
            self.app.push_screen(NameScreen(f"Rename {run.name} to:", run.name),
                                 lambda name: self._rename(run, name))

    def _rename(self, run: RunInfo, name: Optional[str]) -> None:
        if not name or name == run.name:
            return
        target = run.path.with_name(name)
        if "/" in name or name in (".", ".."):
            self.app.notify(f"{name!r} is not a folder name; use letters, digits, - and _.", severity="error")
        elif target.exists():
            self.app.notify(f"{target} already exists; choose another name.", severity="error")
        else:
            try:
                run.path.rename(target)
            except OSError as e:
                self.app.notify(f"{run.name} could not be renamed ({e.strerror}); check that you may write to "
                                f"{run.path.parent}.", severity="error")
                return
            self.refresh_runs()
            self._select_run(str(target))
            self.app.notify(f"Renamed {run.name} to {name}.", title="Train")

    def action_delete_run(self) -> None:
        run = self._idle_run("delete")
        if run is None:
            return
        files = [p for p in run.path.rglob("*") if p.is_file()]
        self.app.push_screen(
            ChoiceScreen(f"Delete {run.name}?", f"Its folder {run.path} goes, with everything in it: {len(files)} "
                                                f"files, {size(sum(p.stat().st_size for p in files))} (checkpoints, "
                                                f"adapters, events). This cannot be undone.",
                         [Choice("d", "Delete", "delete", "error")]),
            lambda answer: self._delete(run) if answer == "delete" else None)

    def _delete(self, run: RunInfo) -> None:
        try:
            shutil.rmtree(run.path)
        except OSError as e:
            self.show_error(f"{run.path} could not be deleted completely ({e.strerror}); remove what is left by hand.")
        self.refresh_runs()
        self.app.notify(f"Deleted {run.name}.", title="Train")

    def _command(self, command: P.Record, what: str) -> None:
        if not self.busy:
            self.app.notify(f"There is no run to {what}.", severity="warning")
            return
        if not self.session.links["train"].send(command):
            self.show_error(f"The engine did not accept the {what} command; it may have exited.")

    def action_pause(self) -> None:
        self._command(P.Pause(), "pause")

    def action_continue(self) -> None:
        self._command(P.Resume(), "continue")

    def action_stop(self) -> None:
        self._command(P.Stop(), "stop")

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        actions = {"start": self.action_start, "pause": self.action_pause,
                   "continue": self.action_continue, "stop": self.action_stop}
        if event.button.id in actions:
            actions[event.button.id]()

    @on(DataTable.RowSelected, "#runs")
    def _run_selected(self) -> None:
        self.action_resume_run()

    # -- engine events

    def show_error(self, text: Optional[str]) -> None:
        box = self.query_one("#train-error", Static)
        box.update(text or "")
        box.set_class(bool(text), "-visible")

    def _set_state(self, state: str) -> None:
        self.state = state
        active = self.busy and state not in ("idle", "stopping")
        self.query_one("#start", Button).disabled = self.busy
        self.query_one("#pause", Button).disabled = not (active and state == "training")
        self.query_one("#continue", Button).disabled = not (active and state == "paused")
        self.query_one("#stop", Button).disabled = not active
        where = f" · {self.run_dir}" if self.run_dir else ""
        if self.background_pid and self.busy:
            where = f" in the background (pid {self.background_pid}){where}"
        quitting = " — saving a checkpoint; the app quits once the run has stopped" if self.quitting else ""
        self.query_one("#train-state", Static).update(f"engine: {state}{where}{quitting}")

    def on_training_progress(self, message: TrainingProgress) -> None:
        step = message.step
        self.query_one("#progress", ProgressBar).update(total=max(1, step.total_steps), progress=step.step)
        self.query_one("#progress-text", Static).update(
            f" update {step.step}/{step.total_steps} · epoch {step.epoch} ({step.epoch_progress:.0%}) · "
            f"elapsed {duration(step.elapsed)} · ETA {duration(step.eta)} · "
            f"loss {format_loss(step.loss)}",
            layout=False,  # one line whatever it says: no layout of the whole screen per update
        )

    def on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        self.query_one(EventLog).add_event(event)
        if isinstance(event, P.State):
            if self.busy:  # after done, the run's outcome stays on show
                self._set_state(event.state)
        elif isinstance(event, P.Config) and event.run_dir:
            self.run_dir = event.run_dir
            self.refresh_runs()  # the new run's row
        elif isinstance(event, P.Checkpoint) and time.monotonic() - self.runs_read > RUNS_REFRESH_SECONDS:
            self.refresh_runs()  # its row follows the run (each refresh reads every run's events)
        elif isinstance(event, P.Done):
            self.busy = False
            self.post_message(TrainingEnded(event.status))
            self._set_state(f"{event.status}")
            self._if_never_started()
            self.refresh_runs()
        elif isinstance(event, P.Error):
            text = event.message
            if event.code == "protocol":
                tail = "\n".join(self.session.links["train"].stderr_tail()) or "(no output on stderr)"
                text = f"{text}\nThe engine's last stderr lines:\n{tail}"
            self.show_error(text)

    def on_engine_exited(self, message: EngineExited) -> None:
        was_busy, self.busy = self.busy, False
        if was_busy:
            self.post_message(TrainingEnded("exited"))
        self.refresh_runs()
        if not message.crashed:
            if was_busy:
                self._set_state("idle")
            return
        self._set_state("exited")
        self._if_never_started()
        self.query_one(EventLog).add_error(message.report.splitlines()[0])
        run = self._select_run(self.run_dir)
        if run is None or not run.resumable or not was_busy:
            self.show_error(message.report)
            return
        retries = int(self.history_config().get("auto_resume") or 0)
        tries = self.auto_resumes.get(str(run.path), 0)
        if tries < retries and message.cause is not None:
            self.auto_resumes[str(run.path)] = tries + 1
            try:
                config, note = retry_config(run_config(run.path), message.cause)
            except RunError as e:
                self.show_error(f"{message.report}\n{e}")
                return
            self.query_one(EventLog).write(f"auto_resume ({tries + 1} of {retries}): {note}")
            self._begin(config, run.path, resume=True)
            self.show_error(f"{message.report}\nResumed on its own ({tries + 1} of {retries}, auto_resume): {note}.")
            return
        left = " (auto_resume has used its retries)" if retries else ""
        self.show_error(f"{message.report}\nPress r to resume {run.name} from its newest checkpoint (update "
                        f"{checkpoint_update(run.last_checkpoint)}){left}.")

    def _if_never_started(self) -> None:
        """A run that ended before its first update leaves no "loading…" behind."""
        if self.history is None or self.history.last_step is None:
            self.query_one("#progress", ProgressBar).update(total=1, progress=0)
            self.query_one("#progress-text", Static).update(" did not start: see why above")

    def history_config(self) -> dict:
        """The config of the run this tab follows (what its engine said it runs with)."""
        return self.history.config if self.history is not None else {}

    def _select_run(self, run_dir: Optional[str]) -> Optional[RunInfo]:
        """Move the runs list's cursor to ``run_dir``'s row; that run, or None if it is not listed."""
        if not run_dir:
            return None
        for row, run in enumerate(self.runs):
            if Path(run.path).resolve() == Path(run_dir).resolve():
                self.query_one("#runs", DataTable).move_cursor(row=row)
                return run
        return None

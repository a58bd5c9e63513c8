"""The farense-tui app: five tabs (Preflight, Config, Train, Monitor, Chat) over engine subprocesses.

``make_app`` builds it for the command line and the tests alike; a test passes an
``engine_factory`` that returns a fake engine. This module never imports mlx.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import gc
import os
import re
import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from textual import events, on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import ModalScreen, Screen
from textual.widget import Widget
from textual.widgets import Header, TabbedContent
from textual.worker import Worker, WorkerState

from farense_core import protocol as P
from farense_core.rundir import RUNS_FOLDER, RunDir

from .attach import live_runs
from .collector import IdleCollector
from .engine_worker import EngineFactory, EngineLink, start_engine_process
from .messages import OpenRun, RecommendedConfig, TrainingEnded, TrainingStarted
from .session import Session
from .tabs.chat import ChatTab
from .tabs.config import ConfigTab
from .tabs.monitor import MonitorTab
from .tabs.preflight import PreflightTab
from .tabs.train import TrainTab
from .widgets.app_screen import AppScreen, AppTabs
from .widgets.help_screen import HelpScreen
from .widgets.key_footer import KeyFooter
from .widgets.choice_screen import Choice, ChoiceScreen

TAB_CLASSES = (PreflightTab, ConfigTab, TrainTab, MonitorTab, ChatTab)
SWITCH_SECONDS = 0.001  # how long a thread may hold the interpreter while another waits (Python's: 0.005)
WRITE_SECONDS = 0.05  # after a key's frame is drawn, until garbage passes may run again (the frame is written)


@dataclass
class AppOptions:
    engine_factory: EngineFactory = start_engine_process
    config_path: Optional[Path] = None  # a YAML config loaded into the Config tab at start
    checkpoints_dir: Path = Path(RUNS_FOLDER)
    clock: Callable[[], _dt.datetime] = _dt.datetime.now  # names new run folders
    theme: str = "textual-dark"


class FarenseApp(App):
    TITLE = "farense-tui"
    SUB_TITLE = "fine-tuning on MLX"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses elsewhere find it too

    # classes the screen gets by its size: the layout of 80x24 differs from 120x40's
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]

    BINDINGS = [
        # the tabs' labels show these keys (Session.title), so the footer leaves them out
        Binding("f1", "show_tab('preflight')", "Preflight", priority=True, show=False),
        Binding("f2", "show_tab('config')", "Config", priority=True, show=False),
        Binding("f3", "show_tab('train')", "Train", priority=True, show=False),
        Binding("f4", "show_tab('monitor')", "Monitor", priority=True, show=False),
        Binding("f5", "show_tab('chat')", "Chat", priority=True, show=False),
        Binding("question_mark", "help", "Keys", key_display="?"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, options: AppOptions) -> None:
        super().__init__()
        self.options = options
        self.links = {
            "train": EngineLink(self, "train", options.engine_factory, lambda: [self.train_tab]),
            "preflight": EngineLink(self, "preflight", options.engine_factory, lambda: [self.preflight_tab]),
            "chat": EngineLink(self, "chat", options.engine_factory, lambda: [self.chat_tab], keep_alive=True),
        }
        # Textual slides the tabs' underline for 0.3 s after each switch, a frame every 17 ms (a quarter of the
        # UI's CPU under a run of switches while training): the app draws at once unless the user asks for it
        if "TEXTUAL_ANIMATIONS" not in os.environ:
            self.animation_level = "none"
        self.collector = IdleCollector()  # full garbage passes when no key waits (collector.py)
        self._switch_interval = sys.getswitchinterval()  # given back as the app ends
        self.farewell = ""  # what the app says as it quits
        self._closing = False  # its terminal window closed: leaving
        self._run_question: ChoiceScreen | None = None  # quitting: what to do with the run that trains
        self.session = Session(self.links, options.checkpoints_dir, options.config_path, options.clock,
                               tab_keys=self.tab_keys())

    def get_default_screen(self) -> Screen:
        return AppScreen(id="_default")

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")  # one cell wide everywhere (⚽ is two in some terminals)
        with AppTabs(initial="preflight"):
            for tab_class in TAB_CLASSES:
                yield tab_class(self.session)
        yield KeyFooter()

    def tab_keys(self) -> dict[str, str]:
        """Tab id -> the key of the binding that shows it ("F3"), for the tabs' hints."""
        keys = {}
        for b in Binding.make_bindings(self.BINDINGS):
            found = re.fullmatch(r"show_tab\('(\w+)'\)", b.action)
            if found:
                keys[found.group(1)] = b.key.upper() if re.fullmatch(r"f\d+", b.key) else b.key
        return keys

    def on_mount(self) -> None:
        self.session.config = self.config_tab
        self.theme = self.options.theme
        self.collector.start()
        self.set_interval(1.0, self.collector.tick, name="idle-gc")
        # a frame goes out on Textual's writer thread, which waited up to 5 ms for the interpreter while
        # this thread went on with the messages after the frame
        sys.setswitchinterval(SWITCH_SECONDS)
        live = sorted(live_runs(self.options.checkpoints_dir), key=lambda p: RunDir(p).events.stat().st_mtime)
        if live and self.train_tab.attach(live[-1]):
            self.action_show_tab("train")  # a run left training in the background: follow it again
            self.notify(f"Following {live[-1].name}, which was training in the background.", title="Train")
        else:
            self.action_show_tab("preflight")  # focus in the first tab, so its keys work from the start
        if not self.is_headless and not terminal_gone(sys.__stdin__):  # the terminal it reads keys from
            self.set_interval(TERMINAL_CHECK_SECONDS, self._watch_terminal)
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(self._terminal_closed()))

    async def _watch_terminal(self) -> None:
        """Started by ``make run`` (or a shell that stays), the app gets no SIGHUP when its terminal window
        closes: it would go on for good, reading the hung-up terminal at ~70% of a core. It looks."""
        if terminal_gone(sys.__stdin__):
            await self._terminal_closed()

    async def _terminal_closed(self) -> None:
        """The terminal window closed: a run that trains is left training in the background (nothing is
        lost; the next farense-tui follows it), or stopped with a checkpoint if it cannot be (closing its
        engine waits for that); then the process ends at once. Textual's own exit would wait for ever on the
        hung-up terminal, and there is nothing left to draw or save (settings are saved only when asked)."""
        if self._closing:
            return
        self._closing = True
        if self.train_tab.busy:
            self.train_tab.detach()
        await self._close_engines()
        os._exit(0)

    INPUT = (events.Key, events.MouseDown, events.MouseUp, events.MouseScrollDown, events.MouseScrollUp)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, self.INPUT):
            self.collector.input_seen()
            if isinstance(self.screen, AppScreen):
                self.screen.draw_input()
            held = self.collector.hold()
            if held is not None:  # until the screen has drawn what the input changed, and written it out
                self.call_after_refresh(self.set_timer, WRITE_SECONDS, partial(self.collector.release, held))
        await super().on_event(event)

    # -- the tabs

    @property
    def preflight_tab(self) -> PreflightTab:
        return self.query_one(PreflightTab)

    @property
    def config_tab(self) -> ConfigTab:
        return self.query_one(ConfigTab)

    @property
    def train_tab(self) -> TrainTab:
        return self.query_one(TrainTab)

    @property
    def monitor_tab(self) -> MonitorTab:
        return self.query_one(MonitorTab)

    @property
    def chat_tab(self) -> ChatTab:
        return self.query_one(ChatTab)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "show_tab" and isinstance(self.screen, ModalScreen):
            return False  # a question or the keys' list is open: the tabs beneath it stay as they are
        return True

    def action_show_tab(self, tab: str) -> None:
        tabs = self.query_one(AppTabs)
        tabs.active = tab
        pane = self.query_one(f"#{tab}")
        # focus the tab's main control (or its first), so typing and its keys work at once; the first is
        # walked to, not queried (a query matches all of a tab's widgets first, some 400 in the Config tab)
        main = getattr(pane, "FOCUS_FIRST", "")
        candidates = pane.query(main) if main else pane.walk_children(Widget)
        first = next((w for w in candidates if w.focusable), None)
        if first is not None:
            # in the app's next message (set at once here, two alternating pairs of runs read p99 51 and 50 ms
            # against 48 and 44); the frame after the key refreshes the footer's keys (AppScreen._on_idle)
            first.focus()
        tabs.underline_active()

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "chat":
            self.chat_tab.refresh_choices()
            self.chat_tab.preload()
        elif event.pane.id == "train":
            self.train_tab.refresh_runs()
            self.train_tab.refresh_queue()
        elif event.pane.id == "monitor":
            self.monitor_tab.redraw()  # what changed while another tab showed

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        # workers catch what they expect; anything else is a bug, shown rather than lost
        if event.state == WorkerState.ERROR:
            what = event.worker.description or event.worker.name
            self.notify(f"{what} failed: {event.worker.error}", title="Error", severity="error", timeout=30)

    # -- messages between tabs

    def on_recommended_config(self, message: RecommendedConfig) -> None:
        if message.apply and self.config_tab.apply_recommended():
            self.notify(f"The {self.session.tab('config')} now holds the recommended settings.", title="Preflight")

    def on_open_run(self, message: OpenRun) -> None:
        self.action_show_tab("monitor")
        self.monitor_tab.open(message.path)

    def on_training_ended(self, message: TrainingEnded) -> None:
        """The quit's question about the run, still open as the run ends (a stop asked for just before, or the
        run done), has nothing left to ask: the quit goes on, unless the run ended in trouble, whose account
        the Train tab shows (ctrl+q again quits)."""
        if self.screen is not self._run_question or self.train_tab.busy:  # not asking, or resumed
            return
        if message.status in ("completed", "early_stopped", "stopped"):
            self._run_question.answer("stop")
        else:
            self._run_question.answer(None)
            self.action_show_tab("train")
            self.notify(f"The run ended ({message.status}) before you answered; the {self.session.tab('train')} "
                        f"says why. ctrl+q quits.", severity="warning", timeout=30)

    def on_training_started(self, message: TrainingStarted) -> None:
        self.monitor_tab.follow(message.history)
        # the app's widgets live until it quits: the collector's full passes need not walk them again
        # (one pass over them took some 100 ms of a busy machine, the slowest tab switches)
        gc.freeze()

    # -- keys, help, palette, quitting

    def help_rows(self) -> list[tuple[str, str, str]]:
        """(key, action, where) for every key: the app's, then each tab's (from their BINDINGS)."""

        def rows(bindings, where: str) -> list[tuple[str, str, str]]:
            return [(self.get_key_display(b), b.description, where) for b in Binding.make_bindings(bindings)]

        table = rows(self.BINDINGS, "everywhere")
        table += rows([("ctrl+p", "", "Command palette: every action by name"),
                       ("tab", "", "Next control"), ("shift+tab", "", "Previous control")], "everywhere")
        for tab_class in TAB_CLASSES:
            table += rows(tab_class.BINDINGS, tab_class.__name__.removesuffix("Tab"))
        table += rows([("enter", "", "Resume the selected run")], "Train (runs list)")
        table += rows([("enter", "", "Open the typed run")], "Monitor (run path)")
        table += rows([("enter", "", "Send the prompt")], "Chat")
        return table

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_rows()))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        t = self
        yield SystemCommand("Run preflight", "Check the machine, data and model", t.preflight_tab.action_run_preflight)
        yield SystemCommand("Run preflight with probe", "Also measure real steps at candidate sizes",
                            lambda: t.preflight_tab.action_run_preflight(True))
        yield SystemCommand("Apply recommended config", "Put preflight's recommendation in the Config tab",
                            t.config_tab.apply_recommended)
        yield SystemCommand("Load config YAML", "Load the file named in the Config tab", t.config_tab.action_load)
        yield SystemCommand("Save config YAML", "Save to the file named in the Config tab", t.config_tab.action_save)
        yield SystemCommand("Start training", "A new run with the Config tab's settings", t._train("action_start"))
        yield SystemCommand("Pause training", "Pause the run after the current update", t._train("action_pause"))
        yield SystemCommand("Continue training", "Continue a paused run", t._train("action_continue"))
        yield SystemCommand("Stop training", "Stop the run (it saves a checkpoint)", t._train("action_stop"))
        yield SystemCommand("Resume a run", "Resume the run selected in the Train tab's list",
                            t._train("action_resume_run"))
        yield SystemCommand("Open a run", "Show a past run in the Monitor tab", self._open_run_command)
        yield SystemCommand("Follow the live run", "Show the live run in the Monitor tab",
                            t.monitor_tab.action_follow_live)
        yield SystemCommand("Load chat model", "Load the Chat tab's model and adapter", t.chat_tab.action_load)
        yield SystemCommand("Stop the reply", "Stop the reply being written", t.chat_tab.action_stop_reply)
        yield SystemCommand("Compare base and adapter", "Toggle side-by-side answers in the Chat tab",
                            t.chat_tab.action_toggle_compare)
        yield SystemCommand("New conversation", "Clear the chat history", t.chat_tab.action_new_conversation)
        yield SystemCommand("Show keys", "Every key of the app", self.action_help)

    def _train(self, action: str) -> Callable[[], None]:
        def run() -> None:
            self.action_show_tab("train")
            getattr(self.train_tab, action)()

        return run

    def _open_run_command(self) -> None:
        self.action_show_tab("monitor")
        self.monitor_tab.query_one("#run-path").focus()

    async def action_quit(self) -> None:
        """Quit; first ask about unsaved settings, then about a run that trains."""
        if isinstance(self.screen, ChoiceScreen):
            return  # a question is on screen: answer it first
        config = self.config_tab
        if config.dirty:
            self.push_screen(ChoiceScreen(
                "The Config tab has unsaved changes.",
                f"Save them to {config.path()} (its comments and other keys are kept), or quit without them.",
                [Choice("s", "Save and quit", "save", "primary"), Choice("q", "Quit without saving", "discard",
                                                                           "error")]),
                self._config_answered)
            return
        await self._ask_about_training()

    async def _config_answered(self, answer: Optional[str]) -> None:
        if answer == "save":
            self.config_tab.save(self.config_tab.path(), confirmed=True,
                                 then=lambda: self.call_later(self._ask_about_training))
        elif answer == "discard":
            await self._ask_about_training()

    async def _ask_about_training(self) -> None:
        if self.train_tab.busy:
            self._run_question = ChoiceScreen(
                "A run is training.",
                f"{self.train_tab.run_dir or 'The run'}\nStop it with a checkpoint (it can be resumed later), or keep "
                f"it training in the background: start farense-tui again to follow it.",
                [Choice("s", "Stop", "stop", "error"), Choice("b", "Background", "background", "primary")])
            self.push_screen(self._run_question, self._quit_chosen)
            return
        await self._quit()

    async def _quit_chosen(self, choice: Optional[str]) -> None:
        self._run_question = None
        if choice == "background":
            run_dir = self.train_tab.run_dir
            if self.train_tab.detach():
                await self._close_engines()
                self.farewell = (f"{run_dir} goes on training in the background. Start farense-tui again to follow "
                                 f"it, or run: farense-tui attach {run_dir}")
                self.exit(message=self.farewell)
                return
            self.notify("The run could not be left in the background (its engine is gone, or it runs several "
                        "processes); stopping it with a checkpoint.", severity="warning")
        if choice in ("stop", "background"):
            await self._quit()

    async def _quit(self) -> None:
        if self.train_tab.busy:
            self.train_tab.quit_when_stopped()
            self.notify("Stopping the run: it saves a checkpoint, then the app quits…", timeout=30)
            self.session.links["train"].send(P.Stop())
            await asyncio.sleep(0)  # let the notice show before the wait
        elif any(link.running for link in self.links.values()):
            self.notify("Shutting the engine down…")
        await self._close_engines()
        self.exit()

    async def on_unmount(self) -> None:
        # however the app ends, its engine readers must end too (their threads would hold up the exit)
        try:
            await self._close_engines()
        finally:
            self.collector.stop()
            sys.setswitchinterval(self._switch_interval)
            gc.unfreeze()  # what the app held can be collected again (tests run many apps in one process)

    async def _close_engines(self) -> None:
        running = [link for link in self.links.values() if link.running]
        await asyncio.gather(*(asyncio.to_thread(link.close) for link in running))


TERMINAL_CHECK_SECONDS = 1.0


def terminal_gone(stream) -> bool:
    """Whether the terminal behind ``stream`` has hung up (its window closed)."""
    try:
        os.tcgetpgrp(stream.fileno())
        return False
    except (OSError, ValueError, AttributeError):  # EIO once hung up; closed or absent stream
        return True


def make_app(*, engine_factory: EngineFactory = start_engine_process, config_path: str | Path | None = None,
             checkpoints_dir: str | Path = RUNS_FOLDER, clock: Callable[[], _dt.datetime] = _dt.datetime.now,
             theme: str = "textual-dark") -> FarenseApp:
    return FarenseApp(AppOptions(
        engine_factory=engine_factory, config_path=Path(config_path) if config_path else None,
        checkpoints_dir=Path(checkpoints_dir), clock=clock, theme=theme,
    ))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="farense-tui", description="The farense-tui terminal app.")
    parser.add_argument("--config", default=os.environ.get("FARENSE_TUI_CONFIG"),
                        help="YAML config to load into the Config tab (env FARENSE_TUI_CONFIG)")
    parser.add_argument("--checkpoints", default=os.environ.get("FARENSE_TUI_CHECKPOINTS", RUNS_FOLDER),
                        help="folder of runs (env FARENSE_TUI_CHECKPOINTS; default: checkpoints)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    app = make_app(config_path=args.config, checkpoints_dir=args.checkpoints)
    app.run()
    return app.return_code or 0

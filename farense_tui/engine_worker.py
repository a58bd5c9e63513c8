"""Engine links: one engine subprocess per role, its events read on a thread worker and posted as
messages to the tabs that follow it. The thread never touches a widget; it only folds events into
a run's history (thread safe) and calls ``post_message``."""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Protocol, Sequence

from textual.app import App
from textual.message_pump import MessagePump

from farense_core import protocol as P
from farense_core.crash import explain_exit

from .messages import EngineEvent, EngineExited, ReplyProgress, TrainingProgress
from .runs import RunHistory


class Engine(Protocol):
    """What the UI needs of an engine: ``EngineProcess`` or a test's fake."""

    def send(self, record: P.Record) -> bool: ...

    def events(self) -> Iterator[P.Record]: ...

    def crash_report(self) -> str: ...

    @property
    def returncode(self) -> Optional[int]: ...

    def close(self, timeout: float = 10.0) -> None: ...

    def detach(self) -> bool: ...


EngineFactory = Callable[..., Engine]
"""role ("train", "preflight" or "chat") -> a started engine; for a training run of several processes it is also
given ``processes``."""


def start_engine_process(role: str, processes: int = 1) -> Engine:
    """The real engine: ``python -m engine``, or ``processes`` of them under mlx.launch training one run
    together (imported late: only a real session needs it)."""
    from .engine_client import EngineProcess, launch_command

    return EngineProcess(launch_command(processes) if processes > 1 else None).start()




class _Session:
    """One started engine, where its messages go and what its reader folds; a new start never
    mixes with an old one."""

    def __init__(self, engine: Engine, targets: list[MessagePump], history: Optional[RunHistory]):
        self.engine = engine
        self.targets = targets
        self.history = history
        self.closing = False
        self.replies: dict[str, str] = {}


class EngineLink:
    """One engine for one role. ``start`` runs it and reads it on a thread; ``send`` commands it."""

    def __init__(self, app: App, role: str, factory: EngineFactory,
                 targets: Callable[[], Sequence[MessagePump]], *, keep_alive: bool = False):
        self.app = app
        self.role = role
        self.factory = factory
        self.targets = targets
        self.keep_alive = keep_alive
        self._session: Optional[_Session] = None

    @property
    def running(self) -> bool:
        return self._session is not None

    def start(self, history: Optional[RunHistory] = None, engine: Optional[Engine] = None, processes: int = 1) -> None:
        """Start the engine (``processes`` of them for a shared training run; raises OSError if it cannot be
        started), or follow ``engine`` (a run trained in the background), and read it on a thread."""
        if engine is None:
            engine = self.factory(self.role, processes=processes) if processes > 1 else self.factory(self.role)
        # the targets are looked up here, on the UI thread; the reader only posts to them
        session = _Session(engine, list(self.targets()), history)
        self._session = session
        self.app.run_worker(
            lambda: self._read(session), thread=True, group=f"engine-{self.role}",
            name=f"engine-{self.role}", description=f"read the {self.role} engine's events",
            exit_on_error=False,
        )

    def send(self, command: P.Record) -> bool:
        """Send a command; False when no engine is running or it is gone."""
        session = self._session
        return session is not None and session.engine.send(command)

    def stderr_tail(self) -> list[str]:
        """The running engine's last stderr lines (empty for an engine that keeps none)."""
        session = self._session
        return list(getattr(session.engine, "stderr_tail", ())) if session else []

    def detach(self) -> bool:
        """Leave the engine's run training in the background (protocol.Detach); False when it cannot."""
        session = self._session
        if session is None:
            return False
        session.closing = True
        if session.engine.detach():
            return True
        session.closing = False
        return False

    def close(self) -> None:
        """Shut the engine down (blocks until it exits: call from a thread)."""
        session = self._session
        if session is not None:
            session.closing = True
            session.engine.close()

    # -- the worker thread

    @staticmethod
    def _post(session: _Session, make: Callable[[], object]) -> None:
        for target in session.targets:
            target.post_message(make())

    def _read(self, session: _Session) -> None:
        engine = session.engine
        failure: Optional[str] = None
        try:
            for event in engine.events():
                self._dispatch(session, event)
                # a job's end shuts the engine down, unless the link keeps it (chat)
                if isinstance(event, P.Finished) and not self.keep_alive and not session.closing:
                    session.closing = True
                    engine.close()
        except Exception as e:  # noqa: BLE001 - a broken pipe must reach the UI, not kill it
            failure = f"Reading the {self.role} engine's output failed ({type(e).__name__}: {e})."
        report = None if session.closing else (failure or engine.crash_report())
        cause = None
        if report is not None and failure is None:
            cause = explain_exit(engine.returncode, list(getattr(engine, "stderr_tail", ())))
        if self._session is session:  # a newer start has its own reader to report on
            self._session = None
            self._post(session, lambda: EngineExited(self.role, report, cause))

    def _dispatch(self, session: _Session, event: P.Record) -> None:
        role, history = self.role, session.history
        if history is not None:
            history.apply(event)
        if isinstance(event, P.Step):
            self._post(session, lambda: TrainingProgress(role, event))
            every = (history.config.get("steps_per_report") if history else None) or 10
            if event.step % int(every) == 0 or event.step == event.total_steps:
                self._post(session, lambda: EngineEvent(role, event))  # the event log's report lines
        elif isinstance(event, P.MemoryEvent):
            if event.action:  # a plain report only feeds the history the Monitor draws from
                self._post(session, lambda: EngineEvent(role, event))
        elif isinstance(event, P.Token):
            text = session.replies.get(event.id, "") + event.text
            session.replies[event.id] = text
            self._post(session, lambda: ReplyProgress(role, event.id, text))
        else:
            if isinstance(event, P.ReplyDone):
                session.replies.pop(event.id, None)
            self._post(session, lambda: EngineEvent(role, event))

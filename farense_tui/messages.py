"""Messages shared across tabs. Engine messages are posted from the engine worker's thread to the
tabs that follow that engine; high-rate ones (steps, streamed replies) can replace an
unprocessed predecessor, so a backlog collapses to the latest."""

from __future__ import annotations

from typing import Optional

from textual.message import Message

from farense_core import protocol as P
from farense_core.crash import ExitCause

from .runs import RunHistory


class EngineMessage(Message, bubble=False):
    """Base of what the engine worker posts to the tabs that follow an engine (they do not bubble:
    Textual resets ``bubble`` for each subclass, so each says so); ``role`` names the engine."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role


class EngineEvent(EngineMessage, bubble=False):
    """Every event that is not high-rate, in order."""

    def __init__(self, role: str, event: P.Record) -> None:
        super().__init__(role)
        self.event = event


class TrainingProgress(EngineMessage, bubble=False):
    """The latest finished update (replaceable: the run's history keeps every step)."""

    def __init__(self, role: str, step: P.Step) -> None:
        super().__init__(role)
        self.step = step

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TrainingProgress) and message.role == self.role


class ReplyProgress(EngineMessage, bubble=False):
    """The reply so far (replaceable by a later one of the same reply)."""

    def __init__(self, role: str, reply_id: str, text: str) -> None:
        super().__init__(role)
        self.reply_id = reply_id
        self.text = text

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ReplyProgress) and message.reply_id == self.reply_id


class EngineExited(EngineMessage, bubble=False):
    """The engine's event stream ended. ``report`` is set when it died unexpectedly."""

    def __init__(self, role: str, report: Optional[str] = None, cause: Optional[ExitCause] = None) -> None:
        super().__init__(role)
        self.report = report
        self.cause = cause  # why it died, when it did

    @property
    def crashed(self) -> bool:
        return self.report is not None


class RecommendedConfig(Message):
    """Preflight recommended a config (posted by the Preflight tab; the app hands it to Config)."""

    def __init__(self, recommended: dict, apply: bool = False) -> None:
        super().__init__()
        self.recommended = recommended
        self.apply = apply


class OpenRun(Message):
    """Show a run (folder or events.jsonl) in the Monitor tab."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path


class TrainingEnded(Message):
    """The run that trained ended (done, stopped, failed, or its engine gone): nothing trains now. ``status``
    is the run's (protocol.Done's), or "exited" when its engine ended without one."""

    def __init__(self, status: str) -> None:
        super().__init__()
        self.status = status


class TrainingStarted(Message):
    """A run started or resumed; the Monitor follows its live history."""

    def __init__(self, history: RunHistory) -> None:
        super().__init__()
        self.history = history

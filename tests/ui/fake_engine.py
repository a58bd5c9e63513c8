"""A fake engine for the UI tests: answers the protocol's commands by replaying recorded event
streams (no subprocess, no mlx). It honours pause, resume, stop and cancel like the real one."""

from __future__ import annotations

import collections
import queue
import threading
from pathlib import Path
from typing import Iterator, Optional

from farense_core import protocol as P
from farense_core.crash import crash_report
from farense_tui.runs import read_events

FIXTURES = Path(__file__).resolve().parent / "fixtures"
_END = object()


def recorded(name: str) -> list[P.Record]:
    events, bad = read_events(FIXTURES / name)
    assert bad == 0, f"{name} has {bad} unreadable lines"
    return events


class FakeEngine:
    """One fake engine. ``delay`` paces the replay (seconds between events); ``chat`` is "reply" or
    "unsupported" (answers chat commands like an engine without the chat handler);
    ``crash_after`` ends the stream after that many training events, as a dying engine would;
    ``garbage_after`` inserts the error a line that is not protocol turns into."""

    REPLY = "O Sporting Clube Farense foi fundado em 1910, em Faro, e joga no Estádio de São Luís."

    def __init__(self, role: str, *, delay: float = 0.0, chat: str = "reply", crash_after: Optional[int] = None,
                 garbage_after: Optional[int] = None, hold_evaluation: bool = False):
        self.role = role
        self.hold_evaluation = hold_evaluation
        self.delay = delay
        self.chat_mode = chat
        self.crash_after = crash_after
        self.garbage_after = garbage_after
        self.sent: list[P.Record] = []
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.returncode: Optional[int] = None
        self.adapter: Optional[str] = None
        self.model: Optional[str] = None
        self._out: "queue.Queue" = queue.Queue()
        self._resume = threading.Event()
        self._resume.set()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._emit(P.Hello(protocol=P.PROTOCOL_VERSION, engine_version="0.1.0-fake", mlx_version="0.29.3",
                           mlx_lm_version="0.28.2", device="cpu", blas="openblas", pid=1))
        self._emit(P.State(state="idle"))

    # -- the Engine interface

    def send(self, record: P.Record) -> bool:
        if self.returncode is not None:
            return False
        self.sent.append(record)
        if isinstance(record, P.Train):
            self._play(self._train, record)
        elif isinstance(record, P.Preflight):
            self._play(self._replay, recorded("preflight_events.jsonl")[1:])  # no second hello
        elif isinstance(record, P.Pause):
            self._resume.clear()
            self._emit(P.State(state="paused"))
        elif isinstance(record, P.Resume):
            self._resume.set()
            self._emit(P.State(state="training"))
        elif isinstance(record, P.Stop):
            self._stop.set()
            self._resume.set()
        elif isinstance(record, P.Cancel):
            self._cancel.set()
        elif isinstance(record, (P.ChatLoad, P.ChatAdapter, P.Chat, P.ChatReset)):
            self._chat(record)
        elif isinstance(record, P.Evaluate):
            self._cancel.clear()
            self._play(self._evaluate, record)
        return True

    def events(self) -> Iterator[P.Record]:
        while True:
            item = self._out.get()
            if item is _END:
                return
            yield item

    def crash_report(self) -> str:
        return crash_report(self.returncode, list(self.stderr_tail))

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._resume.set()
        self._end(0)

    # -- behaviour

    def sent_of(self, kind: type) -> list[P.Record]:
        return [r for r in self.sent if isinstance(r, kind)]

    def _emit(self, event: P.Record) -> None:
        if not self._ended.is_set():
            self._out.put(event)

    def _end(self, code: int) -> None:
        with self._lock:
            if self._ended.is_set():
                return
            self.returncode = code
            self._ended.set()
            self._out.put(_END)

    def _play(self, target, *args) -> None:
        threading.Thread(target=target, args=args, daemon=True).start()

    def _wait(self) -> None:
        if self.delay:
            self._stop.wait(self.delay)
        self._resume.wait()

    def _replay(self, events: list[P.Record]) -> None:
        for event in events:
            self._wait()
            self._emit(event)

    def _train(self, command: P.Train) -> None:
        events = recorded("run_events.jsonl")[1:]  # the fake said hello at start
        for n, event in enumerate(events, 1):
            self._wait()
            if self._stop.is_set() and not self._ended.is_set():
                step = max((e.step for e in events[:n] if isinstance(e, P.Step)), default=0)
                self._emit(P.Checkpoint(step=step, epoch=1, path=f"{command.run_dir}/checkpoints/step_{step:06d}",
                                        reason="stop"))
                self._emit(P.Done(status="stopped", summary={"steps": step}))
                self._emit(P.Finished(command="train"))
                self._emit(P.State(state="idle"))
                return
            if isinstance(event, P.Config):
                event = P.Config(config=command.config, run_dir=command.run_dir,
                                 resumed_from=f"{command.run_dir}/checkpoints/step_000010" if command.resume else None)
            if n == self.garbage_after:
                self._emit(P.Error(message="The engine wrote a line that is not protocol (event line is not JSON "
                                           "(Expecting value at column 1): 'Loading weights 100%|####|')).",
                                   code="protocol"))
                self.stderr_tail.append("Loading weights 100%|####|")
            if n == self.crash_after:
                self.stderr_tail.extend(["Traceback (most recent call last):",
                                         '  File "engine/trainer.py", line 210, in train_step',
                                         "RuntimeError: [metal::malloc] Resource limit exceeded."])
                self._end(1)
                return
            self._emit(event)

    def _chat(self, record: P.Record) -> None:
        if self.chat_mode == "unsupported":
            message = f"The engine cannot handle {record.type!r} commands yet."
            self._emit(P.Error(message=message, code="unsupported"))
            self._emit(P.Finished(command=record.type, status="failed", message=message))
            return
        if isinstance(record, P.ChatLoad):
            self.model, self.adapter = record.model, record.adapter
            self._emit(P.ChatLoaded(model=record.model, adapter=record.adapter, seconds=1.2))
        elif isinstance(record, P.ChatAdapter):
            self.adapter = record.adapter
            self._emit(P.ChatLoaded(model="(same)", adapter=record.adapter, seconds=0.1))
        elif isinstance(record, P.Chat):
            self._cancel.clear()
            self._play(self._reply, record, self.adapter)
            return
        self._emit(P.Finished(command=record.type))

    def _reply(self, chat: P.Chat, adapter: Optional[str]) -> None:
        words = (self.REPLY if adapter else "O Farense é um clube de futebol.").split(" ")
        text = ""
        for i, word in enumerate(words):
            self._wait()
            if self._cancel.is_set():
                self._emit(P.ReplyDone(id=chat.id, text=text, finish_reason="cancelled", generation_tokens=i))
                self._emit(P.Finished(command="chat", status="cancelled", id=chat.id))
                return
            piece = word if i == 0 else " " + word
            text += piece
            self._emit(P.Token(id=chat.id, text=piece))
        self._emit(P.ReplyDone(id=chat.id, text=text, finish_reason="stop", prompt_tokens=24, prompt_tps=310.0,
                               generation_tokens=len(words), generation_tps=42.0, time_to_first_token=0.12))
        self._emit(P.Finished(command="chat", id=chat.id))


    WRONG = {"kind": "jogo", "question": "Qual foi o resultado do Farense contra o Olhanense em 1935-03-17?",
             "expected": "O Farense jogou fora de casa e perdeu por 4-2 com o Olhanense (Olhanense 4-2 Farense).",
             "got": "O Farense jogou em casa e venceu o Olhanense por 2-1 (Farense 2-1 Olhanense).",
             "missing": ["number 4-2", "venue away"], "contradicted": ["number 2-1", "venue home"]}

    def _evaluate(self, command: P.Evaluate) -> None:
        """An evaluation of 4 questions in batches of 2: one answer wrong. With ``hold_evaluation`` it
        stops after the first batch until it is cancelled."""
        for done in (2, 4):
            self._wait()
            if self.hold_evaluation and done == 4:
                self._cancel.wait(30)
            if self._cancel.is_set():
                self._emit(P.Finished(command="evaluate", status="cancelled"))
                return
            self._emit(P.EvaluateProgress(done=done, total=4, probe=command.probe, system="adapter"))
        result = {"all": {"n": 4, "exact": 0.5, "facts": 0.75}, "token_exact": 0.5,
                  "by_kind": {"jogo": {"n": 3, "exact": 0.33, "facts": 0.67}, "clube": {"n": 1, "exact": 1.0, "facts": 1.0}},
                  "wrong": [self.WRONG], "seconds": 1.0}
        report = {"model": self.model, "adapter": self.adapter, "probes": [
            {"probe": command.probe, "source": f"{command.data}/train.jsonl", "n": 4, "systems": {"adapter": result}}]}
        self._emit(P.EvaluateDone(report=report, path=f"{command.data}/../checkpoints/run/eval.json"))
        self._emit(P.Finished(command="evaluate"))


class FakeFactory:
    """An engine factory that makes FakeEngines and remembers them."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.engines: list[FakeEngine] = []

    def __call__(self, role: str, processes: int = 1) -> FakeEngine:
        engine = FakeEngine(role, **self.kwargs)
        engine.processes = processes  # how many processes the app asked to train together
        self.engines.append(engine)
        return engine

    def last(self, role: str) -> FakeEngine:
        return [e for e in self.engines if e.role == role][-1]

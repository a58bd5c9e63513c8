"""The one protocol between the UI and the engine: JSON lines, one record per line.

Commands travel on the engine's stdin, events on its stdout. Every record is a
dataclass with a ``type`` tag; the first event is always ``hello`` carrying
``PROTOCOL_VERSION``. Records only ever gain kinds and optional fields, so an
older reader ignores fields it does not know. A line that is not a JSON object
of a known kind with the required fields raises ``ProtocolError``.

This module imports only the standard library and the core's sampler settings: the UI (which
must never import mlx) and the engine both use it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from .rundir import RUNS_FOLDER
from .sampling import DEFAULTS as SAMPLER_DEFAULTS

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 4 * 1024 * 1024


class ProtocolError(ValueError):
    """A line that is not a valid record of this protocol."""


# --------------------------------------------------------------------- base


@dataclass
class Record:
    type: ClassVar[str] = ""

    def to_dict(self) -> dict:
        d = {"type": self.type}
        d.update(dataclasses.asdict(self))
        return d

    def to_line(self) -> str:
        """One strict JSON line, without the trailing newline. A NaN or infinite number (a diverging
        loss) goes out as null, its field named in ``nonfinite`` ({"loss": "nan"}), and comes back as
        the same number when parsed."""
        d = self.to_dict()
        flagged: dict = {}
        d = _finite(d, "", flagged)
        if flagged:
            d["nonfinite"] = flagged
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _finite(value: Any, path: str, flagged: dict) -> Any:
    """value with non-finite floats replaced by None, their dotted paths recorded in flagged."""
    if isinstance(value, float) and not math.isfinite(value):
        flagged[path] = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), flagged) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{path}.{i}" if path else str(i), flagged) for i, v in enumerate(value)]
    return value


def _restore_nonfinite(obj: dict) -> None:
    """Put back the numbers ``Record.to_line`` sent as null."""
    flagged = obj.pop("nonfinite", None)
    if not isinstance(flagged, dict):
        return
    for path, what in flagged.items():
        if what not in ("nan", "inf", "-inf") or not isinstance(path, str):
            continue
        *parents, last = path.split(".")
        node: Any = obj
        for key in parents:
            node = node[int(key)] if isinstance(node, list) and key.isdigit() else (
                node.get(key) if isinstance(node, dict) else None)
            if node is None:
                break
        if isinstance(node, dict) and node.get(last, 0) is None:
            node[last] = float(what)
        elif isinstance(node, list) and last.isdigit() and int(last) < len(node) and node[int(last)] is None:
            node[int(last)] = float(what)


@dataclass
class Memory:
    """Memory figures in bytes. MLX's own counters, the process and the system."""

    mlx_active: int = 0
    mlx_cache: int = 0
    mlx_peak: int = 0
    rss: int = 0
    system_available: int = 0
    system_total: int = 0


# ------------------------------------------------------------------- events


@dataclass
class Hello(Record):
    type: ClassVar[str] = "hello"
    protocol: int
    engine_version: str
    mlx_version: str
    mlx_lm_version: str
    device: str
    blas: str
    pid: int = 0
    platform: str = ""
    processes: int = 1  # processes training together (mlx.launch); this engine is their leader


@dataclass
class Config(Record):
    """The resolved configuration a run uses (every key, defaults filled in)."""

    type: ClassVar[str] = "config"
    config: dict
    run_dir: str = ""
    resumed_from: Optional[str] = None


@dataclass
class Data(Record):
    type: ClassVar[str] = "data"
    format: str
    train_samples: int
    valid_samples: int
    train_tokens: dict = field(default_factory=dict)  # min, max, mean, median, p95, total
    valid_tokens: dict = field(default_factory=dict)
    truncated: int = 0  # training samples longer than max_seq_length
    batches_per_epoch: int = 0
    updates_per_epoch: int = 0
    total_updates: int = 0
    padding_efficiency: float = 0.0  # share of batch positions that are real tokens


@dataclass
class Model(Record):
    type: ClassVar[str] = "model"
    path: str
    parameters: int
    trainable_parameters: int
    quantization: Optional[dict] = None  # {"bits", "group_size"} of the base as stored
    base_dtype: str = ""  # dtype the base trains in
    num_layers: int = 0
    fine_tune_type: str = "lora"
    load_seconds: float = 0.0


@dataclass
class Step(Record):
    """One optimizer update finished."""

    type: ClassVar[str] = "step"
    step: int
    total_steps: int
    epoch: int
    epoch_progress: float  # 0..1 within the epoch
    loss: float
    learning_rate: float
    tokens: int  # loss-bearing tokens of this update
    trained_tokens: int
    tokens_per_second: float
    iterations_per_second: float
    elapsed: float
    eta: float
    memory: Memory = field(default_factory=Memory)
    # a run shared among processes: each one's {rank, tokens, tokens_per_second, mlx_active, mlx_peak, rss,
    # system_available} in this update; empty for one process
    ranks: list = field(default_factory=list)


@dataclass
class Eval(Record):
    type: ClassVar[str] = "eval"
    step: int
    epoch: int
    val_loss: float
    val_time: float
    best_val_loss: float
    is_best: bool = False


@dataclass
class Recall(Record):
    """Teacher-forced recall on the probe at a validation: the share of answers greedy decoding
    would reproduce exactly (every answer token the argmax), and of answer tokens that are."""

    type: ClassVar[str] = "recall"
    step: int
    epoch: int
    recall: float
    token_accuracy: float
    samples: int
    eval_time: float = 0.0
    trained: Optional[float] = None     # recall on the trained questions of the probe
    paraphrase: Optional[float] = None  # recall on the same facts asked in unseen phrasings
    best_recall: float = 0.0
    is_best: bool = False  # this update's adapter went to adapters/ (best_by: recall)


@dataclass
class Advice(Record):
    """Something the user should know about how training goes: plateau, overfitting, diverged,
    too_short. Shown, never acted on by itself."""

    type: ClassVar[str] = "advice"
    code: str
    message: str
    step: int = 0


@dataclass
class Checkpoint(Record):
    type: ClassVar[str] = "checkpoint"
    step: int
    epoch: int
    path: str
    reason: str = "periodic"  # periodic, epoch_end, stop, memory_guard, final, best


@dataclass
class MemoryEvent(Record):
    type: ClassVar[str] = "memory"
    memory: Memory
    action: str = ""  # "" (report), "cleared_cache"
    step: int = 0


@dataclass
class Warning(Record):  # noqa: A001 - protocol name
    type: ClassVar[str] = "warning"
    message: str
    code: str = ""


@dataclass
class Error(Record):
    type: ClassVar[str] = "error"
    message: str
    traceback: str = ""
    code: str = ""


@dataclass
class State(Record):
    """The engine's activity changed: idle, loading, training, paused, stopping, preflight, chatting."""

    type: ClassVar[str] = "state"
    state: str
    detail: str = ""


@dataclass
class Done(Record):
    type: ClassVar[str] = "done"
    status: str  # completed, early_stopped, stopped, memory_guard, disk_full, diverged, failed
    summary: dict = field(default_factory=dict)

    STATUSES: ClassVar[tuple] = ("completed", "early_stopped", "stopped", "memory_guard", "disk_full", "diverged",
                                 "failed")
    FINISHED: ClassVar[tuple] = ("completed", "early_stopped")  # the run is over: nothing to resume


@dataclass
class Finished(Record):
    """The end of a job: exactly one per job command (every command but pause, resume, stop, cancel
    and shutdown), after its last event. ``status``: ok, failed (an error event said why: ``message``),
    cancelled, or busy (refused: another job was running)."""

    type: ClassVar[str] = "finished"
    command: str
    status: str = "ok"
    message: str = ""
    id: str = ""  # the command's id, for commands that have one (chat)

    STATUSES: ClassVar[tuple] = ("ok", "failed", "cancelled", "busy")


@dataclass
class Log(Record):
    """A line of human-readable engine output (progress notes, not errors)."""

    type: ClassVar[str] = "log"
    message: str
    level: str = "info"


# Preflight


@dataclass
class Check(Record):
    type: ClassVar[str] = "check"
    category: str
    name: str
    status: str  # pass, warn, fail
    detail: str
    fix: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class ProbeResult(Record):
    type: ClassVar[str] = "probe"
    batch_size: int
    max_seq_length: int
    peak_memory: int
    tokens_per_second: float
    ok: bool
    note: str = ""
    measured: bool = True  # False: skipped (see note); ok is then False without meaning "does not fit"
    over_memory: bool = False  # measured or predicted over the memory limit


@dataclass
class PreflightDone(Record):
    type: ClassVar[str] = "preflight_done"
    report: dict
    recommended: dict
    report_path: str = ""
    recommended_path: str = ""


# Chat


@dataclass
class ChatLoaded(Record):
    type: ClassVar[str] = "chat_loaded"
    model: str
    adapter: Optional[str] = None
    seconds: float = 0.0


@dataclass
class Token(Record):
    type: ClassVar[str] = "token"
    id: str
    text: str


@dataclass
class ReplyDone(Record):
    type: ClassVar[str] = "reply_done"
    id: str
    text: str
    finish_reason: str  # stop, length, cancelled
    prompt_tokens: int = 0
    prompt_tps: float = 0.0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    time_to_first_token: float = 0.0
    peak_memory: int = 0
    cached_tokens: int = 0  # leading prompt tokens reused from the previous reply's KV cache


# Evaluation of answers


@dataclass
class EvaluateProgress(Record):
    type: ClassVar[str] = "evaluate_progress"
    done: int
    total: int
    probe: str = ""
    system: str = ""  # base or adapter


@dataclass
class EvaluateDone(Record):
    """The evaluation's report (the content of eval.json) and where it was written."""

    type: ClassVar[str] = "evaluate_done"
    report: dict
    path: str = ""


# ----------------------------------------------------------------- commands


@dataclass
class Train(Record):
    type: ClassVar[str] = "train"
    config: dict
    run_dir: str
    resume: bool = False
    from_checkpoint: Optional[int] = None  # resume from this update's checkpoint, not the newest


SIGNALS = ("pause", "resume", "stop", "cancel", "shutdown")  # commands that act on a job, not jobs


@dataclass
class Pause(Record):
    type: ClassVar[str] = "pause"


@dataclass
class Resume(Record):
    type: ClassVar[str] = "resume"


@dataclass
class Stop(Record):
    type: ClassVar[str] = "stop"


@dataclass
class Shutdown(Record):
    type: ClassVar[str] = "shutdown"


@dataclass
class Detach(Record):
    """The UI leaves and the run goes on: the engine writes only its run folder from now on
    (events.jsonl; its stderr to engine.log), ignores the end of its stdin, and exits when the job
    ends. A run is reattached by reading events.jsonl; pause, continue and stop then reach the
    engine as SIGUSR1, SIGUSR2 and SIGINT (its pid is in the run's lock)."""
    type: ClassVar[str] = "detach"


@dataclass
class Preflight(Record):
    type: ClassVar[str] = "preflight"
    config: dict = field(default_factory=dict)
    out: str = RUNS_FOLDER
    probe: bool = False
    probe_seconds: float = 120.0  # wall-clock budget for the probe's training steps


@dataclass
class ChatLoad(Record):
    type: ClassVar[str] = "chat_load"
    model: str
    adapter: Optional[str] = None


@dataclass
class ChatAdapter(Record):
    """Switch the adapter (or None for the bare base) without reloading the base."""

    type: ClassVar[str] = "chat_adapter"
    adapter: Optional[str] = None


@dataclass
class Chat(Record):
    type: ClassVar[str] = "chat"
    id: str
    message: str
    temperature: float = SAMPLER_DEFAULTS["temperature"]
    top_p: float = SAMPLER_DEFAULTS["top_p"]
    min_p: float = SAMPLER_DEFAULTS["min_p"]
    repetition_penalty: float = SAMPLER_DEFAULTS["repetition_penalty"]
    repetition_context_size: int = SAMPLER_DEFAULTS["repetition_context_size"]
    max_tokens: int = SAMPLER_DEFAULTS["max_tokens"]
    seed: Optional[int] = None
    system: Optional[str] = None
    keep_history: bool = True


@dataclass
class Evaluate(Record):
    """Ask the loaded chat model (and adapter) the questions of a probe, greedily, and score the
    answers; with ``base`` also the bare base, side by side."""

    type: ClassVar[str] = "evaluate"
    probe: str = "recall"  # recall, paraphrase, heldout, or a JSONL file
    n: int = 64
    data: str = "data"
    base: bool = True
    out: str = ""  # a folder for eval.json ("" : the adapter's run folder, if any)


@dataclass
class Cancel(Record):
    type: ClassVar[str] = "cancel"
    id: str = ""


@dataclass
class ChatReset(Record):
    type: ClassVar[str] = "chat_reset"


EVENTS: dict[str, type] = {
    c.type: c
    for c in (
        Hello, Config, Data, Model, Step, Eval, Recall, Advice, Checkpoint, MemoryEvent, Warning, Error,
        State, Done, Finished, Log, Check, ProbeResult, PreflightDone, ChatLoaded, Token, ReplyDone,
        EvaluateProgress, EvaluateDone,
    )
}
COMMANDS: dict[str, type] = {
    c.type: c
    for c in (
        Train, Pause, Resume, Stop, Shutdown, Detach, Preflight, ChatLoad, ChatAdapter, Chat, Cancel,
        ChatReset, Evaluate,
    )
}

# ------------------------------------------------------------------ parsing

_SIMPLE = {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,), list: (list,)}


def _check_value(kind: str, name: str, annotation: Any, value: Any) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
        return _check_value(kind, name, annotation, value)
    if annotation is Memory:
        if not isinstance(value, dict):
            raise ProtocolError(f"{kind}.{name} must be an object")
        return _build(Memory, value, f"{kind}.{name}")
    allowed = _SIMPLE.get(annotation)
    if allowed is None:
        return value
    # bool is an int in Python; keep the two apart on the wire
    if isinstance(value, bool) and annotation is not bool:
        raise ProtocolError(f"{kind}.{name} must be {annotation.__name__}, not a boolean")
    if not isinstance(value, allowed):
        raise ProtocolError(f"{kind}.{name} must be {annotation.__name__}, got {type(value).__name__}")
    return float(value) if annotation is float else value


def _build(cls: type, obj: dict, kind: str) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in obj:
            values[f.name] = _check_value(kind, f.name, hints[f.name], obj[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{kind} is missing the field '{f.name}'")
    return cls(**values)  # fields this version does not know are ignored


def _parse(line: str | bytes, registry: dict[str, type], what: str) -> Record:
    if isinstance(line, bytes):
        if len(line) > MAX_LINE_BYTES:
            raise ProtocolError(f"{what} line of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{what} line is not UTF-8: {e}") from None
    elif len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"{what} line of {len(line)} characters exceeds {MAX_LINE_BYTES}")
    line = line.strip()
    if not line:
        raise ProtocolError(f"empty {what} line")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{what} line is not JSON ({e.msg} at column {e.colno}): {line[:80]!r}") from None
    except RecursionError:
        raise ProtocolError(f"{what} line nests too deeply to read: {line[:80]!r}") from None
    except ValueError as e:  # e.g. an integer of thousands of digits
        raise ProtocolError(f"{what} line cannot be read ({e}): {line[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} line must be a JSON object, got {type(obj).__name__}")
    _restore_nonfinite(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(f"{what} line has no string 'type' field")
    cls = registry.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown {what} type {kind!r}; known: {', '.join(sorted(registry))}")
    return _build(cls, obj, kind)


def parse_event(line: str | bytes) -> Record:
    return _parse(line, EVENTS, "event")


def parse_command(line: str | bytes) -> Record:
    return _parse(line, COMMANDS, "command")


def event_from_dict(obj: dict) -> Record:
    """An event from an already decoded JSON object (e.g. a line of events.jsonl)."""
    return parse_event(json.dumps(obj))

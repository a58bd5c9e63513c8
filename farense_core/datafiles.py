"""Training data files: the formats mlx-lm reads, their validation and reading, and what a data
folder holds. Pure Python: ``farense-tui data check``, training, preflight and the evaluator read
examples through ``check_file``, so they accept and reject the same lines.

What ``check`` accepts is what mlx-lm's loader (``mlx_lm/tuner/datasets.py``) reads, one JSON object
per line, in the format of the file's FIRST line (mlx-lm picks the dataset class from it):

- chat: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}`` (optional
  ``tools`` list), ending with a non-empty assistant message: anything else looks cut short;
- completions: ``{"prompt": str, "completion": str}``; the prompt may be empty, the completion not;
- text: ``{"text": str}``, not empty.

A UTF-8 BOM at the start and CRLF line ends are accepted. Blank lines are problems: ``mlx_lm.lora``
fails on them (``json.loads("")``). Problems read ``FILE:LINE: what is wrong`` (``FILE: ...`` when it
is about the whole file).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

TRAIN_FILE, VALID_FILE = "train.jsonl", "valid.jsonl"
FORMATS = ("chat", "completions", "text")
# a data folder: train.jsonl, valid.jsonl and, optionally, trained facts asked in unseen phrasings
PARAPHRASE_FILE = "probe_paraphrase.jsonl"
ROLES = ("system", "user", "assistant", "tool")
BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """A data file training cannot read, as one sentence."""


@dataclass
class CheckResult:
    path: str
    counts: Counter = field(default_factory=Counter)           # format -> valid examples
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, message); line 0: the whole file
    samples: list[dict] = field(default_factory=list)          # valid examples, in file order
    lines: list[str] = field(default_factory=list)             # their JSON text, as written
    format: Optional[str] = None                                # the first example's format

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem_lines(self) -> list[str]:
        return [f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}" for line, msg in self.problems]

    def summary(self) -> str:
        n = sum(self.counts.values())
        formats = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        probs = "no problems" if self.ok else f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)}"
        return f"{self.path}: {n} example{'s' * (n != 1)}{f' ({formats})' if formats else ''}, {probs}"


def sample_format(obj: Any) -> Optional[str]:
    """The format mlx-lm would read this object as (its ``create_dataset`` order), or None."""
    if not isinstance(obj, dict):
        return None
    if "prompt" in obj and "completion" in obj:
        return "completions"
    if "messages" in obj:
        return "chat"
    if "text" in obj:
        return "text"
    return None


def _type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(v), type(v).__name__)


def _chat_problem(obj: dict) -> Optional[str]:
    messages = obj["messages"]
    if not isinstance(messages, list):
        return f"'messages' is {_type(messages)}, not a list of messages"
    if not messages:
        return "'messages' is empty"
    if "tools" in obj and obj["tools"] is not None and not isinstance(obj["tools"], list):
        return f"'tools' is {_type(obj['tools'])}, not a list"
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            return f"message {i} is {_type(m)}, not an object with role and content"
        role = m.get("role")
        if role not in ROLES:
            return f"message {i} has role {role!r}; use one of {', '.join(ROLES)}"
        if "content" not in m:
            if role == "assistant" and m.get("tool_calls"):
                continue
            return f"message {i} ({role}) has no 'content'"
        content = m["content"]
        if content is None and role == "assistant" and m.get("tool_calls"):
            continue
        if not isinstance(content, str):
            return f"message {i} ({role}) has content that is {_type(content)}; it must be a string"
    last = messages[-1]
    if last["role"] != "assistant":
        return f"the last message is from {last['role']!r}, not the assistant: the conversation looks cut short"
    if not last.get("tool_calls") and not (last.get("content") or "").strip():
        return "the last (assistant) message is empty: nothing to learn"
    return None


def sample_problem(obj: Any, fmt: Optional[str]) -> Optional[str]:
    """What is wrong with one parsed line, or None."""
    if fmt is None:
        if not isinstance(obj, dict):
            return f"is {_type(obj)}, not a JSON object"
        keys = ", ".join(repr(k) for k in list(obj)[:5]) or "no keys"
        return f"unknown format (keys {keys}); use 'messages', 'prompt' + 'completion', or 'text'"
    if fmt == "chat":
        return _chat_problem(obj)
    if fmt == "completions":
        for key in ("prompt", "completion"):
            if not isinstance(obj[key], str):
                return f"'{key}' is {_type(obj[key])}; it must be a string"
        if not obj["completion"].strip():
            return "'completion' is empty: nothing to learn"
        return None
    if not isinstance(obj["text"], str):
        return f"'text' is {_type(obj['text'])}; it must be a string"
    if not obj["text"].strip():
        return "'text' is empty"
    return None


def check_bytes(data: bytes, path: str = "<data>") -> CheckResult:
    result = CheckResult(str(path))
    if data.startswith(BOM):
        data = data[len(BOM):]
    if not data.strip():
        result.problems.append((0, "is empty: there are no examples in it"))
        return result
    if b"\x00" in data[:8192]:
        result.problems.append((0, "is a binary file, not JSON lines text"))
        return result
    complete = data.endswith(b"\n")
    raw_lines = data.split(b"\n")
    if complete:
        raw_lines.pop()
    first_line = 0
    for n, raw in enumerate(raw_lines, 1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            result.problems.append((n, f"is not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"))
            continue
        if not text.strip():
            result.problems.append((n, "is blank; mlx-lm's loader fails on blank lines, so delete it"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if n == len(raw_lines) and not complete:
                result.problems.append((n, f"is cut short ({e.msg}, column {e.colno}, and no final newline): "
                                           "the file looks truncated"))
            else:
                result.problems.append((n, f"is not valid JSON: {e.msg} (column {e.colno})"))
            continue
        fmt = sample_format(obj)
        problem = sample_problem(obj, fmt)
        if problem is None and result.format is not None and fmt != result.format:
            problem = (f"is in {fmt} format but line {first_line} is {result.format}; mlx-lm reads the whole file "
                       "in the first line's format, so use one format per file")
        if problem is not None:
            result.problems.append((n, problem))
            continue
        if result.format is None:
            result.format, first_line = fmt, n
        result.counts[fmt] += 1
        result.samples.append(obj)
        result.lines.append(text)
    return result


def check_file(path: str | Path) -> CheckResult:
    """Validate one JSONL training file; never raises for bad input (problems are in the result)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return CheckResult(str(path), problems=[(0, "no such file; check the path")])
    except IsADirectoryError:
        return CheckResult(str(path), problems=[(0, "is a folder with no .jsonl files in it; name the data files, "
                                                    f"e.g. {p / 'train.jsonl'}")])
    except OSError as e:
        return CheckResult(str(path), problems=[(0, f"cannot be read ({e.strerror or e}); check its permissions")])
    return check_bytes(data, str(path))




def read_examples(path: str | Path, required: bool = True) -> list[dict]:
    """The examples of a training file, read as ``check_file`` reads them. A missing or empty file is
    [] unless ``required``; any problem is a ``DataError`` naming the first one."""
    p = Path(path)
    if not required and (not p.is_file() or not p.read_bytes().strip()):
        return []
    result = check_file(p)
    if result.problems:
        more = len(result.problems) - 1
        also = f" (and {more} more problem{'s' * (more != 1)})" if more else ""
        raise DataError(f"{result.problem_lines()[0]}{also}; run 'farense-tui data check {p}' to see every problem "
                        f"and fix them.")
    return result.samples


def question_answer(row: dict) -> Optional[tuple[list[dict], str, str]]:
    """(the messages before the answer, the question shown, the answer), or None for text data."""
    fmt = sample_format(row)
    if fmt == "completions" and isinstance(row["prompt"], str) and isinstance(row["completion"], str):
        return [{"role": "user", "content": row["prompt"]}], row["prompt"], row["completion"]
    if fmt == "chat" and isinstance(row["messages"], list) and len(row["messages"]) >= 2:
        *before, last = row["messages"]
        if not (isinstance(last, dict) and last.get("role") == "assistant" and isinstance(last.get("content"), str)):
            return None
        users = [m.get("content", "") for m in before if isinstance(m, dict) and m.get("role") == "user"]
        return before, (users[-1] if users else ""), last["content"]
    return None

"""Recall probes: sets of questions with reference answers, and teacher-forced recall over them.

A probe is a sample of chat (or prompt/completion) examples: trained questions (from
``train.jsonl``), the same facts asked in phrasings the model never saw
(``probe_paraphrase.jsonl``), held-out facts (``valid.jsonl``), or any JSONL file.

**Teacher-forced recall.** Greedy decoding reproduces the reference answer exactly when, with
the reference fed in, every answer token (through the end-of-turn token) is the model's argmax:
each greedy step then picks the next reference token and finally stops. So one forward pass
over the probe tells what greedy generation would answer exactly, without generating: the
trainer measures it at every validation; ``engine.evaluate`` checks it against real generation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from farense_core import batching
from farense_core.datafiles import (
    PARAPHRASE_FILE,
    TRAIN_FILE,
    VALID_FILE,
    DataError,
    question_answer,
    read_examples,
)

PROBES = ("recall", "paraphrase", "heldout")
PROBE_FILES = {"recall": TRAIN_FILE, "paraphrase": PARAPHRASE_FILE, "heldout": VALID_FILE}
SAMPLE_STREAM = 7  # the probe's sample is drawn apart from the data order's random streams


class ProbeError(ValueError):
    """One sentence: which probe cannot be read, and what to do."""


@dataclass
class ProbeItem:
    kind: str
    question: str
    answer: str
    tokens: list[int]  # prompt (chat template, generation prompt included) + answer + end of turn
    offset: int        # where the answer starts
    end: int           # one past the answer's end-of-turn token (or the sequence's end)
    stops: bool = True  # the answer ends with an end-of-turn token (generation stops on it)

    @property
    def prompt(self) -> list[int]:
        return self.tokens[:self.offset]

    @property
    def answer_tokens(self) -> list[int]:
        """What greedy generation must produce, end-of-turn token excluded."""
        return self.tokens[self.offset:self.end - 1 if self.stops else self.end]


def probe_path(data_dir: str | Path, probe: str) -> Path:
    """The file of a named probe in a data folder, or ``probe`` itself as a path."""
    return Path(data_dir) / PROBE_FILES[probe] if probe in PROBE_FILES else Path(probe)


def read_rows(path: Path) -> list[dict]:
    """A probe file's questions and answers, read as training reads data."""
    if not Path(path).is_file():
        raise ProbeError(f"The probe file {path} does not exist; build it with 'farense-tui data build' "
                         f"or give a JSONL file of questions and answers.")
    try:
        rows = read_examples(path)
    except DataError as e:
        raise ProbeError(str(e)) from None
    if rows and question_answer(rows[0]) is None:
        raise ProbeError(f"{path} holds text, not questions with answers (chat ending with the assistant, or prompt "
                         f"and completion); give a probe of questions and answers.")
    return rows


def sample_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows drawn with ``seed`` (all of them when there are fewer), in file order."""
    if n <= 0 or n >= len(rows):
        return list(rows)
    picked = sorted(random.Random(f"{SAMPLE_STREAM}:{seed}").sample(range(len(rows)), n))
    return [rows[i] for i in picked]


def tokenize(rows: list[dict], tokenizer) -> list[ProbeItem]:
    """Each row as the trainer tokenizes it (mlx-lm's chat template, prompt masked): the prompt is
    exactly what chat sends for that question, so recall and generation see the same tokens."""
    eos = set(getattr(tokenizer, "eos_token_ids", None) or [tokenizer.eos_token_id])
    items = []
    for row in rows:
        before, question, answer = question_answer(row)
        messages = before + [{"role": "assistant", "content": answer}]
        tokens = list(tokenizer.apply_chat_template(messages, return_dict=False))
        offset = len(tokenizer.apply_chat_template(before, add_generation_prompt=True, return_dict=False))
        end = next((i + 1 for i in range(offset, len(tokens)) if tokens[i] in eos), None)
        items.append(ProbeItem(str(row.get("kind", "")), question, answer, tokens, offset,
                               end or len(tokens), end is not None))
    return items


@dataclass
class Recall:
    """Teacher-forced figures of one probe."""

    exact: list[bool]       # per item: every answer token is the argmax
    correct_tokens: int
    answer_tokens: int

    @property
    def recall(self) -> float:
        return sum(self.exact) / len(self.exact) if self.exact else 0.0

    @property
    def token_accuracy(self) -> float:
        return self.correct_tokens / self.answer_tokens if self.answer_tokens else 0.0


def teacher_forced(model, items: list[ProbeItem], batch_size: int = 8, max_tokens: int | None = None) -> Recall:
    """One forward pass per batch (similar lengths together, at most ``max_tokens`` positions): is each
    answer token the argmax?"""
    exact = [False] * len(items)
    correct = total = 0
    for batch in batching.budget_batches([it.end - 1 for it in items], batch_size, max_tokens):
        width = max(items[i].end for i in batch)
        arr = np.zeros((len(batch), width), np.int32)
        mask = np.zeros((len(batch), width - 1), np.bool_)
        for row, i in enumerate(batch):
            it = items[i]
            arr[row, :it.end] = it.tokens[:it.end]
            mask[row, it.offset - 1:it.end - 1] = True  # position t predicts token t+1
        inputs, targets, m = mx.array(arr[:, :-1]), mx.array(arr[:, 1:]), mx.array(mask)
        hits = (mx.argmax(model(inputs), axis=-1) == targets) & m
        per_row = hits.sum(axis=1)
        need = m.sum(axis=1)
        mx.eval(per_row, need)
        for row, i in enumerate(batch):
            got, want = int(per_row[row].item()), int(need[row].item())
            exact[i] = got == want
            correct += got
            total += want
    return Recall(exact, correct, total)

"""``farense-tui data from-docs``: training data from a folder of documents.

    farense-tui data from-docs FOLDER --out DIR [--model M] [--questions N] [--phrasings N]
                               [--max-chars N] [--valid-fraction F] [--seed N] [--batch-size N] [--force]

Reads the Markdown, text, PDF and Word files under FOLDER and cuts them into passages
(``farense_core.passages``). Writes into DIR:

- ``text/train.jsonl``, ``text/valid.jsonl``: one ``{"text": passage}`` per passage, for continued
  pretraining, split as ``farense-tui data split`` splits (``datatools.split_indices``);
- with ``--model``: ``qa/train.jsonl``, ``qa/valid.jsonl``: chat samples ``{"messages": [user question,
  assistant answer]}``. The model (loaded as chat loads it, ``engine.chat.ChatSession``) is asked, in
  batches (mlx-lm's ``batch_generate``, greedy), for N question-answer pairs per passage in the
  passage's language, then for other phrasings of each kept question; every pair and phrasing goes
  through ``farense_core.docqa``'s grounding rule, and what it drops is counted by reason;
- ``from_docs.json``: the report (settings, counts, every kept pair and every dropped one with why),
  written last: a DIR that has it is finished and is only made again with ``--force``.

While the model works, ``from_docs.partial.json`` holds the passages done (rewritten atomically after
each batch), so the same command run again goes on from there; other settings, or ``--force``, start
over.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from farense_core.config import atomic_write_text
from farense_core.docqa import (DEFAULT_PHRASINGS, DEFAULT_QUESTIONS, Source, detect_language, ground,
                                ground_phrasing, parse_lines, parse_pairs, qa_messages, rephrase_messages)
from farense_core.format import duration
from farense_core.models import ModelNotFoundError, locate_model
from farense_core.passages import DEFAULT_MAX_CHARS, DocumentError, Passage, document_passages, find_documents
from farense_core.scoring import normalize

from .datatools import DataToolError, split_indices

TEXT_DIR, QA_DIR = "text", "qa"
REPORT_FILE, STATE_FILE = "from_docs.json", "from_docs.partial.json"
SPLIT_FILES = ("train.jsonl", "valid.jsonl")
PAIR_TOKENS = 64       # generation budget per pair asked
PHRASING_TOKENS = 32   # and per phrasing asked

# chats and their max_tokens -> the replies, in order
Generate = Callable[[list, list], list]


@dataclass
class Options:
    folder: str
    out: str
    model: Optional[str] = None
    questions: int = DEFAULT_QUESTIONS
    phrasings: int = DEFAULT_PHRASINGS  # ways each kept question is asked: itself and phrasings - 1 others
    max_chars: int = DEFAULT_MAX_CHARS
    valid_fraction: float = 0.1
    seed: int = 0
    batch_size: int = 8    # passages (and questions to rephrase) generated together
    force: bool = False


class Layout:
    """What from-docs writes in its output folder."""

    def __init__(self, out: str | Path):
        self.root = Path(out)
        self.report = self.root / REPORT_FILE
        self.state = self.root / STATE_FILE
        self.text = [self.root / TEXT_DIR / f for f in SPLIT_FILES]
        self.qa = [self.root / QA_DIR / f for f in SPLIT_FILES]

    def outputs(self) -> list[Path]:
        return [*self.text, *self.qa, self.report]

    def clear(self) -> None:
        for path in (*self.outputs(), self.state):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- generation


def session_generator(model: str, batch_size: int) -> Generate:
    """Greedy replies from ``model`` loaded as chat loads it, through mlx-lm's ``batch_generate``."""
    from mlx_lm.generate import batch_generate

    from .chat import ChatSession

    session = ChatSession.load(model)

    def generate(chats: list, max_tokens: list) -> list:
        prompts = [session.encode(chat) for chat in chats]
        response = batch_generate(session.model, session.tokenizer, prompts, max_tokens=max_tokens,
                                  completion_batch_size=batch_size, prefill_batch_size=min(batch_size, 8))
        return list(response.texts)

    return generate


def ask(passages: list[Passage], generate: Generate, questions: int, phrasings: int) -> list[dict]:
    """A record per passage: its language, the kept pairs with their phrasings, and every drop with
    its reason. Pairs first (one chat per passage), then other phrasings of the kept questions."""
    sources = [Source(p.text) for p in passages]
    langs = [detect_language(p.text) for p in passages]
    replies = generate([qa_messages(p.text, questions, lang) for p, lang in zip(passages, langs)],
                       [questions * PAIR_TOKENS] * len(passages))
    records = []
    for p, source, lang, reply in zip(passages, sources, langs, replies):
        record = {"source": p.source, "index": p.index, "key": p.key, "language": lang, "asked": questions,
                  "parsed": 0, "pairs": [], "dropped": [], "phrasings_asked": 0, "phrasings_parsed": 0}
        pairs = parse_pairs(reply)[:questions]
        record["parsed"] = len(pairs)
        if not pairs:
            record["dropped"].append({"kind": "reply", "reason": "no pairs in the reply", "detail": reply[:200]})
        seen: set[str] = set()
        for question, answer in pairs:
            verdict = ground(question, answer, source, frozenset(seen))
            seen.add(normalize(question))
            if verdict.kept:
                record["pairs"].append({"question": question, "answer": answer, "phrasings": [question]})
            else:
                record["dropped"].append({"kind": "pair", "question": question, "answer": answer,
                                          "reason": verdict.reason, "detail": verdict.detail})
        records.append(record)
    if phrasings > 1:
        todo = [(r, pair, source, lang) for r, source, lang in zip(records, sources, langs) for pair in r["pairs"]]
        replies = generate([rephrase_messages(pair["question"], phrasings - 1, lang) for _, pair, _, lang in todo],
                           [(phrasings - 1) * PHRASING_TOKENS] * len(todo))
        for (record, pair, source, _), reply in zip(todo, replies):
            lines = parse_lines(reply)[:phrasings - 1]
            record["phrasings_asked"] += phrasings - 1
            record["phrasings_parsed"] += len(lines)
            for line in lines:
                seen = frozenset(normalize(q) for r in record["pairs"] for q in r["phrasings"])
                verdict = ground_phrasing(line, source, seen)
                if verdict.kept:
                    pair["phrasings"].append(line)
                else:
                    record["dropped"].append({"kind": "phrasing", "question": line, "of": pair["question"],
                                              "reason": verdict.reason, "detail": verdict.detail})
    return records


# --------------------------------------------------------------------------------------- output


def write_split(files: list[Path], samples: list[dict], valid_fraction: float,
                seed: int) -> Optional[tuple[int, int]]:
    """train/valid files split as ``farense-tui data split`` splits, at least one sample in valid;
    None (nothing written) under two samples."""
    if len(samples) < 2:
        return None
    fraction = valid_fraction if round(len(samples) * valid_fraction) >= 1 else 1 / len(samples)
    parts = split_indices(len(samples), fraction, seed)
    for path, idx in zip(files, parts):
        atomic_write_text(path, "".join(json.dumps(samples[i], ensure_ascii=False) + "\n" for i in idx))
    return len(parts[0]), len(parts[1])


def qa_samples(records: list[dict]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": pair["answer"]}]}
            for r in records for pair in r["pairs"] for q in pair["phrasings"]]


def tally(records: list[dict]) -> dict:
    pairs = [d for r in records for d in r["dropped"] if d["kind"] in ("pair", "reply")]
    phrasings = [d for r in records for d in r["dropped"] if d["kind"] == "phrasing"]
    return {
        "passages": len(records),
        "languages": dict(Counter(r["language"] or "unknown" for r in records)),
        "pairs_asked": sum(r["asked"] for r in records),
        "pairs_parsed": sum(r["parsed"] for r in records),
        "pairs_kept": sum(len(r["pairs"]) for r in records),
        "pairs_dropped": dict(Counter(d["reason"] for d in pairs if d["kind"] == "pair")),
        "replies_without_pairs": sum(1 for d in pairs if d["kind"] == "reply"),
        "phrasings_asked": sum(r["phrasings_asked"] for r in records),
        "phrasings_parsed": sum(r["phrasings_parsed"] for r in records),
        "phrasings_kept": sum(len(p["phrasings"]) - 1 for r in records for p in r["pairs"]),
        "phrasings_dropped": dict(Counter(d["reason"] for d in phrasings)),
    }


def _reasons(counts: dict) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def describe_qa(t: dict) -> list[str]:
    dropped = sum(t["pairs_dropped"].values())
    lines = [f"pairs: asked {t['pairs_asked']} ({t['passages']} passages), the replies held {t['pairs_parsed']}"
             + (f" ({t['replies_without_pairs']} replies held none)" if t["replies_without_pairs"] else "")
             + f"; kept {t['pairs_kept']}, dropped {dropped}"
             + (f": {_reasons(t['pairs_dropped'])}" if dropped else "")]
    if t["phrasings_asked"]:
        dropped = sum(t["phrasings_dropped"].values())
        lines.append(f"other phrasings: asked {t['phrasings_asked']}, the replies held {t['phrasings_parsed']}; "
                     f"kept {t['phrasings_kept']}, dropped {dropped}"
                     + (f": {_reasons(t['phrasings_dropped'])}" if dropped else ""))
    return lines


# ------------------------------------------------------------------------------------- progress


class Progress:
    """A rich progress bar on a terminal (stderr), a line per batch otherwise."""

    def __init__(self, total: int, done: int, tty: bool):
        self.total, self.bar = total, None
        if tty:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Bar(TextColumn("[bold]from-docs"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                           TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.bar.add_task("passages", total=total, completed=done, info="")
            self.bar.start()

    def update(self, done: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, info=info)
        else:
            print(f"passages {done}/{self.total}: {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# ------------------------------------------------------------------------------------------ run


def read_passages(folder: Path, out: Path, max_chars: int) -> tuple[list[Passage], list[dict]]:
    if not folder.is_dir():
        raise DataToolError(f"The folder {folder} does not exist; pass the folder holding your documents.")
    documents = find_documents(folder, skip=[out])
    if not documents:
        raise DataToolError(f"{folder} holds no .md, .txt, .pdf or .docx files; put your documents there, or "
                            "pass the folder that holds them.")
    passages, listed = [], []
    for path in documents:
        try:
            found = document_passages(path, folder, max_chars)
        except DocumentError as e:
            raise DataToolError(str(e)) from None
        passages += found
        listed.append({"path": path.relative_to(folder).as_posix(), "passages": len(found)})
    if len(passages) < 2:
        raise DataToolError(f"{folder} gives {len(passages)} passage{'s' * (len(passages) != 1)}; training needs "
                            "at least 2 (one for valid.jsonl), so add documents or lower --max-chars.")
    return passages, listed


def _settings(opts: Options, model: Optional[str]) -> dict:
    """What a partial run must share with this command to be continued by it."""
    return {"folder": str(Path(opts.folder).resolve()), "model": model, "questions": opts.questions,
            "phrasings": opts.phrasings, "max_chars": opts.max_chars}


def _load_state(layout: Layout, settings: dict, force: bool) -> dict:
    """The passages done by an unfinished run of the same command (and clears what --force replaces)."""
    if layout.root.exists() and not layout.root.is_dir():
        raise DataToolError(f"--out {layout.root} is a file; name a folder.")
    if force:
        layout.clear()
    if layout.report.exists():
        raise DataToolError(f"{layout.root} holds a finished from-docs run ({REPORT_FILE}); pass --force to make "
                            "it again, or choose another --out.")
    if layout.state.exists():
        try:
            state = json.loads(layout.state.read_text(encoding="utf-8"))
            if not (isinstance(state, dict) and isinstance(state.get("done"), dict)):
                raise ValueError("not a from-docs state")
        except ValueError:
            raise DataToolError(f"{layout.state} is damaged; pass --force to start over.") from None
        if state.get("settings") != settings:
            theirs = ", ".join(f"{k} {v}" for k, v in state.get("settings", {}).items() if settings.get(k) != v)
            raise DataToolError(f"{layout.root} holds an unfinished from-docs run with other settings ({theirs}); "
                                "run that command again to finish it, or pass --force to start over.")
        return state
    for path in layout.outputs():
        if path.exists():
            raise DataToolError(f"{path} already exists; pass --force to overwrite it, or choose another --out.")
    return {"settings": settings, "done": {}}


def run(opts: Options, make_generator: Callable[[str, int], Generate] = session_generator,
        tty: Optional[bool] = None, after_batch: Optional[Callable[[int], None]] = None) -> dict:
    """Make the data set; returns the report. ``after_batch(done)`` is called once a batch is saved."""
    start = time.perf_counter()
    folder, layout = Path(opts.folder), Layout(opts.out)
    model = None
    if opts.model:
        try:
            model = locate_model(opts.model)
        except ModelNotFoundError as e:
            raise DataToolError(str(e)) from None
    passages, documents = read_passages(folder, layout.root, opts.max_chars)
    state = _load_state(layout, _settings(opts, model), opts.force)
    print(f"{len(documents)} document{'s' * (len(documents) != 1)}, {len(passages)} passages of at most "
          f"{opts.max_chars} characters", flush=True)
    done: dict = state["done"]
    if model is not None:
        todo = [p for p in passages if p.key not in done]
        if len(todo) < len(passages):
            print(f"continuing: {len(passages) - len(todo)} of {len(passages)} passages were done before", flush=True)
        if todo:
            generate = _loaded(make_generator, model, opts.batch_size)
            progress = Progress(len(passages), len(passages) - len(todo),
                                sys.stderr.isatty() if tty is None else tty)
            try:
                for i in range(0, len(todo), opts.batch_size):
                    for record in ask(todo[i:i + opts.batch_size], generate, opts.questions, opts.phrasings):
                        done[record["key"]] = record
                    atomic_write_text(layout.state, json.dumps(state, ensure_ascii=False))
                    n = sum(p.key in done for p in passages)
                    kept = sum(len(done[p.key]["pairs"]) for p in passages if p.key in done)
                    progress.update(n, f"{kept} pair{'s' * (kept != 1)} kept")
                    if after_batch is not None:
                        after_batch(n)
            except KeyboardInterrupt:
                progress.close()
                n = sum(p.key in done for p in passages)
                print(f"stopped with {n} of {len(passages)} passages done; run the same command again to go on.",
                      file=sys.stderr)
                raise
            progress.close()

    text = write_split(layout.text, [{"text": p.text} for p in passages], opts.valid_fraction, opts.seed)
    report = {"folder": str(folder), "model": model, "created": _dt.datetime.now().isoformat(timespec="seconds"),
              "seconds": 0.0, "options": asdict(opts), "documents": documents,
              "text": {"passages": len(passages), "train": text[0], "valid": text[1]}}
    for path, k in zip(layout.text, text):
        print(f"{path}: {k} passage{'s' * (k != 1)}")
    if model is not None:
        records = [done[p.key] for p in passages]
        samples = qa_samples(records)
        qa = write_split(layout.qa, samples, opts.valid_fraction, opts.seed)
        counts = tally(records)
        report["qa"] = {**counts, "samples": len(samples), "train": qa[0] if qa else 0, "valid": qa[1] if qa else 0}
        report["records"] = records
        for line in describe_qa(counts):
            print(line)
        if qa:
            for path, k in zip(layout.qa, qa):
                print(f"{path}: {k} question{'s' * (k != 1)}")
        else:
            print(f"{len(samples)} question{'s' * (len(samples) != 1)} kept: too few to split, so {QA_DIR}/ was "
                  "not written; try a larger instruct model with --model.")
    report["seconds"] = round(time.perf_counter() - start, 2)
    atomic_write_text(layout.report, json.dumps(report, indent=1, ensure_ascii=False))
    layout.state.unlink(missing_ok=True)
    what = "every kept and dropped pair, with why" if model is not None else "the report"
    print(f"{what}: {layout.report} ({duration(time.perf_counter() - start)})")
    return report


def _loaded(make_generator: Callable[[str, int], Generate], model: str, batch_size: int) -> Generate:
    from .chat import ChatError

    print(f"loading {model}", file=sys.stderr, flush=True)
    try:
        return make_generator(model, batch_size)
    except ChatError as e:
        raise DataToolError(str(e)) from None

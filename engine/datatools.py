"""``farense-tui data``: build the Farense data set; check, split, measure and preview JSONL training files.

    python -m engine.datatools build [--sources DIR] [--out DIR] [--seed N] [--force]
    python -m engine.datatools check FILE...
    python -m engine.datatools split FILE [--valid-fraction 0.1] [--seed N] --out DIR [--force]
    python -m engine.datatools stats FILE... --model M [--max-seq-length N]
    python -m engine.datatools from-docs FOLDER --out DIR [--model M] [--questions N] [--force]

``check`` and ``split`` are pure Python (what a valid file is: ``farense_core.datafiles``);
``stats`` tokenizes as training does (``engine.step.tokenize``, mlx-lm's loader and datasets) only
when it runs. ``from-docs`` (training data from a folder of documents) is ``engine.docs_data``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from farense_core.config import BY_KEY, atomic_write_text
from farense_core.datafiles import PARAPHRASE_FILE, CheckResult, check_file
from farense_core.docqa import DEFAULT_PHRASINGS, DEFAULT_QUESTIONS
from farense_core.models import DEFAULT_NAMES, ModelNotFoundError, is_hub_id, locate_model
from farense_core.passages import DEFAULT_MAX_CHARS as PASSAGE_MAX_CHARS
from farense_core.passages import MIN_MAX_CHARS as PASSAGE_MIN_CHARS

MAX_PRINTED_PROBLEMS = 50  # per file; the CheckResult keeps them all
ROOT = Path(__file__).resolve().parent.parent


class DataToolError(Exception):
    """A user-facing failure: one sentence saying what to do next."""


# ---------------------------------------------------------------------------------------------
# check


def expand_files(names: Sequence[str]) -> list[str]:
    """The files named, a folder standing for the .jsonl files in it (a config's data folder)."""
    files = []
    for name in names:
        path = Path(name)
        found = sorted(str(p) for p in path.glob("*.jsonl")) if path.is_dir() else []
        files += found or [name]  # a folder without any is reported as a problem of its own
    return files


def _cmd_check(args) -> int:
    results = [check_file(f) for f in expand_files(args.files)]
    for r in results:
        lines = r.problem_lines()
        for line in lines[:MAX_PRINTED_PROBLEMS]:
            print(line)
        if len(lines) > MAX_PRINTED_PROBLEMS:
            print(f"{r.path}: ... and {len(lines) - MAX_PRINTED_PROBLEMS} more problems")
    for r in results:
        print(r.summary())
    if len(results) > 1:
        total = Counter()
        for r in results:
            total.update(r.counts)
        n_probs = sum(len(r.problems) for r in results)
        formats = ", ".join(f"{k} {v}" for k, v in total.items())
        print(f"{len(results)} files: {sum(total.values())} examples{f' ({formats})' if formats else ''}, "
              f"{n_probs or 'no'} problem{'s' * (n_probs != 1)}")
    return 0 if all(r.ok for r in results) else 1


def _checked(path: str) -> CheckResult:
    r = check_file(path)
    if not r.ok:
        if len(r.problems) == 1 and r.problems[0][0] == 0:
            raise DataToolError(r.problem_lines()[0] + ".")
        raise DataToolError(f"{path} has {len(r.problems)} problem{'s' * (len(r.problems) != 1)}; "
                            f"run 'farense-tui data check {path}' to see them.")
    return r


# ---------------------------------------------------------------------------------------------
# split


def split_indices(n: int, valid_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)``; each part keeps the file's order. Both parts must be non-empty."""
    if not 0 < valid_fraction < 1:
        raise DataToolError(f"--valid-fraction is {valid_fraction}; use a number between 0 and 1, e.g. 0.1.")
    n_valid = round(n * valid_fraction)
    if n_valid < 1 or n_valid >= n:
        part = "validation" if n_valid < 1 else "training"
        raise DataToolError(f"With {n} example{'s' * (n != 1)}, a fraction of {valid_fraction} leaves the {part} part "
                            "empty; use more examples or another --valid-fraction.")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    valid = set(order[:n_valid])
    return [i for i in range(n) if i not in valid], sorted(valid)


def _cmd_split(args) -> int:
    r = _checked(args.file)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataToolError(f"--out {out} is a file; name a folder.")
    train, valid = split_indices(len(r.lines), args.valid_fraction, args.seed)
    targets = {out / "train.jsonl": train, out / "valid.jsonl": valid}
    for target in targets:
        if target.exists() and not args.force:
            raise DataToolError(f"{target} already exists; pass --force to overwrite it, or choose another --out.")
    for target, idx in targets.items():
        atomic_write_text(target, "".join(r.lines[i] + "\n" for i in idx))
        print(f"{target}: {len(idx)} examples")
    return 0


# ---------------------------------------------------------------------------------------------
# stats


def token_lengths(samples: Iterable[dict], tokenizer) -> list[int]:
    """Tokens per example, exactly as training tokenizes them."""
    from .step import tokenize

    return tokenize(list(samples), tokenizer, mask_prompt=False).lengths


@dataclass(frozen=True)
class LengthStats:
    count: int
    min: int
    mean: float
    median: float
    p95: int
    max: int
    max_seq_length: int
    truncated: int                          # examples longer than max_seq_length
    histogram: tuple[tuple[int, int, int], ...]  # (low, high, examples), inclusive bounds

    @property
    def truncated_fraction(self) -> float:
        return self.truncated / self.count if self.count else 0.0


def _nice_width(span: int, bins: int) -> int:
    raw = max(1, math.ceil(span / bins))
    scale = 10 ** (len(str(raw)) - 1)
    for step in (1, 2, 5, 10):
        if step * scale >= raw:
            return step * scale
    return 10 * scale


def length_stats(lengths: Sequence[int], max_seq_length: int, bins: int = 12) -> LengthStats:
    if not lengths:
        raise ValueError("no lengths")
    ordered = sorted(lengths)
    width = _nice_width(ordered[-1] - ordered[0] + 1, bins)
    start = ordered[0] // width * width
    counts = Counter((x - start) // width for x in ordered)
    histogram = tuple((start + b * width, start + (b + 1) * width - 1, counts.get(b, 0))
                      for b in range(max(counts) + 1))
    return LengthStats(
        count=len(ordered), min=ordered[0], mean=statistics.fmean(ordered), median=statistics.median(ordered),
        p95=ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], max=ordered[-1], max_seq_length=max_seq_length,
        truncated=sum(1 for x in ordered if x > max_seq_length), histogram=histogram)


def format_stats(st: LengthStats, bar_width: int = 40) -> str:
    top = max(c for _, _, c in st.histogram)
    digits = len(str(st.histogram[-1][1]))
    lines = ["tokens per example"]
    for low, high, c in st.histogram:
        bar = "█" * (round(bar_width * c / top) if c else 0) or ("▏" if c else "")
        mark = ("  over max_seq_length" if low > st.max_seq_length else
                "  partly over max_seq_length" if high > st.max_seq_length else "")
        lines.append(f"  {low:>{digits}}-{high:>{digits}} | {bar:<{bar_width}} {c}{mark}")
    lines.append(f"examples {st.count}; min {st.min}, mean {st.mean:.1f}, median {st.median:g}, p95 {st.p95}, "
                 f"max {st.max}")
    lines.append(f"truncated at max_seq_length {st.max_seq_length}: {st.truncated} of {st.count} "
                 f"({100 * st.truncated_fraction:.1f}%)")
    return "\n".join(lines)


def load_tokenizer(model: str):
    """mlx-lm's tokenizer for a model folder (or a cached Hugging Face id)."""
    path = Path(model).expanduser()
    if path.is_file():
        raise DataToolError(f"--model {model} is a file; pass the model's folder.")
    if not path.exists() and not is_hub_id(model):
        raise DataToolError(f"The model folder {model} does not exist; pass a model folder or a Hugging Face id "
                            "(or run 'farense-tui model default' to install the default model).")
    try:
        from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

        return mlx_load_tokenizer(path if path.exists() else model)
    except Exception as e:  # noqa: BLE001 - any loader failure comes from the user's --model
        if not path.exists():
            raise DataToolError(f"There is no model folder {model} and no cached Hugging Face model of that name; "
                                "pass a model folder (or run 'farense-tui model default' to install the default "
                                "model).") from None
        detail = str(e).splitlines()[0] if str(e) else "no detail"
        raise DataToolError(f"Could not load a tokenizer from the folder {model} ({type(e).__name__}: {detail}); "
                            "pass a model folder with tokenizer files.") from None


def _tokenizer_of(args):
    """The tokenizer --model names ("default": the embedded model's)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # no "PyTorch was not found" on stderr
    try:
        model = locate_model(args.model) if args.model.strip() in DEFAULT_NAMES else args.model
    except ModelNotFoundError as e:
        raise DataToolError(str(e)) from None
    return load_tokenizer(model)


def _cmd_preview(args) -> int:
    """A few examples as training sees them: through the chat template, with the part trained on
    (mask_prompt) marked, their lengths and where max_seq_length cuts them."""
    from .step import tokenize

    r = _checked(args.file)
    tokenizer = _tokenizer_of(args)
    rows = r.samples[:max(args.n, 1)]
    masked = r.format != "text"
    data = tokenize(rows, tokenizer, mask_prompt=masked)
    for i, (tokens, offset) in enumerate(zip(data.tokens, data.offsets), 1):
        kept = tokens[:args.max_seq_length]
        cut = f", cut to {args.max_seq_length} by max_seq_length" if len(tokens) > args.max_seq_length else ""
        trained = max(len(kept) - offset, 0) if masked else len(kept)
        print(f"── example {i} of {len(r.samples)}: {len(tokens)} tokens{cut}; "
              f"{trained} trained on{' (with mask_prompt: the answer)' if masked else ''} ──")
        if masked:
            print(tokenizer.decode(kept[:offset]), end="")
            print("▶" + tokenizer.decode(kept[offset:]) + "◀")
        else:
            print(tokenizer.decode(kept))
    print("▶…◀ marks what the loss is computed on when mask_prompt is true; without it, every token is trained on.")
    return 0


def _cmd_stats(args) -> int:
    if args.max_seq_length < 1:
        raise DataToolError(f"--max-seq-length is {args.max_seq_length}; use a positive number of tokens.")
    checked = [_checked(f) for f in expand_files(args.files)]
    tokenizer = _tokenizer_of(args)
    for r in checked:
        try:
            lengths = token_lengths(r.samples, tokenizer)
        except (ValueError, TypeError) as e:
            raise DataToolError(f"The tokenizer of {args.model} cannot tokenize {r.path} ({e}); chat and completions "
                                "data need a tokenizer with a chat template.") from None
        print(f"{r.path} ({r.format})")
        print(format_stats(length_stats(lengths, args.max_seq_length)))
    return 0


# ---------------------------------------------------------------------------------------------
# build


def _shown(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _cmd_build(args) -> int:
    from . import farense_data

    sources, out = Path(args.sources), Path(args.out)
    if not sources.is_dir():
        raise DataToolError(f"The sources folder {_shown(sources)} does not exist; pass --sources with the folder "
                            "holding the copied source files (data/sources in the project).")
    try:
        res = farense_data.build(sources, out, seed=args.seed, force=args.force)
    except farense_data.SourceError as e:
        raise DataToolError(f"Cannot build from {_shown(sources)}: {e}; restore the source files from "
                            "the project's data/sources.") from None
    except FileExistsError as e:
        raise DataToolError(str(e)) from None
    total = sum(res.counts.values())
    print(f"{total} facts from {_shown(sources)}: " + ", ".join(f"{k} {v}" for k, v in res.counts.items()))
    for name, n, what in (("train.jsonl", res.train, f"{farense_data.TRAIN_PHRASINGS} phrasings of each training fact"),
                          ("valid.jsonl", res.valid, "one phrasing of each held-out fact"),
                          (PARAPHRASE_FILE, res.probe, "each training fact in a phrasing training never sees")):
        path = out / name
        print(f"{_shown(path)}: {n} examples, {what} ({'written' if path in res.written else 'unchanged'})")
    return 0


# ---------------------------------------------------------------------------------------------
# from-docs


def _cmd_from_docs(args) -> int:
    from . import docs_data

    asked = {"--questions": args.questions, "--phrasings": args.phrasings}
    if not args.model and any(v is not None for v in asked.values()):
        given = " and ".join(k for k, v in asked.items() if v is not None)
        print(f"farense-tui data from-docs: {given} set what the model is asked; pass --model too (e.g. --model "
              "default), or leave them out to write text samples only.", file=sys.stderr)
        return 2
    docs_data.run(docs_data.Options(
        folder=args.folder, out=args.out, model=args.model, questions=args.questions or DEFAULT_QUESTIONS,
        phrasings=args.phrasings or DEFAULT_PHRASINGS, max_chars=args.max_chars,
        valid_fraction=args.valid_fraction, seed=args.seed, batch_size=args.batch_size, force=args.force))
    return 0


# ---------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: {message}; run '{self.prog} --help' for the options.\n")


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number, e.g. 0.1") from None


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small: use {low} or more")
        return value

    return parse


def _share(text: str) -> float:
    value = _fraction(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1, e.g. 0.1")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="farense-tui data", description="Build the Farense data set; check, split, measure and "
                                                      "preview JSONL training files; make them from documents.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("build", help="build train.jsonl, valid.jsonl and probe_paraphrase.jsonl of the Farense Q&A "
                                     "set from the sources")
    b.add_argument("--sources", default=str(ROOT / "data" / "sources"), help="folder of source files (default: %(default)s)")
    b.add_argument("--out", default=str(ROOT / "data"), help="where the three files go (default: %(default)s)")
    b.add_argument("--seed", type=int, default=0, help="seed of phrasings and split (default: 0)")
    b.add_argument("--force", action="store_true", help="replace existing files that differ")
    b.set_defaults(run=_cmd_build)

    c = sub.add_parser("check", help="validate JSONL files for training; exit 1 on any problem")
    c.add_argument("files", nargs="+", metavar="FILE", help="JSONL files, or folders of them (a config's data)")
    c.set_defaults(run=_cmd_check)

    s = sub.add_parser("split", help="split one JSONL file into train.jsonl and valid.jsonl")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--valid-fraction", type=_fraction, default=0.1, help="share for valid.jsonl (default: 0.1)")
    s.add_argument("--seed", type=int, default=0, help="shuffle seed (default: 0)")
    s.add_argument("--out", required=True, metavar="DIR", help="folder for train.jsonl and valid.jsonl")
    s.add_argument("--force", action="store_true", help="overwrite existing train.jsonl / valid.jsonl")
    s.set_defaults(run=_cmd_split)

    t = sub.add_parser("stats", help="token lengths per example and truncation at --max-seq-length")
    t.add_argument("files", nargs="+", metavar="FILE", help="JSONL files, or folders of them")
    t.add_argument("--model", required=True,
                   help="model folder, cached Hugging Face id, or default, whose tokenizer to use")
    t.add_argument("--max-seq-length", type=int, default=BY_KEY["max_seq_length"].default,
                   help="training's max_seq_length (default: %(default)s)")
    t.set_defaults(run=_cmd_stats)

    v = sub.add_parser("preview", help="a few examples through the chat template, with what is trained on marked")
    v.add_argument("file", metavar="FILE")
    v.add_argument("--model", required=True,
                   help="model folder, cached Hugging Face id, or default, whose chat template to use")
    v.add_argument("--n", type=int, default=3, help="how many examples, from the top (default: 3)")
    v.add_argument("--max-seq-length", type=int, default=BY_KEY["max_seq_length"].default,
                   help="training's max_seq_length (default: %(default)s)")
    v.set_defaults(run=_cmd_preview)

    d = sub.add_parser("from-docs", help="text samples, and with --model grounded question-answer pairs, from a "
                                         "folder of .md, .txt, .pdf and .docx documents")
    d.add_argument("folder", metavar="FOLDER", help="the documents, read recursively")
    d.add_argument("--out", required=True, metavar="DIR",
                   help="where text/ and qa/ (train.jsonl, valid.jsonl) and from_docs.json go")
    d.add_argument("--model", metavar="M",
                   help="a local instruct model (folder, cached Hugging Face id, or default) to ask for "
                        "question-answer pairs; without it, text samples only")
    d.add_argument("--questions", type=_at_least(1), metavar="N",
                   help=f"question-answer pairs asked per passage (default: {DEFAULT_QUESTIONS})")
    d.add_argument("--phrasings", type=_at_least(1), metavar="N",
                   help="ways each kept question is asked: itself and this many minus one paraphrases "
                        f"(default: {DEFAULT_PHRASINGS})")
    d.add_argument("--max-chars", type=_at_least(PASSAGE_MIN_CHARS), default=PASSAGE_MAX_CHARS, metavar="N",
                   help="longest passage, in characters (default: %(default)s)")
    d.add_argument("--valid-fraction", type=_share, default=0.1, metavar="F",
                   help="share for valid.jsonl, at least one sample (default: 0.1)")
    d.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    d.add_argument("--batch-size", type=_at_least(1), default=8, metavar="N",
                   help="passages generated together (default: %(default)s)")
    d.add_argument("--force", action="store_true", help="start over, replacing a finished or unfinished run in DIR")
    d.set_defaults(run=_cmd_from_docs)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed
        return e.code or 0
    try:
        return args.run(args)
    except DataToolError as e:
        print(f"farense-tui data {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # run as engine.datatools, the module engine.docs_data imports, so its DataToolError is the one caught
    from engine.datatools import main as module_main

    sys.exit(module_main())

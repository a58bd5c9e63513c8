"""``farense-tui eval``: what the model knows, measured by asking it.

    python -m engine.evaluate (--run DIR | --adapter DIR | --model M) [--model M] [--data DIR]
                              [--probe recall|paraphrase|heldout|FILE]... [--n N] [--no-base]
                              [--batch-size B] [--out FILE] [--json]

Each question of a probe (``engine.recall``: trained questions, paraphrases of trained facts,
held-out facts, or a file) goes through the chat template exactly as chat sends it and is
answered greedily, in batches, by mlx-lm's ``batch_generate``; each answer is scored against the
reference (``farense_core.scoring``: exact match, and facts match). The bare base and base + adapter
answer the same questions, side by side, on the same loaded model (the adapter is switched, not
reloaded). The report, with every wrong answer (question, expected, got), goes to ``eval.json``
in the run folder (or ``--out``); ``--json`` prints it as one JSON object.

The ``evaluate`` command does the same on the chat session's loaded model (the Chat tab's key).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from farense_core import protocol as P
from farense_core.config import ConfigError, atomic_write_text
from farense_core.rundir import RunDir, adapter_settings
from farense_core.scoring import score, tally

from . import recall as probes
from .chat import ChatError, ChatSession, _require_session, adapter_folder
from .server import Context, handles

EXTRA_TOKENS = 32  # an answer may run this much longer than the reference before it is cut
WRONG_SHOWN = 3    # wrong answers printed per probe (eval.json holds them all)


class EvalError(Exception):
    """One sentence: what is wrong and what to do."""


@dataclass
class Answer:
    item: probes.ProbeItem
    text: str
    tokens: list[int]

    @property
    def token_exact(self) -> bool:
        """Greedy decoding produced exactly the reference's tokens and stopped."""
        return self.tokens == self.item.answer_tokens


def answer_greedily(model, tokenizer, items: list[probes.ProbeItem], batch_size: int = 32,
                    on_progress: Optional[Callable[[int], None]] = None,
                    should_cancel: Optional[Callable[[], bool]] = None) -> Optional[list[Answer]]:
    """Greedy answers in batches of ``batch_size``; None when cancelled between batches."""
    from mlx_lm.generate import batch_generate

    answers: list[Answer] = []
    for start in range(0, len(items), batch_size):
        if should_cancel is not None and should_cancel():
            return None
        part = items[start:start + batch_size]
        response = batch_generate(
            model, tokenizer, [it.prompt for it in part],
            max_tokens=[len(it.answer_tokens) + EXTRA_TOKENS for it in part],
            return_token_ids=True, completion_batch_size=batch_size, prefill_batch_size=min(batch_size, 16),
        )
        answers += [Answer(it, text, list(tokens)) for it, text, tokens in
                    zip(part, response.texts, response.token_ids)]
        if on_progress is not None:
            on_progress(len(answers))
    return answers


def score_answers(answers: list[Answer]) -> dict:
    """Exact, facts and token-exact shares, per kind, and every wrong answer."""
    scored = [(a, score(a.text, a.item.answer, a.item.question)) for a in answers]
    result = tally((a.item.kind, s) for a, s in scored)
    result["token_exact"] = sum(a.token_exact for a in answers) / len(answers) if answers else 0.0
    result["wrong"] = [
        {"kind": a.item.kind, "question": a.item.question, "expected": a.item.answer, "got": a.text,
         "missing": s.missing, "contradicted": s.contradicted}
        for a, s in scored if not s.facts
    ]
    return result


@dataclass
class ProbeSet:
    name: str     # recall, paraphrase, heldout, or the file's name
    source: str   # the file the questions come from
    items: list[probes.ProbeItem]


def load_probes(names: Sequence[str], data_dir: Path, n: int, tokenizer, seed: int = 0) -> list[ProbeSet]:
    sets = []
    for name in names:
        path = probes.probe_path(data_dir, name)
        rows = probes.sample_rows(probes.read_rows(path), n, seed)
        if not rows:
            raise EvalError(f"The probe file {path} holds no questions; give a file of questions and answers.")
        label = name if name in probes.PROBES else Path(name).name
        sets.append(ProbeSet(label, str(path), probes.tokenize(rows, tokenizer)))
    return sets


def default_probes(data_dir: Path) -> list[str]:
    """recall, and paraphrase and heldout where the data folder has them."""
    return [p for p in probes.PROBES if p == "recall" or probes.probe_path(data_dir, p).is_file()]


def run_evaluation(session: ChatSession, sets: list[ProbeSet], adapter: Optional[str], base: bool,
                   batch_size: int = 32, on_progress: Optional[Callable[[str, str, int, int], None]] = None,
                   should_cancel: Optional[Callable[[], bool]] = None) -> Optional[dict]:
    """Ask every probe's questions of the base (when ``base`` or there is no adapter) and of base +
    ``adapter``; the session ends with ``adapter`` in use. None when cancelled."""
    systems = ([("base", None)] if base or adapter is None else []) + ([("adapter", adapter)] if adapter else [])
    start = time.perf_counter()
    results = {s.name: {"probe": s.name, "source": s.source, "n": len(s.items), "systems": {}} for s in sets}
    try:
        for system, which in systems:
            session.set_adapter(which)
            for s in sets:
                tic = time.perf_counter()
                answers = answer_greedily(
                    session.model, session.tokenizer, s.items, batch_size,
                    on_progress=(lambda done, s=s, system=system: on_progress(s.name, system, done, len(s.items)))
                    if on_progress else None, should_cancel=should_cancel)
                if answers is None:
                    return None
                results[s.name]["systems"][system] = {**score_answers(answers),
                                                      "seconds": round(time.perf_counter() - tic, 2)}
    finally:
        if session.adapter != adapter:
            session.set_adapter(adapter)
    return {
        "model": session.model_path, "adapter": session.adapter, "base_dtype": session.base_dtype,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - start, 2), "probes": list(results.values()),
    }


def write_report(report: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=1, ensure_ascii=False))


# ------------------------------------------------------------------ output


def percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def format_report(report: dict) -> str:
    systems = [s for s in ("base", "adapter") if any(s in p["systems"] for p in report["probes"])]
    header = f"{'probe':<14}{'questions':>10}" + "".join(f"{s + ' exact':>16}{s + ' facts':>16}" for s in systems)
    lines = [f"model {report['model']}" + (f" + adapter {report['adapter']}" if report["adapter"] else ""), header]
    for p in report["probes"]:
        row = f"{p['probe']:<14}{p['n']:>10}"
        for s in systems:
            r = p["systems"].get(s)
            row += f"{percent(r['all']['exact']):>16}{percent(r['all']['facts']):>16}" if r else " " * 32
        lines.append(row)
    shown = systems[-1]
    for p in report["probes"]:
        r = p["systems"][shown]
        kinds = r["by_kind"]
        if len(kinds) > 1:
            lines.append(f"{p['probe']} by kind ({shown}, facts): " + ", ".join(
                f"{k} {percent(v['facts'])} of {v['n']}" for k, v in kinds.items()))
    for p in report["probes"]:
        wrong = p["systems"][shown]["wrong"]
        if not wrong:
            continue
        lines.append(f"\n{len(wrong)} wrong answers of {p['n']} ({p['probe']}, {shown}); the first {min(len(wrong), WRONG_SHOWN)}:")
        for w in wrong[:WRONG_SHOWN]:
            lines += [f"  Q: {w['question']}", f"  expected: {w['expected']}", f"  got:      {' '.join(w['got'].split())}",
                      f"  ({'; '.join(x for x in (_listed('missing', w['missing']), _listed('contradicted', w['contradicted'])) if x)})"]
    return "\n".join(lines)


def _listed(label: str, items: list[str]) -> str:
    return f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}" if items else ""


# -------------------------------------------------------------------- CLI


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="farense-tui eval",
        description="Ask the model the questions of probes (trained, paraphrased, held-out facts) greedily and "
                    "score its answers against the references: exact match and facts match, base and adapter "
                    "side by side, with every wrong answer in eval.json.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--run", help="a training run's folder: its best adapter, model and data")
    where.add_argument("--adapter", help="an adapter folder (adapters.safetensors + adapter_config.json)")
    parser.add_argument("--model", help="the base model (default: the run's or adapter's, else the embedded default)")
    parser.add_argument("--data", help="the data folder of the probes (default: the run's, else data)")
    parser.add_argument("--probe", action="append", metavar="recall|paraphrase|heldout|FILE",
                        help="a probe to ask (repeatable; default: recall, and paraphrase and heldout where the "
                             "data folder has probe_paraphrase.jsonl and valid.jsonl)")
    parser.add_argument("--n", type=int, default=64, help="questions per probe, drawn with a fixed seed (0: all)")
    parser.add_argument("--no-base", action="store_true", help="ask only base + adapter, not the bare base too")
    parser.add_argument("--batch-size", type=int, default=32, help="questions generated together")
    parser.add_argument("--out", help="where to write the report (default: eval.json in the run folder)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[Optional[str], str, Path, Optional[Path]]:
    """(adapter folder, model, data folder, report path) from the arguments."""
    settings, run = {}, None
    if args.run:
        run = Path(args.run)
        if not run.is_dir():
            raise EvalError(f"The run folder {run} does not exist; pass --run with a training run's folder.")
        try:
            settings = RunDir(run).settings()
            model = args.model or RunDir(run).base_model()
        except ConfigError as e:
            raise EvalError(f"{e} Or pass --model and --data.") from None
    adapter = str(adapter_folder(args.run or args.adapter)) if (args.run or args.adapter) else None
    if not args.run:
        model = args.model or (adapter_settings(Path(adapter)).get("model") if adapter else None)
    data = Path(args.data or settings.get("data") or "data")
    rd = RunDir(run) if run else RunDir.of_adapter(adapter) if adapter else None
    out = Path(args.out) if args.out else (rd.eval_report if rd else None)
    return adapter, model or "default", data, out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        if args.n < 0 or args.batch_size < 1:
            raise EvalError("--n must be 0 (all) or more and --batch-size at least 1; fix the option.")
        adapter, model, data, out = resolve(args)
        names = args.probe or default_probes(data)
        tty = sys.stderr.isatty()
        print(f"loading {model}" + (f" with the adapter {adapter}" if adapter else ""), file=sys.stderr, flush=True)
        session = ChatSession.load(model)
        sets = load_probes(names, data, args.n, session.tokenizer)

        def progress(probe: str, system: str, done: int, total: int) -> None:
            if tty or done == total:
                end = "\n" if done == total else "\r"
                print(f"{probe} ({system}): {done}/{total} answered", end=end, file=sys.stderr, flush=True)

        report = run_evaluation(session, sets, adapter, base=not args.no_base, batch_size=args.batch_size,
                                on_progress=progress)
        if out is not None:
            write_report(report, out)
        print(json.dumps(report, ensure_ascii=False) if args.json else format_report(report))
        if out is not None and not args.json:
            print(f"\nevery answer's score and all wrong answers: {out}")
        return 0
    except (EvalError, ChatError, probes.ProbeError) as e:
        print(f"farense-tui eval: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ---------------------------------------------------------------- handler


@handles(P.Evaluate)
def on_evaluate(ctx: Context, cmd: P.Evaluate) -> None:
    """Evaluate the chat session's model and adapter; progress between batches; ``cancel``
    (or stop) ends it between batches; other commands wait until it is done."""
    deferred: list[P.Record] = []

    def should_cancel() -> bool:
        cancelled = ctx.stop_requested.is_set()
        while (pending := ctx.poll()) is not None:
            if isinstance(pending, (P.Cancel, P.Stop, P.Shutdown)):
                cancelled = True
            if not isinstance(pending, (P.Cancel, P.Stop)):
                deferred.append(pending)
        return cancelled

    try:
        session = _require_session()
        data = Path(cmd.data or "data")
        sets = load_probes([cmd.probe], data, cmd.n, session.tokenizer)
        ctx.emit(P.State(state="evaluating", detail=f"{cmd.probe}: {sum(len(s.items) for s in sets)} questions"))
        report = run_evaluation(
            session, sets, session.adapter, base=cmd.base,
            on_progress=lambda probe, system, done, total: ctx.emit(
                P.EvaluateProgress(done=done, total=total, probe=probe, system=system)),
            should_cancel=should_cancel)
        if report is None:
            ctx.job_cancelled = True
            return
        rd = RunDir.of_adapter(session.adapter) if session.adapter else None
        path = Path(cmd.out) / "eval.json" if cmd.out else (rd.eval_report if rd else None)
        if path is not None:
            write_report(report, path)
        ctx.emit(P.EvaluateDone(report=report, path=str(path) if path else ""))
    except (ChatError, probes.ProbeError, EvalError) as e:
        ctx.emit(P.Error(message=str(e), code="evaluate"))
    finally:
        for pending in deferred:
            ctx.commands.put(pending)


if __name__ == "__main__":
    sys.exit(main())

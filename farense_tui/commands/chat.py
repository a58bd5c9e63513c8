"""``farense-tui chat``: talk to a model (and adapter) from the command line.

With ``--prompt`` it answers once and exits (tokens streamed on a terminal, the plain reply
otherwise); without, it reads one message per line (``/reset`` clears the history, ``/quit``
ends). ``--compare`` answers each message with the bare base and with the adapter, side by
side on a wide terminal, one after the other otherwise.

Runs in the UI process: no mlx here; the engine subprocess does the work over the protocol.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Callable, Optional, Sequence

from farense_core import protocol as P
from farense_core import sampling

from ..engine_client import EngineGone, EngineProcess

SIDE_BY_SIDE_MIN_WIDTH = 100


class ChatFailed(Exception):
    """The engine reported an error (one sentence)."""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="farense-tui chat",
        description="Chat with a model and optional LoRA adapter. One-shot with --prompt; "
                    "otherwise one message per line (/reset clears the history, /quit ends).",
    )
    parser.add_argument("--model", default="default", help="model folder or Hugging Face id (default: the embedded model)")
    parser.add_argument("--adapter", help="adapter folder, or a run folder (its best adapter)")
    parser.add_argument("--prompt", help="answer this one message and exit")
    for f in sampling.FIELDS:
        parser.add_argument(f.flag, dest=f.name, type=f.kind, help=f"{f.help} (default {f.default})")
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible reply")
    parser.add_argument("--system", help="a system message for every reply")
    parser.add_argument("--compare", action="store_true",
                        help="answer with the base and with --adapter, labelled (each message on its own)")
    return parser.parse_args(argv)


def reply_settings(args: argparse.Namespace) -> dict:
    """The ``chat`` fields the user set, checked; the rest keep the defaults."""
    given = {f.name: getattr(args, f.name) for f in sampling.FIELDS}
    given.update(seed=args.seed, system=args.system)
    return sampling.check_all({k: v for k, v in given.items() if v is not None})


class EngineChat:
    """The chat commands of one engine process, as blocking calls (``EngineGone`` when it dies)."""

    def __init__(self):
        self.engine = EngineProcess().start()
        self._ids = itertools.count(1)

    def _job(self, command: P.Record, on_event: Optional[Callable[[P.Record], None]] = None,
             interruptible: Optional[P.Record] = None) -> P.Finished:
        """Run one job; warnings go to stderr; a failed job raises ``ChatFailed``. With ``interruptible``,
        a first Ctrl-C sends it (a cancel) and the job goes on to its end; a second gives up."""

        def forward(event: P.Record) -> None:
            if isinstance(event, P.Warning):
                print(f"warning: {event.message}", file=sys.stderr)
            if on_event is not None:
                on_event(event)

        try:
            finished = self.engine.request(command, forward)
        except KeyboardInterrupt:
            if interruptible is None:
                raise
            # the engine shares the terminal and got the same SIGINT; cancel explicitly anyway
            self.engine.send(interruptible)
            finished = self.engine.wait_for(command, forward)
        if finished.status == "failed":
            raise ChatFailed(finished.message)
        return finished

    def load(self, model: str, adapter: Optional[str]) -> P.ChatLoaded:
        loaded: list[P.ChatLoaded] = []
        self._job(P.ChatLoad(model=model, adapter=adapter),
                  lambda e: loaded.append(e) if isinstance(e, P.ChatLoaded) else None)
        return loaded[-1]

    def use_adapter(self, adapter: Optional[str]) -> None:
        self._job(P.ChatAdapter(adapter=adapter))

    def reset(self) -> None:
        self._job(P.ChatReset())

    def reply(self, message: str, settings: dict, on_token: Callable[[str], None]) -> P.ReplyDone:
        """One reply; tokens go to ``on_token``. Ctrl-C cancels it (the partial reply is returned)."""
        reply_id = f"r{next(self._ids)}"
        done: list[P.ReplyDone] = []

        def forward(event: P.Record) -> None:
            if isinstance(event, P.Token) and event.id == reply_id:
                on_token(event.text)
            elif isinstance(event, P.ReplyDone) and event.id == reply_id:
                done.append(event)

        self._job(P.Chat(id=reply_id, message=message, **settings), forward, interruptible=P.Cancel(id=reply_id))
        return done[-1]

    def close(self, wait: bool = True) -> None:
        self.engine.close(wait=wait)


# ------------------------------------------------------------------- output


def side_by_side(columns: Sequence[tuple[str, str]], width: int) -> str:
    """Labelled texts in columns of equal width, wrapped, separated by a bar."""
    col = (width - 3 * (len(columns) - 1)) // len(columns)

    def lines(label: str, text: str) -> list[str]:
        wrapped = [label[:col], "─" * min(col, max(len(label), 1))]
        for paragraph in text.splitlines() or [""]:
            wrapped += textwrap.wrap(paragraph, col, replace_whitespace=False) or [""]
        return wrapped

    blocks = [lines(label, text) for label, text in columns]
    rows = itertools.zip_longest(*blocks, fillvalue="")
    return "\n".join(" │ ".join(cell.ljust(col) for cell in row).rstrip() for row in rows)


def stats_line(done: P.ReplyDone) -> str:
    note = {"length": ", stopped at --max-tokens", "cancelled": ", cancelled"}.get(done.finish_reason, "")
    return (f"({done.generation_tokens} tokens, {done.generation_tps:.1f} tokens/s, "
            f"first token after {done.time_to_first_token:.2f} s{note})")


class Terminal:
    """Where replies go: streamed with stats on a terminal, plain text otherwise."""

    def __init__(self):
        self.streaming = sys.stdout.isatty()
        self.stats = sys.stderr.isatty()
        self.width = shutil.get_terminal_size().columns

    def token(self, text: str) -> None:
        if self.streaming:
            sys.stdout.write(text)
            sys.stdout.flush()

    def finish(self, done: P.ReplyDone) -> None:
        print("" if self.streaming else done.text, flush=True)
        if self.stats:
            print(stats_line(done), file=sys.stderr, flush=True)


def answer(chat: EngineChat, term: Terminal, message: str, settings: dict) -> P.ReplyDone:
    done = chat.reply(message, settings, term.token)
    term.finish(done)
    return done


def compare(chat: EngineChat, term: Terminal, message: str, settings: dict, adapter: str) -> None:
    """The same message, alone and with the same seed, to the base and to the base + adapter."""
    settings = {**settings, "keep_history": False}
    settings.setdefault("seed", sampling.comparison_seed())
    sides = (("base", None), (f"base + adapter {Path(adapter).name}", adapter))
    if term.streaming and term.width >= SIDE_BY_SIDE_MIN_WIDTH:
        texts = []
        for label, which in sides:
            print(f"({label} is answering...)", file=sys.stderr, flush=True)
            chat.use_adapter(which)
            texts.append((label, chat.reply(message, settings, lambda _: None).text))
        print(side_by_side(texts, term.width), flush=True)
        return
    for label, which in sides:
        chat.use_adapter(which)
        print(f"── {label} ──", flush=True)
        answer(chat, term, message, settings)


def converse(chat: EngineChat, term: Terminal, args: argparse.Namespace, settings: dict) -> None:
    interactive = sys.stdin.isatty()
    if interactive:
        print("Type a message; /reset clears the history, /quit ends.", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return
        line = line.strip()
        if not line:
            continue
        if line == "/quit":
            return
        if line == "/reset":
            chat.reset()
            if interactive:
                print("(history cleared)", file=sys.stderr)
            continue
        try:
            if args.compare:
                compare(chat, term, line, settings, args.adapter)
            else:
                answer(chat, term, line, settings)
        except ChatFailed as e:  # this message failed; the conversation goes on
            print(f"farense-tui chat: {e}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.compare and not args.adapter:
        print("farense-tui chat: --compare needs --adapter DIR to compare the base with; add it.", file=sys.stderr)
        return 1
    try:
        settings = reply_settings(args)
    except sampling.SamplerError as e:  # before the engine starts
        print(f"farense-tui chat: {e}", file=sys.stderr)
        return 2
    term = Terminal()
    chat, answered = None, False
    try:
        if args.prompt is None and sys.stdin.isatty():  # seconds pass before the prompt: say why
            print(f"loading {args.model or 'the default model'}" + (f" with {args.adapter}" if args.adapter else "")
                  + "...", file=sys.stderr, flush=True)
        chat = EngineChat()
        chat.load(args.model, args.adapter)
        if args.prompt is None:
            converse(chat, term, args, settings)
        elif args.compare:
            compare(chat, term, args.prompt, settings, args.adapter)
        else:
            answer(chat, term, args.prompt, settings)
        answered = args.prompt is not None
        return 0
    except (ChatFailed, EngineGone) as e:
        print(f"farense-tui chat: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if chat is not None:  # a one-shot's answer is out: the engine's teardown is not the user's wait
            chat.close(wait=not answered)  # (stopped or failed, the engine is waited for: none left behind)

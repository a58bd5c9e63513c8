"""Chat speed: our ChatSession (and the engine process) against mlx-lm's own stream_generate.

    python bench/bench_chat.py [--model M] [--max-tokens 128] [--repeats 7] [--engine] [--write FILE]  (results go into docs/benchmarks.md)

Same model object, same prompt (the chat template applied as ``mlx_lm.generate`` does), same
max tokens, alternating which side runs first, medians over the repeats. Two settings: greedy
(mlx-lm's default) and our default sampler (temperature 0.7, top-p 0.9, min-p 0.05, repetition
penalty 1.1 over 64 tokens) given to both sides with the same seed.

Time to first token is measured the same way on both sides: from the call (prompt templating
and tokenizing included) to the first generated token in the caller's hands. With ``--engine``
a third column times what the UI gets through the protocol: from sending ``chat`` to the
first ``token`` event, and the engine's own generation tokens/s.

Without ``--model``: the embedded default model if installed, else a random-weight model of
SmolLM2-135M's shape (``--synthetic q4`` (default) or ``f32``).

Runs under the engine's environment (OpenBLAS preloaded where available) so both sides use the
BLAS a user's engine uses.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farense_tui.engine_client import engine_env  # noqa: E402

PROMPT = "Conta a história do Sporting Clube Farense, de Faro, desde 1910, com muitos pormenores."


def reexec_with_engine_env() -> None:
    env = engine_env()
    if os.environ.get("LD_PRELOAD", "") != env.get("LD_PRELOAD", "") and "FARENSE_BENCH_CHILD" not in os.environ:
        env["FARENSE_BENCH_CHILD"] = "1"
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def synthetic_model(kind: str, folder: Path) -> Path:
    """A random-weight model of SmolLM2-135M's shape, with a tokenizer padded to its vocabulary."""
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "bench"))
    from make_shaped_model import SHAPES, write_shaped_model
    from tiny_model import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder)
    tokenizer.add_tokens([f"w{i}" for i in range(SHAPES["smollm2"]["vocab_size"] - len(tokenizer))])
    tokenizer.save_pretrained(str(folder))
    return write_shaped_model("smollm2", folder, bits=4 if kind == "q4" else 0, dtype="float32",
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)


def pick_model(args, scratch: Path) -> tuple[str, str]:
    """(model folder, description)."""
    from farense_core.models import default_model_installed, default_model_path

    if args.model:
        return args.model, args.model
    if default_model_installed() and not args.synthetic_only:
        path = default_model_path()
        quant = json.loads((path / "config.json").read_text()).get("quantization")
        q = f"{quant['bits']}-bit, group {quant['group_size']}" if quant else "float"
        return str(path), f"SmolLM2-135M-Instruct (embedded default, imported from the Q4_1 GGUF; {q})"
    kind = args.synthetic
    desc = ("random-weight model of SmolLM2-135M's shape (30 layers, hidden 576, 9/3 heads, vocab 49152), "
            + ("4-bit group 32" if kind == "q4" else "float32"))
    return str(synthetic_model(kind, scratch / f"smollm2-shape-{kind}")), desc


def mlx_lm_reply(model, tokenizer, message: str, max_tokens: int, sampler_args: dict | None, seed: int):
    """What ``mlx_lm.generate`` does for a chat prompt, timed like ours."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    start = time.perf_counter()
    text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)
    prompt = tokenizer.encode(text, add_special_tokens=False)
    kwargs = {}
    if sampler_args:
        mx.random.seed(seed)
        kwargs["sampler"] = make_sampler(sampler_args["temperature"], sampler_args["top_p"], sampler_args["min_p"])
        kwargs["logits_processors"] = make_logits_processors(
            repetition_penalty=sampler_args["repetition_penalty"],
            repetition_context_size=sampler_args["repetition_context_size"])
    ttft, last = None, None
    for last in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, **kwargs):
        if ttft is None:
            ttft = time.perf_counter() - start
    return last.generation_tps, ttft, last.generation_tokens


def ours_reply(session, message: str, max_tokens: int, sampler_args: dict | None, seed: int):
    from engine.chat import ReplySettings

    if sampler_args:
        settings = ReplySettings(max_tokens=max_tokens, seed=seed, keep_history=False, **sampler_args)
    else:
        settings = ReplySettings(max_tokens=max_tokens, temperature=0.0, repetition_penalty=1.0, keep_history=False)
    reply = session.reply(message, settings)
    return reply.generation_tps, reply.time_to_first_token, reply.generation_tokens


class EngineSide:
    """The real engine process, timed from the client's side."""

    def __init__(self, model: str):
        from farense_core import protocol as P
        from farense_tui.engine_client import EngineProcess

        self.P = P
        self.proc = EngineProcess().start()
        self.events = self.proc.events()
        next(self.events)  # hello
        self.proc.send(P.ChatLoad(model=model))
        for event in self.events:
            if event.type == "error":
                raise SystemExit(f"The engine could not load {model}: {event.message}")
            if event.type == "chat_loaded":
                break
        self.n = 0

    def reply(self, message: str, max_tokens: int, sampler_args: dict | None, seed: int):
        self.n += 1
        fields = dict(sampler_args or {"temperature": 0.0, "repetition_penalty": 1.0})
        chat = self.P.Chat(id=f"b{self.n}", message=message, max_tokens=max_tokens, keep_history=False,
                           seed=seed, **fields)
        start = time.perf_counter()
        self.proc.send(chat)
        ttft = None
        for event in self.events:
            if event.type == "token" and ttft is None:
                ttft = time.perf_counter() - start
            if event.type == "reply_done":
                return event.generation_tps, ttft, event.generation_tokens
            if event.type == "error":
                raise SystemExit(event.message)
        raise SystemExit(self.proc.crash_report())

    def close(self):
        self.proc.close()


def measure(sides: dict, message: str, max_tokens: int, repeats: int, sampler_args, seed: int) -> dict:
    """{side: {"tps": [...], "ttft": [...], "tokens": [...]}}, alternating the order each repeat."""
    names = list(sides)
    results = {name: {"tps": [], "ttft": [], "tokens": []} for name in names}
    for name in names:  # warm-up, not counted
        sides[name](message, max_tokens, sampler_args, seed)
    for i in range(repeats):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            tps, ttft, tokens = sides[name](message, max_tokens, sampler_args, seed)
            results[name]["tps"].append(tps)
            results[name]["ttft"].append(ttft)
            results[name]["tokens"].append(tokens)
    return results


def machine() -> str:
    import mlx.core as mx
    import mlx_lm

    from engine.server import loaded_blas

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores visible; "
            f"mlx {mx.__version__} ({mx.default_device()}), mlx-lm {mlx_lm.__version__}, BLAS {loaded_blas()}")


def table(rows: list[tuple]) -> str:
    header = ("setting", "measure", "mlx_lm stream_generate", "ours (ChatSession)", "ratio")
    all_rows = [header] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]

    def line(cells) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(all_rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in all_rows[1:]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the embedded default, else a synthetic one)")
    parser.add_argument("--synthetic", choices=("q4", "f32"), default="q4")
    parser.add_argument("--synthetic-only", action="store_true", help="use the synthetic model even if the default is installed")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--engine", action="store_true", help="also time the engine process through the protocol")
    parser.add_argument("--settings", choices=("greedy", "defaults", "both"), default="both")
    parser.add_argument("--write", help="write the results as Markdown to this file")
    args = parser.parse_args()
    reexec_with_engine_env()

    import mlx_lm

    from engine.chat import ChatSession, ReplySettings

    scratch = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    model_path, model_desc = pick_model(args, scratch)
    model, tokenizer = mlx_lm.load(model_path)
    session = ChatSession(model, tokenizer, model_path)  # the very same model object, as stored
    sides = {
        "mlx_lm": lambda *a: mlx_lm_reply(model, tokenizer, *a),
        "ours": lambda *a: ours_reply(session, *a),
    }
    # what the engine does by default: base_dtype auto (float32 on a CPU backend for a quantized base)
    auto = ChatSession.load(model_path, base_dtype="auto")
    if auto.base_dtype != session.base_dtype:
        sides["ours_auto"] = lambda *a: ours_reply(auto, *a)
    engine = EngineSide(model_path) if args.engine else None
    if engine:
        sides["engine"] = engine.reply

    d = ReplySettings()
    defaults = {k: getattr(d, k) for k in ("temperature", "top_p", "min_p", "repetition_penalty",
                                             "repetition_context_size")}
    settings = {"greedy": None, "defaults": defaults}
    chosen = list(settings) if args.settings == "both" else [args.settings]

    rows, raw = [], {}
    try:
        for name in chosen:
            res = measure(sides, PROMPT, args.max_tokens, args.repeats, settings[name], seed=1234)
            raw[name] = res
            med = {side: {k: statistics.median(v) for k, v in r.items()} for side, r in res.items()}
            ref, ours = med["mlx_lm"], med["ours"]
            rows.append((name, "generation tokens/s", f"{ref['tps']:.2f}", f"{ours['tps']:.2f}",
                         f"{ours['tps'] / ref['tps']:.3f}x"))
            rows.append((name, "time to first token (ms)", f"{ref['ttft'] * 1e3:.1f}", f"{ours['ttft'] * 1e3:.1f}",
                         f"{ours['ttft'] / ref['ttft']:.3f}x"))
            rows.append((name, "tokens generated", f"{ref['tokens']:.0f}", f"{ours['tokens']:.0f}", ""))
            if "ours_auto" in med:
                a = med["ours_auto"]
                rows.append((name, f"ours, base_dtype auto ({auto.base_dtype}): tokens/s; TTFT (ms)", "",
                             f"{a['tps']:.2f}; {a['ttft'] * 1e3:.1f}",
                             f"{a['tps'] / ref['tps']:.3f}x; {a['ttft'] / ref['ttft']:.3f}x"))
            if engine:
                e = med["engine"]
                rows.append((name, "engine process: tokens/s; TTFT (ms)", "",
                             f"{e['tps']:.2f}; {e['ttft'] * 1e3:.1f}",
                             f"{e['tps'] / ref['tps']:.3f}x; {e['ttft'] / ref['ttft']:.3f}x"))
    finally:
        if engine:
            engine.close()

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    report = "\n".join([
        f"Machine: {machine()}",
        f"Date: {when}",
        f"Model: {model_desc}",
        f"Prompt: {len(PROMPT)} characters, {len(session.encode([{'role': 'user', 'content': PROMPT}]))} tokens "
        f"through the chat template; max tokens {args.max_tokens}; "
        f"{args.repeats} alternating repeats after a warm-up, medians.",
        "",
        table(rows),
    ])
    print(report)
    if args.write:
        Path(args.write).write_text(
            "# Chat speed: farense-tui's chat against mlx-lm\n\n"
            "Measured by `bench/bench_chat.py` (target: generation tokens/s at least 0.97x mlx-lm's "
            "`stream_generate`, time to first token within 5%; ratio = ours / mlx-lm).\n\n"
            + report.replace("\n", "  \n", 4) + "\n\nRaw runs (tokens/s, seconds to first token, tokens), in run order:\n\n```\n"
            + "\n".join(f"{name} {side}: " + json.dumps({k: [round(x, 3) for x in v] for k, v in r.items()})
                        for name, sides in raw.items() for side, r in sides.items())
            + "\n```\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where a one-shot chat's time goes, phase by phase, ours against mlx-lm's own calls (greedy, 64 tokens):

- ours: the engine process started and the model loaded (``EngineChat``, ``chat_load``, as
  ``farense-tui chat --prompt`` does), the first token, the last token;
- mlx-lm, in a fresh process: ``import mlx.core``, the device's first computation, ``import mlx_lm``,
  ``load``, the first token (``stream_generate``), the last token.

    python bench/startup_phases.py MODEL [--repeats 2]

Each repeat is a fresh process on both sides (after one warm-up each for the file and kernel caches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_startup import PROMPT  # noqa: E402

PEER = r"""
import json, sys, time
t = [time.perf_counter()]
import mlx.core as mx
t.append(time.perf_counter())
mx.eval(mx.ones(8) + 1)
t.append(time.perf_counter())
from mlx_lm import load, stream_generate
t.append(time.perf_counter())
model, tok = load(sys.argv[1])
t.append(time.perf_counter())
prompt = tok.apply_chat_template([{"role": "user", "content": sys.argv[2]}], add_generation_prompt=True)
first = None
for r in stream_generate(model, tok, prompt, max_tokens=64):
    first = first or time.perf_counter()
t += [first, time.perf_counter()]
print(json.dumps([b - a for a, b in zip(t, t[1:])]))
"""
PEER_PHASES = ["import mlx.core", "first computation", "import mlx_lm", "load", "first token", "63 more tokens"]
OURS_PHASES = ["engine started and model loaded", "first token", "63 more tokens"]


def ours(model: str) -> list[float]:
    from farense_tui.commands.chat import EngineChat

    t = [time.perf_counter()]
    chat = EngineChat()
    chat.load(model, None)
    t.append(time.perf_counter())
    first: list[float] = []
    chat.reply(PROMPT, {"temperature": 0.0, "max_tokens": 64}, lambda text: first.append(time.perf_counter()))
    t += [first[0], time.perf_counter()]
    chat.close()
    return [b - a for a, b in zip(t, t[1:])]


def peer(model: str) -> list[float]:
    from farense_tui.engine_client import engine_env

    done = subprocess.run([sys.executable, "-c", PEER, model, PROMPT], env=engine_env(), capture_output=True,
                          text=True, timeout=900)
    if done.returncode:
        raise SystemExit(done.stderr[-800:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    ours(args.model), peer(args.model)  # warm-up
    a = [ours(args.model) for _ in range(args.repeats)]
    b = [peer(args.model) for _ in range(args.repeats)]
    print(f"one-shot chat, phase by phase (s), median of {args.repeats}, {args.model}")
    for name, values in [("ours", a), ("mlx-lm", b)]:
        phases = OURS_PHASES if name == "ours" else PEER_PHASES
        med = [statistics.median(v[i] for v in values) for i in range(len(phases))]
        print(f"{name:7} " + ", ".join(f"{p} {m:.2f}" for p, m in zip(phases, med)) + f" | total {sum(med):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

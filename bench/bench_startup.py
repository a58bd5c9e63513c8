"""One-shot chat, whole process: ``farense-tui chat --prompt`` against ``mlx_lm.generate`` on the same
model, prompt and number of tokens, greedy, alternating which runs first, medians over the repeats.

    python bench/bench_startup.py [--model M] [--max-tokens 64] [--repeats 5]

Each side is a fresh process, timed from its start to its exit (imports, the engine process on our
side, model loading and generation included), as a user waits for it. On a CPU our engine computes a
quantized base in float32 (base_dtype auto), which only OpenBLAS accelerates; both sides get the
engine's environment, so OpenBLAS is preloaded for mlx_lm too.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farense_core.models import resolve_model  # noqa: E402
from farense_tui.engine_client import engine_env  # noqa: E402

PROMPT = "Em que ano foi fundado o Sporting Clube Farense?"


def timed(argv: list[str], env: dict) -> float:
    tic = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - tic
    if done.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({done.returncode}): {done.stderr[-800:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = resolve_model(args.model)
    env = engine_env()
    ours = [sys.executable, "-m", "farense_tui.cli", "chat", "--model", model, "--prompt", PROMPT, "--temp", "0",
            "--max-tokens", str(args.max_tokens)]
    peer = [sys.executable, "-m", "mlx_lm", "generate", "--model", model, "--prompt", PROMPT,
            "--max-tokens", str(args.max_tokens)]
    timed(ours, env), timed(peer, env)  # warm the file cache and any kernel caches for both
    rows = []
    for i in range(args.repeats):
        pair = (timed(ours, env), timed(peer, env)) if i % 2 == 0 else tuple(reversed((timed(peer, env),
                                                                                        timed(ours, env))))
        rows.append(pair)
        print(f"  run {i + 1}: ours {pair[0]:.2f} s, mlx_lm.generate {pair[1]:.2f} s", flush=True)
    ours_s = statistics.median(r[0] for r in rows)
    peer_s = statistics.median(r[1] for r in rows)
    ratio = statistics.median(r[1] / r[0] for r in rows)
    print(f"\none-shot chat, whole process, {platform.node()} ({platform.machine()}, "
          f"{os.environ.get('MLX_DEVICE', 'default device')}), {datetime.date.today()}, {args.max_tokens} tokens, "
          f"median of {args.repeats}")
    print(f"farense-tui chat --prompt  {ours_s:6.2f} s")
    print(f"mlx_lm.generate            {peer_s:6.2f} s")
    print(f"speed ratio (peer / ours)  {ratio:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

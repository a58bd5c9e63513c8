"""What the event stream costs a training update: the memory snapshot and the ``step`` event each update
sends (serialised, written to the UI's pipe and appended to the run's events.jsonl, flushed), timed
alone, against the update times measured in docs/benchmarks.md.

    python bench/bench_events.py [--n 5000]
"""

from __future__ import annotations

import argparse
import datetime
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.server import Context  # noqa: E402
from engine.trainer import memory_snapshot  # noqa: E402
from farense_core import protocol as P  # noqa: E402

# seconds per update, measured (docs/benchmarks.md): the smallest update is where events weigh most
# (the 2026-11-30 H200 runs: training seconds / updates; the events are timed on this machine's CPU)
UPDATES = {"SmolLM2-135M 4-bit, batch 8, H200": 21.43 / 200, "Mistral-7B shape 4-bit, batch 4, H200": 38.00 / 120}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(io.StringIO())
        events = open(Path(tmp) / "events.jsonl", "a", encoding="utf-8")
        ctx.tee(events)
        costs = []
        for i in range(args.n):
            tic = time.perf_counter()
            ctx.emit(P.Step(step=i, total_steps=args.n, epoch=1, epoch_progress=0.5, loss=1.2345, learning_rate=2e-4,
                            tokens=4096, trained_tokens=4096 * i, tokens_per_second=12345.6, iterations_per_second=3.2,
                            elapsed=12.3, eta=456.7, memory=memory_snapshot()))
            costs.append(time.perf_counter() - tic)
            if i % 1000 == 999:
                ctx._out = io.StringIO()  # keep the in-memory pipe from growing
        events.close()
    per_update = statistics.median(costs)
    print(f"event stream cost per update, {platform.node()} ({platform.machine()}), {datetime.date.today()}: "
          f"median {per_update * 1e6:.0f} us, p99 {sorted(costs)[int(0.99 * len(costs))] * 1e6:.0f} us "
          f"(memory snapshot + step event to the pipe and events.jsonl, {args.n} updates)")
    for name, seconds in UPDATES.items():
        print(f"  {name}: {seconds * 1000:7.1f} ms per update -> events {per_update / seconds:.3%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

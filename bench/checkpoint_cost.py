"""What verifying checkpoints costs: the time of a checkpoint write, and the share of it spent on
the SHA-256 of its files (written into state.json so a resume can tell a damaged checkpoint).

    python bench/checkpoint_cost.py [--repeats 3]     (results go into docs/reliability.md)

Checkpoints of the sizes SmolLM2-135M gives: a LoRA run (rank 8 on 16 blocks' q and v) and a full
fine-tuning run (every weight, Adam's two moments), written with the engine's own
write_checkpoint to this machine's disk; then the same files hashed alone.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402

from engine.checkpoints import write_checkpoint  # noqa: E402
from farense_core.rundir import RunDir, file_record  # noqa: E402

SIZES = {  # parameters of SmolLM2-135M: LoRA rank 8 on q_proj and v_proj of 16 blocks; every weight
    "LoRA (SmolLM2, rank 8)": 16 * 2 * 8 * (576 + 576),  # 16 blocks x (q, v) x rank x (in + out)
    "full fine-tuning (SmolLM2)": 134_515_008,
}


def measure(n_params: int, repeats: int) -> tuple[float, float, int]:
    weights = {"w": mx.random.normal((n_params,))}
    opt = {"m": mx.zeros((n_params,)), "v": mx.zeros((n_params,))}
    mx.eval(weights, opt)
    writes, hashes, size = [], [], 0
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        rd = RunDir(tmp)
        for i in range(repeats):
            tic = time.perf_counter()
            path = write_checkpoint(rd, i + 1, weights, opt, {}, {"update": i + 1})
            writes.append(time.perf_counter() - tic)
            files = [p for p in path.iterdir() if p.name != "state.json"]
            size = sum(p.stat().st_size for p in files)
            tic = time.perf_counter()
            for p in files:
                file_record(p)
            hashes.append(time.perf_counter() - tic)
    return statistics.median(writes), statistics.median(hashes), size


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"checkpoint cost, {platform.node()} ({platform.machine()}), {datetime.date.today()}, "
          f"median of {args.repeats}")
    print(f"{'checkpoint':<28} {'size':>9} {'write (with hashing)':>21} {'hashing':>9} {'share':>6}")
    for name, n in SIZES.items():
        write, digest, size = measure(n, args.repeats)
        print(f"{name:<28} {size / 1e6:>7.1f} MB {write:>19.3f} s {digest:>7.3f} s {digest / write:>6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scaling of data-parallel training: the same run (same global batch, same updates) on 1 process and on
N processes started by mlx.launch, alternating, best of ``--repeats``. Prints the steady throughput of each
and the scaling efficiency: tokens/s with N / (N x tokens/s with 1). With ``--peer``, mlx_lm.lora on N
processes under mlx.launch too, on the same data and global batch.

    .venv/bin/python bench/bench_distributed.py --model default --samples 64       # this CPU, ring backend
    python3 bench/bench_distributed.py --model M --backend nccl --keep-dtype ...   # a 2-GPU host

On a CPU, every process runs its own BLAS threads: with ``--threads T`` each process of an N-process run
gets T (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS), the single process N x T, so both use the same cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_train import bench_model, mixed_data, mlx_lm_command, run_ours  # noqa: E402

from farense_tui.engine_client import engine_env, launch_command  # noqa: E402


def threads_env(threads: int | None) -> dict | None:
    if threads is None:
        return None
    return {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}


def run_peer(model: str, data: Path, args, work: Path) -> dict:
    """mlx_lm.lora on ``args.processes`` processes (its trainer shares the batch the same way)."""
    launcher = launch_command(args.processes, None, args.backend)
    cmd = launcher[:launcher.index("--") + 1] + mlx_lm_command(model, data, args, work)
    p = subprocess.run(cmd, capture_output=True, text=True, env=engine_env(threads_env(args.threads)))
    try:
        report = next(json.loads(line)[-1] for line in reversed(p.stdout.strip().splitlines()) if line.startswith("["))
    except (StopIteration, ValueError):  # said in the table, with its last error line
        lines = [line for line in p.stderr.splitlines() if line.strip() and "WARN" not in line]
        return {"error": lines[-1] if lines else f"exit status {p.returncode}"}
    return {"tokens_per_second": report["tokens_per_second"], "peak_gb": report["peak_memory"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny (built in code), default, or a model folder")
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=4, help="the global batch (each of N processes trains 1/N)")
    ap.add_argument("--num-layers", type=int, default=8)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--backend", choices=("ring", "mpi", "nccl"))
    ap.add_argument("--threads", type=int, help="BLAS threads per process of the shared run (CPU)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--keep-dtype", action="store_true", help="train on the base as stored (no float32)")
    ap.add_argument("--peer", action="store_true", help="also mlx_lm.lora on the same processes")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    model = bench_model(args.model, work, args.keep_dtype)
    data = mixed_data(work / "data", args.samples)
    n = args.processes
    single_env = threads_env(args.threads * n if args.threads else None)
    shared_flags = ("-n", str(n)) + (("--backend", args.backend) if args.backend else ())
    one, many, peer = [], [], []
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both
        one.append(run_ours(model, data, args, work, env=single_env))
        many.append(run_ours(model, data, args, work, extra=shared_flags, env=threads_env(args.threads)))
        if args.peer:
            peer.append(run_peer(model, data, args, work))

    def best(rs):
        return max(rs, key=lambda r: r["steady_tokens_per_second"])

    b1, bn = best(one), best(many)
    t1, tn = b1["steady_tokens_per_second"], bn["steady_tokens_per_second"]
    print(f"{datetime.date.today()} {platform.machine()} {platform.system()} | model {args.model} | {args.samples} "
          f"samples (half long answers), global batch {args.batch_size}, {args.num_layers} layers, max_seq_length "
          f"{args.max_seq_length}, {n} processes (backend {args.backend or 'mlx.launch default'}, BLAS threads per "
          f"process {args.threads or 'default'}), best of {args.repeats}")
    print(f"{'':<38}{'1 process':>14}{f'{n} processes':>14}")
    print(f"{'steady tokens/s (after 3 updates)':<38}{t1:>14.0f}{tn:>14.0f}")
    print(f"{'train time for the same updates (s)':<38}{b1['train_seconds']:>14.2f}{bn['train_seconds']:>14.2f}")
    print(f"{'peak MLX memory per process (GB)':<38}{b1['peak_gb']:>14.3f}"
          f"{max(r['mlx_peak'] for r in bn['ranks']) / 1e9:>14.3f}")
    print(f"{'wall time incl. start and load (s)':<38}{b1['wall']:>14.1f}{bn['wall']:>14.1f}")
    print(f"speed-up {tn / t1:.2f}x; scaling efficiency {tn / (n * t1):.0%} (1.0 = {n} processes are {n}x as fast)")
    if bn["ranks"]:
        print("per process, last update: " + ", ".join(
            f"rank {r['rank']} {r['tokens_per_second']:.0f} tok/s peak {r['mlx_peak'] / 1e9:.3f} GB" for r in bn["ranks"]))
    if peer and all("error" in r for r in peer):
        print(f"mlx_lm.lora on {n} processes failed: {peer[-1]['error']}")
    elif peer:
        bp = max((r for r in peer if "error" not in r), key=lambda r: r["tokens_per_second"])
        print(f"mlx_lm.lora on {n} processes (its own token count, whole run): {bp['tokens_per_second']:.0f} tok/s, "
              f"peak {bp['peak_gb']:.3f} GB; ours on {n}: {tn:.0f} tok/s steady, "
              f"{bn['tokens'] / bn['train_seconds']:.0f} tok/s whole run")
    return 0


if __name__ == "__main__":
    sys.exit(main())

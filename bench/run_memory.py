"""Where a real run's peak memory is reached: our engine trains on bench_train's mixed data and the
per-update peak (metrics.csv) is printed wherever it grows, with the width of that update's widest
micro-batch and whether a validation (loss + recall probe) came just before.

    python bench/run_memory.py MODEL [--samples 400] [--batch-size 8] [--max-seq-length 256]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train import mixed_data  # noqa: E402
from farense_tui.engine_client import engine_env  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--steps-per-eval", type=int, default=20)
    ap.add_argument("--num-layers", type=int, default=16)
    args = ap.parse_args()
    import yaml

    work = Path(tempfile.mkdtemp(prefix="run-memory-"))
    data = mixed_data(work / "data", args.samples)
    cfg = {"model": args.model, "data": str(data), "batch_size": args.batch_size,
           "iters": args.samples // args.batch_size, "num_layers": args.num_layers, "max_seq_length": args.max_seq_length,
           "learning_rate": 1e-5, "steps_per_eval": args.steps_per_eval, "save_every": 100000, "val_batches": 1,
           "base_dtype": "keep", "clear_cache_every": 0, "memory_guard_gb": 0.0, "seed": 0}
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = work / "run"
    p = subprocess.run([sys.executable, "-m", "farense_tui.cli", "train", "--config", str(work / "c.yaml"),
                        "--run-dir", str(run)], capture_output=True, text=True, env=engine_env())
    if p.returncode:
        print(p.stdout[-2000:], p.stderr[-2000:])
        return 1
    last, evals = 0, set()
    for e in map(json.loads, (run / "events.jsonl").read_text().splitlines()):
        if e["type"] in ("eval", "recall"):
            evals.add(e["step"])
        if e["type"] == "data":
            print({k: e.get(k) for k in ("train_examples", "padding_efficiency", "longest")})
    with open(run / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if not row["mlx_peak"]:
                continue
            step, peak = int(row["step"]), int(row["mlx_peak"])
            if peak > last:
                print(f"update {step:>4}: peak {peak / 1e9:.3f} GB (active {int(row['mlx_active']) / 1e9:.3f}), "
                      f"{row['tokens']} tokens{', after a validation' if step - 1 in evals else ''}")
                last = peak
    s = json.loads((run / "training_summary.json").read_text())
    print(f"summary peak {s['peak_memory'] / 1e9:.3f} GB; validations at {sorted(evals)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

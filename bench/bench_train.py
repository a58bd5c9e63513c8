"""Training throughput and peak memory: our engine vs ``mlx_lm.lora`` on the same model, data and settings.

Both run as subprocesses with the same environment (OpenBLAS preloaded on Linux when installed), over the
same samples: one pass over a data set that mixes short Q&A with long answers (the case where mlx-lm's
random batches are mostly padding). Prints one table; ``--markdown`` prints a row set for docs/benchmarks.md.

    .venv/bin/python bench/bench_train.py                       # tiny llama built in code
    .venv/bin/python bench/bench_train.py --model default       # the embedded SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from farense_tui.engine_client import engine_env  # noqa: E402


def mixed_data(folder: Path, n: int, seed: int = 0, equal: bool = False) -> Path:
    """Short Farense Q&A from the committed data set, and long answers made of several of them; with
    ``equal``, only answers longer than any max_seq_length benched (all cut to the same length)."""
    rows = [json.loads(line) for line in (ROOT / "data" / "train.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0 and not equal:
            out.append(rng.choice(rows))
        else:
            parts = rng.sample(rows, rng.randint(40, 50) if equal else rng.randint(4, 9))
            out.append({"messages": [
                {"role": "user", "content": "Conta-me tudo sobre estes jogos do Farense."},
                {"role": "assistant", "content": " ".join(p["messages"][-1]["content"] for p in parts)},
            ]})
    folder.mkdir(parents=True, exist_ok=True)
    for name, subset in (("train", out), ("valid", out[:8])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in subset))
    return folder


def run_ours(model: str, data: Path, args, work: Path, extra: tuple = (), env: dict | None = None,
             settings: dict | None = None) -> dict:
    """One headless run (``extra``: more train flags, e.g. ``-n 2``; ``settings``: config keys over the
    bench's); its times, tokens and peak memory, and its steady throughput (tokens per second of training
    after the first 3 updates, which compile)."""
    iters = getattr(args, "epochs", 1) * args.samples // args.batch_size
    cfg = {"model": model, "data": str(data), "batch_size": args.batch_size, "iters": iters,
           "num_layers": args.num_layers, "max_seq_length": args.max_seq_length, "learning_rate": 1e-5,
           "lora_parameters": {"rank": 8, "scale": 20.0, "dropout": 0.0}, "steps_per_eval": 100000,
           "save_every": 100000, "val_batches": 1, "base_dtype": "float32" if not args.keep_dtype else "keep",
           "clear_cache_every": 0, "memory_guard_gb": 0.0, "seed": 0, **(settings or {})}
    cfg_file = work / "ours.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    run_dir = work / f"ours-{time.time_ns()}"
    tic = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "farense_tui.cli", "train", "--config", str(cfg_file), "--run-dir",
                        str(run_dir), *extra], capture_output=True, text=True, env=engine_env(env))
    wall = time.perf_counter() - tic
    if p.returncode != 0:
        raise SystemExit(f"our engine failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    s = json.loads((run_dir / "training_summary.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    data_ev = next(e for e in events if e["type"] == "data")
    final_eval = [e for e in events if e["type"] == "eval"]
    steps = [e for e in events if e["type"] == "step"]
    warm = steps[max(0, min(3, len(steps) - 2))]  # a short run: from its first update
    steady = (steps[-1]["trained_tokens"] - warm["trained_tokens"]) / max(steps[-1]["elapsed"] - warm["elapsed"], 1e-9)
    return {"steady_tokens_per_second": steady, "ranks": steps[-1].get("ranks", []), "train_seconds": s["elapsed"],
            "tokens": s["trained_tokens"], "peak_gb": s["peak_memory"] / 1e9, "frozen_cache": s.get("frozen_cache"),
            "wall": wall, "padding_efficiency": data_ev["padding_efficiency"], "updates": s["updates"],
            "final_eval_seconds": final_eval[-1]["val_time"] if final_eval else 0.0}


def mlx_lm_command(model: str, data: Path, args, work: Path) -> list[str]:
    """``mlx_lm.lora`` (through bench/mlx_lm_lora_peer.py, which records its reports) with the bench's settings."""
    iters = getattr(args, "epochs", 1) * args.samples // args.batch_size
    return [sys.executable, str(ROOT / "bench" / "mlx_lm_lora_peer.py"), "--model", model, "--train", "--data",
            str(data), "--batch-size", str(args.batch_size), "--iters", str(iters), "--num-layers",
            str(args.num_layers), "--max-seq-length", str(args.max_seq_length), "--learning-rate", "1e-5",
            "--steps-per-report", str(iters), "--steps-per-eval", "100000", "--val-batches", "1",
            "--save-every", "100000", "--adapter-path", str(work / f"mlxlm-{time.time_ns()}"), "--seed", "0"]


def run_mlx_lm(model: str, data: Path, args, work: Path) -> dict:
    cmd = mlx_lm_command(model, data, args, work)
    tic = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=engine_env())
    wall = time.perf_counter() - tic
    try:
        report = json.loads(p.stdout.strip().splitlines()[-1])[-1]
    except (IndexError, ValueError):
        raise SystemExit(f"mlx_lm.lora failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}") from None
    tokens = int(report["trained_tokens"])
    return {"train_seconds": tokens / report["tokens_per_second"], "tokens": tokens,
            "peak_gb": report["peak_memory"], "wall": wall, "updates": report["iteration"]}


def bench_model(name: str, work: Path, keep_dtype: bool) -> str:
    """The model folder to bench: tiny (built in code), default, or a folder; unless ``keep_dtype``, a float32
    copy, so that mlx_lm.lora (which trains on the base as stored) trains on the float32 base we train on."""
    if name == "tiny":
        from tiny_model import build_tiny_model

        return str(build_tiny_model(work / "tiny", layers=8))
    if name == "default":
        from farense_core.models import default_model_path

        model = str(default_model_path())
    else:
        model = name
    if keep_dtype:
        return model
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.utils import dequantize_model, save

    m, tok = mlx_lm.load(model)
    dequantize_model(m)
    m.set_dtype(mx.float32)
    f32 = work / "base-f32"
    cfg = json.loads((Path(model) / "config.json").read_text())
    cfg.pop("quantization", None)
    cfg.pop("quantization_config", None)
    save(f32, model, m, tok, cfg)
    return str(f32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny (built in code), default, or a model folder")
    ap.add_argument("--samples", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-layers", type=int, default=8)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1, help="passes over the samples (both tools)")
    ap.add_argument("--without-cache", action="store_true",
                    help="also run ours with frozen_cache: off (a third column: what the cache adds)")
    ap.add_argument("--also", action="append", default=[], metavar="KEY=VALUE",
                    help="also run ours with this setting changed (a column each; may be given again)")
    ap.add_argument("--keep-dtype", action="store_true", help="train on the base as stored (no float32)")
    ap.add_argument("--equal", action="store_true", help="every sample cut to max_seq_length (no padding for anyone)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model = bench_model(args.model, work, args.keep_dtype)
    data = mixed_data(work / "data", args.samples, equal=args.equal)

    sides = {"mlx_lm.lora": lambda: run_mlx_lm(model, data, args, work),
             "farense-tui": lambda: run_ours(model, data, args, work)}
    if args.without_cache:
        sides["ours, no cache"] = lambda: run_ours(model, data, args, work, settings={"frozen_cache": "off"})
    for also in args.also:
        key, _, value = also.partition("=")
        sides[f"ours, {key}: {value}"] = (lambda k=key, v=value:
                                          run_ours(model, data, args, work, settings={k: yaml.safe_load(v)}))
    results = {name: [] for name in sides}
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits every side
        for name, run in sides.items():
            results[name].append(run())

    best = {name: min(rs, key=lambda r: r["train_seconds"]) for name, rs in results.items()}
    peer, ours = best["mlx_lm.lora"], best["farense-tui"]
    seen = args.samples * args.epochs
    names = list(sides)
    rows = [
        ("train time for the same samples (s)", *(f"{best[n]['train_seconds']:.2f}" for n in names)),
        ("speed ratio (mlx_lm.lora time / this)", *(f"{peer['train_seconds'] / best[n]['train_seconds']:.2f}x"
                                                    for n in names)),
        ("samples / s", *(f"{seen / best[n]['train_seconds']:.1f}" for n in names)),
        ("loss tokens / s (each tool's own count)", *(f"{best[n]['tokens'] / best[n]['train_seconds']:.0f}"
                                                      for n in names)),
        ("peak MLX memory (GB)", *(f"{best[n]['peak_gb']:.3f}" for n in names)),
        ("wall time incl. load (s)", *(f"{best[n]['wall']:.1f}" for n in names)),
    ]
    fc = ours.get("frozen_cache")
    head = (f"{datetime.date.today()} {platform.machine()} {platform.system()} | model {args.model} | "
            f"{args.samples} samples ({'all cut to max_seq_length' if args.equal else 'half long answers'}) x "
            f"{args.epochs} epochs, batch {args.batch_size}, {args.num_layers} layers, max_seq_length "
            f"{args.max_seq_length}, best of {args.repeats} | our padding efficiency {ours['padding_efficiency']:.0%}"
            f" | frozen-block cache: " + (f"{fc['blocks']} blocks, {fc['bytes'] / 1e9:.2f} GB host memory, "
                                          f"{fc['hits']} hits, {fc['misses']} misses" if fc else "off"))
    print(head)
    if args.markdown:
        print("\n| measure | " + " | ".join(names) + " |\n|---" * (len(names) + 1) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        print(f"{'measure':<42}" + "".join(f"{n:>16}" for n in names))
        for r in rows:
            print(f"{r[0]:<42}" + "".join(f"{v:>16}" for v in r[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which training recipe makes the default model know the Farense facts? Measured, side by side.

Each recipe is ``configs/farense.yaml`` with some settings changed. All recipes train at the same
time (one process each), for as many epochs as fit in ``--budget`` seconds: a short timing probe
(``--probe-updates`` updates of every recipe, run together) measures seconds per update first.
During training the engine reports teacher-forced recall on trained questions and on paraphrases
every half epoch; afterwards ``farense-tui eval`` asks every recipe's best adapter (and the bare
base) the trained, paraphrased and held-out questions, greedily, and scores the answers.

    python bench/quality_recipes.py --recipes full-1e-4,full-3e-4,lora-r64 --budget 660 --out results/
    python bench/quality_recipes.py --list

Prints one table (the figures docs/quality.md quotes) and writes ``results.json`` and every run's
small files into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from farense_core import config as C  # noqa: E402

FULL = {"fine_tune_type": "full", "num_layers": -1}
RECIPES = {
    # the config shipped before these measurements: 2 epochs of LoRA on 16 layers
    "lora-before": {"fine_tune_type": "lora", "num_layers": 16, "learning_rate": 2e-4,
                    "lora_parameters": {"rank": 8, "scale": 20.0, "dropout": 0.0}, "batch_size": 8, "epochs": 2},
    "lora-r64": {"fine_tune_type": "lora", "num_layers": -1, "learning_rate": 3e-4,
                 "lora_parameters": {"rank": 64, "scale": 20.0, "dropout": 0.0}},
    "full-1e-4": {**FULL, "learning_rate": 1e-4},
    "full-3e-4": {**FULL, "learning_rate": 3e-4},
    "full-5e-5": {**FULL, "learning_rate": 5e-5},
    "full-6e-4": {**FULL, "learning_rate": 6e-4},
}
# every setting that decides what is learned, whatever the config file says (the recipe may override)
COMMON = {"base_dtype": "auto", "mask_prompt": True, "batch_size": 32, "grad_accumulation_steps": 1,
          "max_seq_length": 384, "lr_schedule": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1, "seed": 0,
          "optimizer": "adam", "eval_samples": 128, "best_by": "recall", "early_stop": None,
          "keep_checkpoints": 1, "memory_guard_gb": 0.0}
KEEP = ("events.jsonl", "config.yaml", "training_summary.json", "metrics.csv", "eval.json")


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    e.setdefault("PYTHONUNBUFFERED", "1")
    return e


def train_rows(data: Path) -> int:
    return sum(1 for line in (data / "train.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())


def recipe_config(name: str, base: dict, data: Path, model: str | None, epochs: float | None,
                  iters: int | None = None) -> dict:
    cfg = {**base, **COMMON, **RECIPES[name]}
    cfg["data"] = str(data)
    if model:
        cfg["model"] = model
    batches = math.ceil(train_rows(data) / cfg["batch_size"])
    cfg["steps_per_eval"] = max(1, math.ceil(batches / 2))  # recall every half epoch
    cfg["save_every"] = batches
    if iters is not None:
        cfg.pop("epochs", None)
        cfg["iters"] = iters
        cfg["steps_per_eval"] = cfg["save_every"] = 10**6
        cfg["eval_samples"] = 0
        cfg["best_by"] = "val_loss"
        cfg["val_batches"] = 1
    elif epochs is not None:
        cfg["epochs"] = epochs
    C.validate(cfg)
    return cfg


def launch(name: str, cfg: dict, work: Path) -> tuple[subprocess.Popen, Path]:
    run = work / name
    run.mkdir(parents=True, exist_ok=True)
    (run.parent / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = open(work / f"{name}.log", "w")
    proc = subprocess.Popen(python_cmd("farense_tui.cli", "train", "--config", str(run.parent / f"{name}.yaml"),
                                       "--run-dir", str(run)), stdout=log, stderr=subprocess.STDOUT, env=env(),
                            cwd=ROOT, start_new_session=True)
    return proc, run


def wait_all(procs: dict, deadline: float) -> None:
    for name, (proc, _) in procs.items():
        left = deadline - time.monotonic()
        try:
            proc.wait(timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            print(f"{name}: over the time limit, stopping it (a checkpoint is saved)", flush=True)
            os.killpg(proc.pid, signal.SIGINT)
    for proc, _ in procs.values():
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def seconds_per_update(run: Path, skip: int = 5) -> float | None:
    steps = [e for e in events(run) if e["type"] == "step"]
    if len(steps) <= skip + 2:
        return None
    later = steps[skip:]
    return (later[-1]["elapsed"] - later[0]["elapsed"]) / (len(later) - 1)


def summarize(name: str, run: Path) -> dict:
    ev = events(run)
    recalls = [e for e in ev if e["type"] == "recall"]
    steps = [e for e in ev if e["type"] == "step"]
    done = next((e for e in reversed(ev) if e["type"] == "done"), None)
    data = next((e for e in ev if e["type"] == "data"), {})
    cfg = next((e["config"] for e in ev if e["type"] == "config"), {})
    best = max(recalls, key=lambda e: (e["recall"], e["token_accuracy"])) if recalls else None
    return {
        "recipe": name, "status": done["status"] if done else "no result", "config": cfg,
        "updates": steps[-1]["step"] if steps else 0, "total_updates": data.get("total_updates"),
        "epochs": cfg.get("epochs"), "train_seconds": round(steps[-1]["elapsed"], 1) if steps else None,
        "tokens_per_second": round(sum(s["tokens"] for s in steps) / steps[-1]["elapsed"], 1) if steps else None,
        "peak_memory_gb": round(max(s["memory"]["mlx_peak"] for s in steps) / 2**30, 2) if steps else None,
        "recall_curve": [{"step": e["step"], "epoch": e["epoch"], "trained": e["trained"], "paraphrase": e["paraphrase"],
                          "token_accuracy": round(e["token_accuracy"], 4)} for e in recalls],
        "best_recall_step": best["step"] if best else None,
        "advice": [e["message"] for e in ev if e["type"] == "advice"],
    }


def evaluate(runs: dict, args, work: Path) -> dict:
    """Every run's best adapter, and the bare base once, in parallel."""
    procs = {}
    for name, run in runs.items():
        if not (run / "adapters" / "adapters.safetensors").is_file():
            continue
        procs[name] = subprocess.Popen(
            python_cmd("engine.evaluate", "--run", str(run), "--n", str(args.eval_n), "--no-base",
                       "--batch-size", str(args.eval_batch), "--json", "--out", str(run / "eval.json")),
            stdout=subprocess.PIPE, stderr=open(work / f"{name}.eval.log", "w"), env=env(), cwd=ROOT, text=True)
    model = args.model or "default"
    procs["base"] = subprocess.Popen(
        python_cmd("engine.evaluate", "--model", model, "--data", str(args.data), "--n", str(args.base_n),
                   "--batch-size", str(args.eval_batch), "--json", "--out", str(work / "base-eval.json")),
        stdout=subprocess.PIPE, stderr=open(work / "base.eval.log", "w"), env=env(), cwd=ROOT, text=True)
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate()
        try:
            report = json.loads(text)
        except ValueError:
            print(f"{name}: eval failed (see {name}.eval.log)", flush=True)
            continue
        system = "base" if name == "base" else "adapter"
        out[name] = {p["probe"]: {k: p["systems"][system]["all"][k] for k in ("exact", "facts")} | {
            "token_exact": p["systems"][system]["token_exact"], "n": p["n"]} for p in report["probes"]}
        out[name]["seconds"] = report["seconds"]
    return out


def table(results: list[dict], evals: dict) -> str:
    head = ("| recipe | epochs | updates | train s | tok/s | peak GB | TF recall trained / paraphrase (best) | "
            "eval facts trained | paraphrase | heldout | eval exact trained | paraphrase |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in [{"recipe": "base"}] + results:
        e = evals.get(r["recipe"], {})
        best = next((c for c in r.get("recall_curve", []) if c["step"] == r.get("best_recall_step")), None)
        tf = f"{best['trained']:.1%} / {best['paraphrase']:.1%}" if best and best["paraphrase"] is not None else (
            f"{best['trained']:.1%}" if best else "-")

        def f(probe, key):
            return f"{e[probe][key]:.1%}" if probe in e else "-"

        lines.append(f"| {r['recipe']} | {r.get('epochs') or '-'} | {r.get('updates', '-')} | {r.get('train_seconds', '-')} | "
                     f"{r.get('tokens_per_second', '-')} | {r.get('peak_memory_gb', '-')} | {tf} | {f('recall', 'facts')} | "
                     f"{f('paraphrase', 'facts')} | {f('heldout', 'facts')} | {f('recall', 'exact')} | "
                     f"{f('paraphrase', 'exact')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="full-1e-4,full-3e-4,lora-r64")
    ap.add_argument("--config", default=str(ROOT / "configs" / "farense.yaml"))
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--model", help="another model than the config's (e.g. a tiny one to try the script)")
    ap.add_argument("--budget", type=float, default=660, help="seconds of training, all recipes at once")
    ap.add_argument("--max-epochs", type=float, default=12)
    ap.add_argument("--epochs", type=float, help="train this many epochs (no timing probe)")
    ap.add_argument("--probe-updates", type=int, default=30)
    ap.add_argument("--eval-n", type=int, default=256, help="questions per probe for each adapter")
    ap.add_argument("--base-n", type=int, default=64, help="questions per probe for the bare base")
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--work", default="/tmp/quality-runs")
    ap.add_argument("--out", required=False)
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for name, r in RECIPES.items():
            print(f"{name}: {r}")
        return 0
    names = args.recipes.split(",")
    base = C.load_yaml(args.config)
    data = Path(args.data)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    epochs = {n: args.epochs for n in names}
    if args.epochs is None:
        print(f"timing probe: {args.probe_updates} updates of {', '.join(names)} together", flush=True)
        procs = {n: launch(n, recipe_config(n, base, data, args.model, None, args.probe_updates), work / "probe")
                 for n in names}
        wait_all(procs, time.monotonic() + 600)
        for n in names:
            spu = seconds_per_update(work / "probe" / n)
            cfg = recipe_config(n, base, data, args.model, 1.0)
            per_epoch = math.ceil(train_rows(data) / cfg["batch_size"])
            fit = (args.budget / (spu * per_epoch)) if spu else 1.0
            epochs[n] = max(1.0, min(args.max_epochs, math.floor(fit * 2) / 2))
            print(f"{n}: {spu or float('nan'):.3f} s/update together, {per_epoch} updates/epoch -> {epochs[n]} epochs",
                  flush=True)
    procs = {n: launch(n, recipe_config(n, base, data, args.model, epochs[n]), work) for n in names}
    print(f"training {', '.join(f'{n} ({epochs[n]} epochs)' for n in names)}", flush=True)
    wait_all(procs, time.monotonic() + args.budget * 1.25 + 60)
    results = [summarize(n, work / n) for n in names]
    for r in results:
        print(f"{r['recipe']}: {r['status']}, {r['updates']}/{r['total_updates']} updates, "
              f"{r['train_seconds']} s; recall curve: "
              + " ".join(f"{c['epoch']}:{c['trained']:.0%}/{(c['paraphrase'] or 0):.0%}" for c in r["recall_curve"]),
              flush=True)
    evals = evaluate({n: work / n for n in names}, args, work)
    meta = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "machine": platform.node(),
            "python": platform.python_version(), "seconds": round(time.monotonic() - started)}
    try:
        import mlx.core as mx

        meta["device"] = str(mx.default_device())
        meta["mlx"] = mx.__version__
    except Exception:  # noqa: BLE001 - the report still stands without it
        pass
    report = {"meta": meta, "recipes": results, "eval": evals}
    text = table(results, evals)
    print(text, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(report, indent=1))
        (out / "table.md").write_text(text + "\n")
        with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
            for n in names:
                for f in KEEP:
                    if (work / n / f).is_file():
                        tar.add(work / n / f, arcname=f"{n}/{f}")
                for log in (f"{n}.log", f"{n}.eval.log"):
                    if (work / log).is_file():
                        tar.add(work / log, arcname=log)
            if (work / "base-eval.json").is_file():
                tar.add(work / "base-eval.json", arcname="base-eval.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

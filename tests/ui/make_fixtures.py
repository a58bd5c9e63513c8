"""Write the recorded event streams the UI tests replay (built from protocol records, so they are
valid by construction). Run once: ``python tests/ui/make_fixtures.py``. A real recording of the
same format (a run's events.jsonl) can replace run_events.jsonl."""

from __future__ import annotations

import math
import random
from pathlib import Path

from farense_core import protocol as P
from farense_tui.runs import write_events

HERE = Path(__file__).resolve().parent / "fixtures"
GB = 1024**3
RUN_DIR = "checkpoints/run-20250501-120000"
TOTAL = 40

CONFIG = {
    "model": "models/smollm2-135m", "data": "data", "fine_tune_type": "lora", "base_dtype": "auto",
    "mask_prompt": False, "max_seq_length": 512, "batch_size": 2, "grad_accumulation_steps": 2,
    "epochs": None, "iters": TOTAL, "learning_rate": 2e-4, "optimizer": "adam", "optimizer_config": {},
    "grad_checkpoint": False, "seed": 0, "num_layers": 8,
    "lora_parameters": {"rank": 8, "scale": 20.0, "dropout": 0.0}, "lr_schedule": "cosine",
    "warmup_steps": 5, "min_lr_ratio": 0.1, "steps_per_report": 5, "steps_per_eval": 10, "val_batches": 8,
    "save_every": 10, "keep_checkpoints": 3, "clear_cache_every": 10, "low_memory_gb": 2.0,
    "memory_guard_gb": 0.75,
}


# per validation (updates 10, 20, 30, 40): trained, paraphrase, overall recall, token accuracy
RECALL = {1: (0.0625, 0.03125, 0.046875, 0.912), 2: (0.34375, 0.25, 0.296875, 0.958),
          3: (0.671875, 0.53125, 0.6015625, 0.981), 4: (0.890625, 0.765625, 0.828125, 0.994)}


def learning_rate(step: int) -> float:
    peak = CONFIG["learning_rate"]
    if step <= 5:
        return peak * step / 5
    t = (step - 5) / (TOTAL - 5)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def run_events() -> list[P.Record]:
    rng = random.Random(1910)
    events: list[P.Record] = [
        P.Hello(protocol=P.PROTOCOL_VERSION, engine_version="0.1.0", mlx_version="0.29.3",
                mlx_lm_version="0.28.2", device="cpu", blas="openblas", pid=4242, platform="Linux x86_64"),
        P.State(state="loading", detail="model and data"),
        P.Config(config=CONFIG, run_dir=RUN_DIR),
        P.Data(format="chat", train_samples=120, valid_samples=16,
               train_tokens={"min": 38, "max": 611, "mean": 148.2, "median": 121, "p95": 402, "total": 17784},
               valid_tokens={"min": 41, "max": 380, "mean": 139.9, "median": 118, "p95": 350, "total": 2238},
               truncated=3, batches_per_epoch=60, updates_per_epoch=30, total_updates=TOTAL,
               padding_efficiency=0.71),
        P.Model(path="models/smollm2-135m", parameters=134_515_008, trainable_parameters=1_474_560,
                quantization={"bits": 4, "group_size": 32}, base_dtype="float32", num_layers=30,
                load_seconds=2.4),
        P.State(state="training"),
    ]
    trained = 0
    best = math.inf
    for step in range(1, TOTAL + 1):
        loss = 1.05 + 2.2 * math.exp(-step / 9) + rng.uniform(-0.08, 0.08)
        tokens = rng.randint(520, 680)
        trained += tokens
        elapsed = 1.31 * step + 2.4
        memory = P.Memory(
            mlx_active=int((2.05 + 0.01 * rng.random()) * GB), mlx_cache=int((0.2 + 0.02 * (step % 10)) * GB),
            mlx_peak=int((2.4 + 1.2 * (1 - math.exp(-step / 12))) * GB), rss=int((2.8 + 0.028 * step) * GB),
            system_available=int((7.5 - 0.155 * step) * GB), system_total=16 * GB,
        )
        events.append(P.Step(
            step=step, total_steps=TOTAL, epoch=1 + (step - 1) // 30, epoch_progress=((step - 1) % 30 + 1) / 30,
            loss=round(loss, 4), learning_rate=learning_rate(step), tokens=tokens, trained_tokens=trained,
            tokens_per_second=round(tokens / 1.31 + rng.uniform(-20, 20), 1), iterations_per_second=0.76,
            elapsed=round(elapsed, 2), eta=round(1.31 * (TOTAL - step), 2), memory=memory,
        ))
        if step == 20:
            events.append(P.MemoryEvent(memory=memory, action="cleared_cache", step=step))
        if step == 33:
            events.append(P.Warning(
                message="System available memory is 1.9 GB, under low_memory_gb (2.0 GB); the MLX cache was cleared.",
                code="low_memory",
            ))
        if step % 10 == 0:
            val = round(1.2 + 1.6 * math.exp(-step / 11) + rng.uniform(-0.02, 0.02), 4)
            is_best = val < best
            best = min(best, val)
            events.append(P.Eval(step=step, epoch=1 + (step - 1) // 30, val_loss=val, val_time=0.9,
                                 best_val_loss=best, is_best=is_best))
            n = step // 10  # recall rises as the facts go in
            events.append(P.Recall(step=step, epoch=1 + (step - 1) // 30, recall=RECALL[n][2],
                                   token_accuracy=RECALL[n][3], samples=128, eval_time=0.6, trained=RECALL[n][0],
                                   paraphrase=RECALL[n][1], best_recall=RECALL[n][2], is_best=True))
            events.append(P.Checkpoint(step=step, epoch=1 + (step - 1) // 30,
                                       path=f"{RUN_DIR}/checkpoints/step_{step:06d}", reason="periodic"))
            if is_best:
                events.append(P.Checkpoint(step=step, epoch=1, path=f"{RUN_DIR}/adapters", reason="best"))
        if step == 30:
            events.append(P.Checkpoint(step=step, epoch=1, path=f"{RUN_DIR}/checkpoints/step_{step:06d}",
                                       reason="epoch_end"))
    events += [
        P.Checkpoint(step=TOTAL, epoch=2, path=f"{RUN_DIR}/final", reason="final"),
        P.Done(status="completed", summary={
            "steps": TOTAL, "trained_tokens": trained, "elapsed": round(1.31 * TOTAL + 2.4, 2),
            "final_loss": next(e.loss for e in reversed(events) if isinstance(e, P.Step)),
            "best_val_loss": best, "best_recall": RECALL[4][2], "best_by": "recall",
            "best_adapter": f"{RUN_DIR}/adapters", "final_adapter": f"{RUN_DIR}/final",
        }),
        P.Finished(command="train"),
        P.State(state="idle"),
    ]
    return events


def preflight_events() -> list[P.Record]:
    checks = [
        ("system", "python", "pass", "Python 3.11.9", ""),
        ("system", "packages", "pass", "mlx 0.29.3, mlx-lm 0.28.2, textual 8.2.8", ""),
        ("hardware", "memory", "warn", "16.0 GB total, 6.1 GB available now",
         "Close other apps to free memory before a long run."),
        ("hardware", "device", "pass", "cpu backend, matmul 182 GFLOP/s with OpenBLAS", ""),
        ("data", "files", "pass", "data/train.jsonl (120 samples), data/valid.jsonl (16 samples)", ""),
        ("data", "format", "pass", "chat (messages with user and assistant turns)", ""),
        ("data", "token lengths", "warn", "3 of 120 training samples are longer than max_seq_length 512",
         "Raise max_seq_length to 640 or shorten those samples."),
        ("model", "base model", "pass", "models/smollm2-135m: llama, 4-bit, 135 M parameters, loads in 2.4 s", ""),
        ("system", "swap", "fail", "3.1 GB of swap in use; training will slow down and may be killed",
         "Quit memory-hungry apps (browsers, Docker) and run preflight again."),
        ("system", "disk", "pass", "41.2 GB free in checkpoints", ""),
    ]
    recommended = {"batch_size": 4, "grad_accumulation_steps": 2, "max_seq_length": 512, "num_layers": 16,
                   "learning_rate": 1e-4, "grad_checkpoint": True, "memory_guard_gb": 1.0}
    return [
        P.Hello(protocol=P.PROTOCOL_VERSION, engine_version="0.1.0", mlx_version="0.29.3",
                mlx_lm_version="0.28.2", device="cpu", blas="openblas", pid=4243, platform="Linux x86_64"),
        P.State(state="idle"),
        P.State(state="preflight"),
        *(P.Check(category=c, name=n, status=s, detail=d, fix=f) for c, n, s, d, f in checks),
        P.ProbeResult(batch_size=2, max_seq_length=512, peak_memory=int(3.4 * GB), tokens_per_second=402.5, ok=True),
        P.ProbeResult(batch_size=4, max_seq_length=512, peak_memory=int(5.9 * GB), tokens_per_second=455.0, ok=True),
        P.ProbeResult(batch_size=8, max_seq_length=512, peak_memory=int(11.8 * GB), tokens_per_second=0.0, ok=False,
                      note="over the 8.0 GB budget"),
        P.PreflightDone(report={"pass": 7, "warn": 2, "fail": 1}, recommended=recommended,
                        report_path="checkpoints/preflight_report.json",
                        recommended_path="checkpoints/recommended_config.json"),
        P.Finished(command="preflight"),
        P.State(state="idle"),
    ]


if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    write_events(HERE / "run_events.jsonl", run_events())
    write_events(HERE / "preflight_events.jsonl", preflight_events())
    print(f"wrote {HERE}/run_events.jsonl and preflight_events.jsonl")

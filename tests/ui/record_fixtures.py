"""Record the event streams the UI tests replay from the real engine: a short training run and a
preflight with its probe, on the tiny llama built in code.

    .venv/bin/python tests/ui/record_fixtures.py

The streams are what the engine says, word for word; only the temporary folders are renamed to
the stable names the tests use (the model ``models/tiny-llama``, the run folder
``checkpoints/run-20250501-120000``, the data ``data``, preflight's folder ``checkpoints``).
Run it again when the engine's events change; the tests read their expectations from the
recordings where they are figures (losses, rates, memory).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from enginetools import EngineRun  # noqa: E402
from tiny_model import build_tiny_model, write_chat_data  # noqa: E402

from farense_core import protocol as P  # noqa: E402
from farense_tui.runs import write_events  # noqa: E402

FIXTURES = HERE / "fixtures"
RUN_DIR = "checkpoints/run-20250501-120000"
MODEL = "models/tiny-llama"
ITERS = 40

CONFIG = {
    "model": MODEL, "data": "data", "fine_tune_type": "full", "num_layers": -1, "mask_prompt": True,
    "batch_size": 2, "grad_accumulation_steps": 2, "iters": ITERS, "learning_rate": 3e-3, "lr_schedule": "cosine",
    "warmup_steps": 5, "steps_per_report": 5, "steps_per_eval": 10, "save_every": 10, "val_batches": -1,
    "eval_samples": 8, "keep_checkpoints": 3, "seed": 0,
    # shorter than the longest examples: the truncation warning, as a real run gives it
    "max_seq_length": 160,
    # a cache clear on every update, with its memory event, as on a machine short of memory
    "low_memory_gb": 1024.0,
}


def renamed(events: list[P.Record], names: dict[str, str]) -> list[P.Record]:
    """The events with the temporary folders' paths replaced by the tests' stable names."""
    lines = []
    for event in events:
        line = event.to_line()
        for old, new in sorted(names.items(), key=lambda kv: -len(kv[0])):
            line = line.replace(json.dumps(old)[1:-1], new)
        lines.append(P.parse_event(line))
    return lines


def record() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fixtures-"))
    try:
        model = build_tiny_model(tmp / "model")
        data = write_chat_data(tmp / "data", n_train=16, n_valid=4, seed=1)
        shutil.copy(data / "train.jsonl", data / "probe_paraphrase.jsonl")
        run_dir, out = tmp / "run", tmp / "out"
        config = {**CONFIG, "model": str(model), "data": str(data)}
        names = {str(model): MODEL, str(data): "data", str(run_dir): RUN_DIR, str(out): "checkpoints", str(tmp): ".",
                 str(HERE.parent.parent): "."}

        engine = EngineRun()
        try:
            train = engine.request(P.Train(config=config, run_dir=str(run_dir)))
            preflight = engine.request(P.Preflight(config={**config, "low_memory_gb": 2.0}, out=str(out), probe=True,
                                                   probe_seconds=20.0))
        finally:
            engine.close()
        hello = [e for e in engine.events if isinstance(e, P.Hello)][:1]
        run_events = renamed(hello + [e for e in train if not isinstance(e, P.Hello)], names)
        preflight_events = renamed(hello + preflight, names)
        assert run_events[-1].type == "finished" and run_events[-1].status == "ok", run_events[-3:]
        assert preflight_events[-1].type == "finished" and preflight_events[-1].status == "ok", preflight_events[-3:]
        write_events(FIXTURES / "run_events.jsonl", run_events + [P.State(state="idle")])
        write_events(FIXTURES / "preflight_events.jsonl", preflight_events + [P.State(state="idle")])
        print(f"wrote {FIXTURES / 'run_events.jsonl'} ({len(run_events)} events) and "
              f"{FIXTURES / 'preflight_events.jsonl'} ({len(preflight_events)} events)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    record()

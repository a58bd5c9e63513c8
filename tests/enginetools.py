"""Helpers for engine tests: run training in-process or through the real engine subprocess."""

from __future__ import annotations

import io
import queue
import threading
import time
from pathlib import Path

from farense_core import protocol as P


def base_config(model: Path, data: Path, **kw) -> dict:
    cfg = {
        "model": str(model), "data": str(data), "batch_size": 2, "iters": 12, "num_layers": 2,
        "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0}, "learning_rate": 1e-3,
        "steps_per_eval": 4, "save_every": 3, "val_batches": -1, "seed": 3, "max_seq_length": 256,
        "memory_guard_gb": 0.0, "low_memory_gb": 0.0, "keep_checkpoints": 0,
    }
    cfg.update(kw)
    return cfg


def train_in_process(cfg: dict, run_dir: Path, resume: bool = False,
                     from_checkpoint: int | None = None) -> tuple[P.Done, list]:
    from engine.server import Context
    from engine.trainer import train

    out = io.StringIO()
    ctx = Context(out)
    done = train(ctx, cfg, run_dir, resume, from_checkpoint)
    events = [P.parse_event(line) for line in out.getvalue().splitlines()]
    return done, events


def train_stopped_at(cfg: dict, run_dir: Path, update: int) -> P.Done:
    """The run trained in-process and stopped (with a checkpoint) after ``update``, as a user's stop."""
    from engine.server import Context
    from engine.trainer import train

    class StopAt(Context):
        def emit(self, record):
            super().emit(record)
            if isinstance(record, P.Step) and record.step == update:
                self.stop_requested.set()

    done = train(StopAt(io.StringIO()), cfg, run_dir)
    assert done.status == "stopped" and done.summary["updates"] == update
    return done


def adapter_arrays(path: Path) -> dict:
    import mlx.core as mx

    return mx.load(str(path))


def assert_bit_identical(a: dict, b: dict) -> None:
    import numpy as np

    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(np.array(a[k]), np.array(b[k])), k


def assert_adapters_close(a: Path, b: Path, tolerance: float) -> None:
    """Two runs' adapters (their adapters.safetensors) hold the same arrays to ``tolerance``."""
    import numpy as np

    first, second = adapter_arrays(a), adapter_arrays(b)
    assert first.keys() == second.keys() and first
    for k in first:
        assert np.abs(np.array(first[k]) - np.array(second[k])).max() < tolerance, k


def token_batch(rows: int, width: int, vocab: int, seed: int = 0):
    """(inputs, targets, mask) of random tokens; the first row's first third is a prompt without loss, the
    last row's second half padding."""
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = mx.array(rng.integers(3, vocab, (rows, width + 1)).astype(np.int32))
    mask = np.ones((rows, width), np.float32)
    mask[0, : width // 3] = 0
    mask[-1, width // 2:] = 0
    return tokens[:, :-1], tokens[:, 1:], mx.array(mask)


def step_peak(model, loss, batch) -> int:
    """MLX's peak memory (bytes) of one compiled training step (Adam) of ``model`` over ``batch``, after the
    call that compiles it."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from engine import step

    opt = optim.Adam(learning_rate=1e-4)
    update = step.compiled_step(model, opt, nn.value_and_grad(model, loss))
    for _ in range(2):
        mx.synchronize()
        mx.clear_cache()
        mx.reset_peak_memory()
        out = update(*batch, None, None, None, True)
        mx.eval(model.state, opt.state, out[0])
    return mx.get_peak_memory()


class EngineRun:
    """The real engine process, for every test that drives one: jobs as requests, waits with deadlines."""

    def __init__(self):
        from farense_tui.engine_client import EngineProcess

        self.engine = EngineProcess().start()
        self.events: list = []
        self._queue: "queue.Queue" = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for ev in self.engine.events():
            self._queue.put(ev)
        self._queue.put(None)  # the engine's stdout closed

    def send(self, record) -> None:
        assert self.engine.send(record)

    def until(self, predicate, timeout: float = 120.0, on_event=None):
        """Read events until one satisfies ``predicate``; return it. Fails when ``timeout`` passes
        or the engine's output ends first, with the last events and stderr lines."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                ev = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if ev is None:
                break
            self.events.append(ev)
            if on_event is not None:
                on_event(ev)
            if predicate(ev):
                return ev
        said = [getattr(e, "message", "") for e in self.events[-5:] if getattr(e, "message", "")]
        raise AssertionError(f"condition not met; last events: {[e.type for e in self.events[-5:]]} {said}; "
                             f"stderr: {list(self.engine.stderr_tail)[-5:]}")

    def request(self, command, timeout: float = 300.0, on_event=None) -> list:
        """Send a job command; its events, up to and including its ``finished`` event."""
        start = len(self.events)
        self.send(command)
        self.until(lambda e: isinstance(e, P.Finished) and e.command == command.type
                   and e.id == getattr(command, "id", ""), timeout, on_event)
        return self.events[start:]

    def close(self, timeout: float = 120.0) -> None:
        self.engine.close(timeout)

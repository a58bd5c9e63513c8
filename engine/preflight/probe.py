"""The probe: a few real training updates at candidate sizes measure peak memory and tokens/s."""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import mlx.core as mx
import mlx.nn as nn

from farense_core import protocol as P
from farense_core.format import gb

from .. import dequant
from ..frozen import frozen_blocks
from ..model import apply_fine_tune_type, set_base_dtype
from ..split import training_loss
from ..step import compiled_step, make_optimizer
from .estimate import (
    MEMORY_MARGIN,
    PROBE_SECONDS,
    RUNTIME_BYTES,
    Emit,
    ModelInfo,
    _jsonable,
    _round_up,
    estimate_memory,
    longest_example,
    minutes,
)
from .hardware import DeviceInfo, Hardware
from .recommend import MAX_RECOMMENDED_SEQ, Recommendation

# --------------------------------------------------------------------- probe


@dataclass
class ProbeRow:
    batch_size: int
    max_seq_length: int
    peak_memory: int = 0
    tokens_per_second: float = 0.0
    ok: bool = False
    note: str = ""
    seconds: float = 0.0
    ran: bool = False
    over_memory: bool = False  # measured or predicted over the limit
    estimated: int = 0         # the estimate's total, beside the measured peak

    def event(self) -> P.ProbeResult:
        return P.ProbeResult(batch_size=self.batch_size, max_seq_length=self.max_seq_length,
                             peak_memory=self.peak_memory, tokens_per_second=round(self.tokens_per_second, 2),
                             ok=self.ok, note=self.note, measured=self.ran,
                             over_memory=self.over_memory)


class ProbeRunner:
    """Real training updates on synthetic token batches: (batch, seq) -> (peak bytes, tokens/s, seconds).

    The model is the one the run would train (LoRA applied, base in the recommended dtype); every
    position carries loss, so each batch is the worst case of its shape. The first update of each
    shape is a warm-up; the rate comes from the ones after it.
    """

    def __init__(self, model, cfg: dict, vocab: int, min_seconds: float = 1.0, max_steps: int = 3):
        self.model, self.vocab = model, vocab
        self.min_seconds, self.max_steps = min_seconds, max_steps
        self.optimizer = make_optimizer(cfg)
        loss, _, _ = training_loss(model, frozen_blocks(model, cfg), list(range(1, 33)))
        self.step = compiled_step(model, self.optimizer, nn.value_and_grad(model, loss))  # the trainer's update
        model.train()

    def _update(self, inputs, targets, mask) -> None:
        loss, ntoks, _ = self.step(inputs, targets, mask, None, None, None, True)
        mx.eval(self.model.state, self.optimizer.state, loss, ntoks)

    def __call__(self, batch: int, seq: int) -> tuple[int, float, float]:
        mx.clear_cache()
        mx.reset_peak_memory()
        start = time.perf_counter()
        tokens = mx.random.randint(0, self.vocab, (batch, seq + 1))
        inputs, targets, mask = tokens[:, :-1], tokens[:, 1:], mx.ones((batch, seq))
        self._update(inputs, targets, mask)
        steps, tic = 0, time.perf_counter()
        while steps < 1 or (steps < self.max_steps and time.perf_counter() - tic < self.min_seconds):
            self._update(inputs, targets, mask)
            steps += 1
        rate = batch * seq * steps / (time.perf_counter() - tic)
        peak = int(mx.get_peak_memory())
        mx.clear_cache()
        return peak, rate, time.perf_counter() - start


def probe_candidates(seq: int, longest: int = 0, effective: int = 16,
                     batches: Iterable[int] = (1, 2, 4, 8, 16)) -> tuple[list, list]:
    """Sequence lengths: the recommended one, doubled towards the longest example (if longer), halved as
    fallbacks (measured only if the recommended one does not fit). Batch sizes ascending, only those that
    cut an update of ``effective`` examples into whole micro-batches (the update is the config's choice)."""
    seqs = [seq]
    while longest > seqs[-1] and seqs[-1] < MAX_RECOMMENDED_SEQ:
        seqs.append(min(seqs[-1] * 2, _round_up(longest, 64), MAX_RECOMMENDED_SEQ))
    fallback = seq // 2
    while fallback >= 64:
        seqs.append(fallback)
        fallback //= 2
    return seqs, sorted(b for b in set(batches) if effective % b == 0)


def run_probe(runner: Callable[[int, int], tuple], seqs: list[int], batches: list[int], budget: int,
              predict: Optional[Callable[[int, int], int]] = None, time_budget: float = PROBE_SECONDS,
              emit: Emit = lambda e: None, stop: Optional[threading.Event] = None,
              recommended_seq: Optional[int] = None) -> list[ProbeRow]:
    """Measure each (batch, seq) from small to large, skipping what cannot fit or finish in time.

    A candidate is ok when its measured peak plus the runtime keeps ``MEMORY_MARGIN`` of the
    budget free. Once one exceeds it, every candidate at least as large in both dimensions is
    skipped; so is any whose estimate (scaled by how the measured peaks compared with it so far)
    would exceed it, or whose time at the measured rate would overrun the time budget. The
    shorter fallback sequences run only if nothing at the recommended length fits.
    """
    limit = (1 - MEMORY_MARGIN) * budget
    rows: list[ProbeRow] = []
    exceeded: list[tuple[int, int]] = []
    ratios: list[float] = []  # measured / estimated, so far
    rate = 0.0
    started = time.perf_counter()
    recommended_seq = recommended_seq or seqs[0]
    for seq in seqs:
        if seq < recommended_seq and not _needs_shorter(rows, recommended_seq):
            break  # the recommended length fits (or was not measured for time): no fallbacks
        for batch in batches:
            row = ProbeRow(batch, seq)
            row.estimated = predict(batch, seq) if predict else 0
            spent = time.perf_counter() - started
            if stop is not None and stop.is_set():
                row.note = "skipped: stop requested"
            elif any(batch >= b and seq >= s for b, s in exceeded):
                row.note = "skipped: a smaller setting already went over the memory limit"
                row.over_memory = True
            elif row.estimated and row.estimated * max(ratios, default=1.0) > limit:
                predicted = row.estimated * max(ratios, default=1.0)
                row.note = f"skipped: predicted {gb(predicted)}, over the {gb(limit)} limit"
                row.over_memory = True
                exceeded.append((batch, seq))
            elif rate and spent + 2 * batch * seq / rate > time_budget:
                row.note = (f"skipped: about {2 * batch * seq / rate:.0f} s at the measured rate, past the "
                            f"probe's {time_budget:.0f} s budget")
            else:
                peak, tps, secs = runner(batch, seq)
                row.ran, row.peak_memory, row.tokens_per_second, row.seconds = True, peak, tps, round(secs, 2)
                used = peak + RUNTIME_BYTES
                row.ok = used <= limit
                row.note = f"uses {used / budget:.0%} of {gb(budget)}"
                if not row.ok:
                    row.note += f", over the {1 - MEMORY_MARGIN:.0%} limit"
                    row.over_memory = True
                    exceeded.append((batch, seq))
                if row.estimated:
                    ratios.append(used / row.estimated)
                rate = tps
            rows.append(row)
            emit(row.event())
    return rows


def _needs_shorter(rows: list[ProbeRow], seq: int) -> bool:
    """Nothing at the recommended length fits, and memory (not time) is why."""
    return (not any(r.ok and r.max_seq_length >= seq for r in rows)
            and any(r.over_memory and r.max_seq_length == seq for r in rows))


def pick_probe(rows: list[ProbeRow], seq: int, effective: Optional[int] = None) -> Optional[ProbeRow]:
    """The fastest setting at the longest sequence that fits, from the recommended length up; shorter
    lengths only when the recommended one went over the memory limit. With ``effective``, only batch
    sizes that divide an update of that many examples."""
    rows = [r for r in rows if effective is None or effective % r.batch_size == 0]
    ok = [r for r in rows if r.ok and r.max_seq_length >= seq]
    if _needs_shorter(rows, seq):
        ok = [r for r in rows if r.ok]
    if not ok:
        return None
    longest = max(r.max_seq_length for r in ok)
    return max((r for r in ok if r.max_seq_length == longest), key=lambda r: r.tokens_per_second)


def apply_probe(rec: Recommendation, rows: list[ProbeRow], train_tokens: int = 0) -> Optional[ProbeRow]:
    cfg = rec.config
    effective = cfg["batch_size"] * cfg["grad_accumulation_steps"]
    best = pick_probe(rows, cfg["max_seq_length"], effective)
    if best is None:
        rec.reasons.append(f"The probe measured no setting at {cfg['max_seq_length']} tokens that keeps "
                           f"{MEMORY_MARGIN:.0%} of memory free; the estimate-based values stay.")
        return None
    cfg["batch_size"] = best.batch_size
    cfg["grad_accumulation_steps"] = effective // best.batch_size
    cfg["max_seq_length"] = best.max_seq_length
    rec.source = "probe"
    why = (f"The probe measured batch {best.batch_size} x {best.max_seq_length} tokens as the fastest setting that "
           f"keeps {MEMORY_MARGIN:.0%} of memory free ({best.tokens_per_second:,.0f} tokens/s, peak "
           f"{gb(best.peak_memory)}); accumulation {cfg['grad_accumulation_steps']} keeps updates of "
           f"{effective} examples.")
    if train_tokens:
        why += (f" At that rate an epoch of {train_tokens:,} tokens takes at most about "
                f"{minutes(train_tokens / best.tokens_per_second)}.")
    rec.reasons.append(why)
    return best


def _probe(rec: Recommendation, model, info: Optional[ModelInfo], hw: Hardware, dev: DeviceInfo, lengths: dict,
           emit: Emit, stop: Optional[threading.Event], seconds: float, shapes: Optional[tuple]) -> dict:
    if model is None or info is None:
        rec.reasons.append("The probe did not run: the model did not load.")
        return {"ran": False, "reason": "the model did not load", "rows": []}
    cfg = rec.config
    tic = time.perf_counter()
    emit(P.State(state="preflight", detail="probe: preparing the model as the run would train it"))
    working = set_base_dtype(model, cfg["base_dtype"], cfg["fine_tune_type"] == "full")
    mx.random.seed(cfg["seed"])
    apply_fine_tune_type(model, cfg)
    dequant.apply(model, cfg["dequant_matmul"], working)
    mx.eval(model.parameters())
    runner = ProbeRunner(model, cfg, info.vocab)
    longest = longest_example(lengths)
    seqs, batches = shapes or probe_candidates(cfg["max_seq_length"], longest,
                                               cfg["batch_size"] * cfg["grad_accumulation_steps"])

    def predict(batch: int, seq: int) -> int:
        return estimate_memory(info, cfg, working, batch, seq)["total"]

    def measured(batch: int, seq: int):
        emit(P.State(state="preflight", detail=f"probe: batch {batch} x {seq} tokens"))
        return runner(batch, seq)

    rows = run_probe(measured, seqs, batches, hw.memory_budget, predict, seconds, emit, stop,
                     recommended_seq=cfg["max_seq_length"])
    train_tokens = sum(min(n, cfg["max_seq_length"]) for n in lengths.get("train", []))
    best = apply_probe(rec, rows, train_tokens)
    if best is not None:
        rec.estimate = estimate_memory(info, cfg, working)
    return {
        "ran": True, "seconds": round(time.perf_counter() - tic, 2), "time_budget": seconds,
        "budget": hw.memory_budget, "limit": int((1 - MEMORY_MARGIN) * hw.memory_budget), "working": working,
        "method": ("real LoRA updates (forward, backward, optimizer step, evaluated) on synthetic batches with loss "
                   "on every position; one warm-up update per shape, then timed updates; peak from "
                   "mx.get_peak_memory after mx.reset_peak_memory, plus the runtime allowance"),
        "rows": [_jsonable(dataclasses.asdict(r)) for r in rows],
        "picked": _jsonable(dataclasses.asdict(best)) if best else None,
    }



"""The recommended config: the seeds' memory tiers, adjusted to the model and the data (pure)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from farense_core import batching
from farense_core.format import count, gb

from .estimate import (
    GB,
    MEMORY_MARGIN,
    OPENBLAS_INSTALL,
    ModelInfo,
    _jsonable,
    _round_up,
    estimate_memory,
    longest_example,
    plural,
    working_dtype,
)
from .hardware import DeviceInfo, Hardware

# ------------------------------------------------------------ recommendation


@dataclass(frozen=True)
class Tier:
    name: str
    min_gb: float
    batch_size: int
    grad_accumulation_steps: int
    max_seq_length: int
    learning_rate: float


# The seeds' table (002, "Configurações Recomendadas por Hardware"), picked by available memory as
# the seeds' preflight_check.py did. One change: 16 GB uses 2e-4, what the user ran on that very
# machine (001); the 002 table's 5e-4 is not what they found to work there.
TIERS = (
    Tier("<6 GB", 0, 1, 8, 128, 1e-4),
    Tier("6-8 GB", 6, 1, 4, 256, 2e-4),
    Tier("8 GB", 8, 2, 2, 512, 3e-4),
    Tier("16 GB", 16, 4, 2, 512, 2e-4),
    Tier("32 GB+", 32, 8, 1, 512, 5e-4),
)
EPOCHS = 3                 # the seeds' default
LARGE_MODEL = 13e9         # above this, the learning rate is halved
MAX_RECOMMENDED_SEQ = 4096


def tier_for(budget_bytes: int) -> Tier:
    found = TIERS[0]
    for tier in TIERS:
        if budget_bytes >= tier.min_gb * GB:
            found = tier
    return found


@dataclass
class Recommendation:
    config: dict
    tier: str
    reasons: list = field(default_factory=list)
    estimate: Optional[dict] = None
    source: str = "tiers"

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))


def recommend(cfg: dict, raw: dict, hw: Hardware, dev: DeviceInfo, info: Optional[ModelInfo],
              model_name: str, lengths: Optional[dict] = None, train_count: int = 0) -> Recommendation:
    """A complete config for this machine, model and data, with a sentence per decision."""
    budget = hw.memory_budget
    limit = (1 - MEMORY_MARGIN) * budget
    tier = tier_for(budget)
    rec = copy.deepcopy(cfg)
    rec["model"] = cfg["model"] or model_name  # the user's name as given; the resolved default otherwise
    # what the config sets for learning (a recipe: learning rate, updates of so many examples) is kept;
    # the tier fills in what it leaves unset, and memory decides how an update is cut into micro-batches
    own_batch = "batch_size" in raw or "grad_accumulation_steps" in raw
    if not own_batch:
        rec.update(batch_size=tier.batch_size, grad_accumulation_steps=tier.grad_accumulation_steps)
    if "max_seq_length" not in raw:
        rec["max_seq_length"] = tier.max_seq_length
    if "learning_rate" not in raw:
        rec["learning_rate"] = tier.learning_rate
    reasons = [f"{gb(budget)} of memory available puts this machine in the {tier.name} tier: batch "
               f"{tier.batch_size}, accumulation {tier.grad_accumulation_steps}, {tier.max_seq_length} tokens, "
               f"learning rate {tier.learning_rate:g}."]
    kept = [k for k, given in (("updates of batch_size x grad_accumulation_steps examples", own_batch),
                               ("max_seq_length", "max_seq_length" in raw),
                               ("learning_rate", "learning_rate" in raw)) if given]
    if kept:
        reasons.append(f"The config's own {', '.join(kept)} are kept (a recipe's choices); only memory changes how "
                       f"an update is cut into micro-batches.")
    out = Recommendation(rec, tier.name, reasons)

    # base dtype: float32 on a CPU backend (the only fast BLAS path), the stored base on a GPU
    quant = info.quantization if info else None
    if dev.on_cpu:
        rec["base_dtype"] = "float32"
        why = ("On the CPU backend only float32 matmuls use the fast BLAS path (bfloat16, float16 and quantized "
               "ones run far slower), so the base is trained in float32")
        slower = {k: v for k, v in dev.rates.items() if k != "float32"}
        if "float32" in dev.rates and slower:
            why += (f" (measured here: float32 {dev.rates['float32']:.1f} GFLOP/s, "
                    + ", ".join(f"{k} {v:.1f}" for k, v in slower.items()) + ")")
        if dev.blas == "reference":
            why += f"; install OpenBLAS ('{OPENBLAS_INSTALL}') to make that path fast"
        reasons.append(why + ".")
    else:
        rec["base_dtype"] = "auto"
        reasons.append("On the GPU the base stays as stored" + (f" ({quant['bits']}-bit: QLoRA)" if quant else "")
                       + ", which is what keeps a large model in memory.")
    if info is None:
        reasons.append("The model did not load, so these tier values are not adjusted to it.")
        return out

    if info.trained_layers(rec) < rec["num_layers"]:
        rec["num_layers"] = info.layers
        reasons.append(f"num_layers is {info.layers}: the model has no more blocks than that.")
    if info.parameters > LARGE_MODEL and "learning_rate" not in raw:
        rec["learning_rate"] = tier.learning_rate / 2
        reasons.append(f"{info.parameters / 1e9:.0f}B parameters is a large model: the learning rate is halved "
                       f"to {rec['learning_rate']:g}.")

    def working() -> str:
        return working_dtype(rec["base_dtype"], quant, info.float_dtype, dev.on_cpu, rec["fine_tune_type"] == "full")

    def fits() -> bool:
        return estimate_memory(info, rec, working())["total"] <= limit

    stored = working_dtype("keep", quant, info.float_dtype, dev.on_cpu)
    if dev.on_cpu and stored != "float32" and not _fits_at_all(info, rec, working(), limit):
        rec["base_dtype"] = "keep"
        reasons.append(f"A float32 copy of the base ({gb(info.weight_bytes('float32'))}) does not fit in memory, so "
                       f"the base stays {stored} as stored: slower matmuls, but it fits.")

    # sequence length: cover the longest example when memory allows
    longest = longest_example(lengths)
    if longest > rec["max_seq_length"]:
        wanted = min(_round_up(longest, 64), MAX_RECOMMENDED_SEQ)
        before = rec["max_seq_length"]
        rec["max_seq_length"] = wanted
        if fits():
            reasons.append(f"The longest example has {longest} tokens, so max_seq_length is raised to {wanted} "
                           f"and nothing is truncated; the estimate still keeps {MEMORY_MARGIN:.0%} free.")
        else:
            rec["max_seq_length"] = before
            reasons.append(f"The longest example has {longest} tokens but {wanted} tokens would not fit; "
                           f"max_seq_length stays {before} and longer examples are truncated.")
    elif longest and _round_up(longest, 64) < rec["max_seq_length"]:
        rec["max_seq_length"] = _round_up(longest, 64)
        reasons.append(f"The longest example has {longest} tokens, so max_seq_length {rec['max_seq_length']} keeps "
                       f"every example whole; batches are never longer, so the estimate and the probe measure "
                       f"what the run will really hold.")

    # shrink until the estimate keeps the margin free: batch first (accumulation keeps the effective
    # batch), then the sequence, then gradient checkpointing
    shrunk = []
    while not fits():
        if rec["batch_size"] > 1:
            rec["batch_size"] //= 2
            rec["grad_accumulation_steps"] *= 2
            shrunk.append(f"batch {rec['batch_size']} x accumulation {rec['grad_accumulation_steps']}")
        elif rec["max_seq_length"] > 128:
            rec["max_seq_length"] = max(128, rec["max_seq_length"] // 2)
            shrunk.append(f"max_seq_length {rec['max_seq_length']}")
        elif not rec["grad_checkpoint"]:
            rec["grad_checkpoint"] = True
            shrunk.append("gradient checkpointing")
        else:
            reasons.append(f"Even batch 1 x 128 tokens with gradient checkpointing is estimated above "
                           f"{gb(limit)}: this model is too large for the memory available.")
            break
    if shrunk:
        reasons.append(f"{count(info.parameters)} parameters ({gb(info.weight_bytes(working()))} as trained) "
                       f"leave too little room for the tier's setting, so: {', '.join(shrunk)}.")

    _schedule(rec, raw, train_count, reasons)
    out.estimate = estimate_memory(info, rec, working())
    reasons.append(f"Estimated peak {gb(out.estimate['total'])} of {gb(budget)} available "
                   f"({out.estimate['total'] / budget:.0%}).")
    return out


def _fits_at_all(info: ModelInfo, rec: dict, working: str, limit: float) -> bool:
    smallest = dict(rec, batch_size=1, max_seq_length=128, grad_checkpoint=True)
    return estimate_memory(info, smallest, working)["total"] <= limit


def _schedule(rec: dict, raw: dict, train_count: int, reasons: list) -> None:
    """Epochs, warmup and intervals sized to the data; whatever the user set is kept."""
    if "epochs" not in raw and "iters" not in raw:
        rec["epochs"], rec["iters"] = float(EPOCHS), None
    per_epoch, total = batching.updates_planned(rec, train_count)
    if not total:
        return
    parts = []
    if "warmup_steps" not in raw:
        rec["warmup_steps"] = min(100, max(1, total // 10))
        parts.append(f"warmup over {plural(rec['warmup_steps'], 'update')}")
    if "steps_per_eval" not in raw:
        rec["steps_per_eval"] = max(1, min(200, per_epoch // 2 or 1))
        parts.append(f"validation every {rec['steps_per_eval']}")
    if "save_every" not in raw:
        rec["save_every"] = max(1, min(100, per_epoch // 2 or 1))
        parts.append(f"a checkpoint every {rec['save_every']}")
    if "steps_per_report" not in raw:
        rec["steps_per_report"] = max(1, min(10, per_epoch // 5 or 1))
    if parts:
        reasons.append(f"{train_count} examples make {plural(per_epoch, 'update')} per epoch and {total} in all: "
                       f"{', '.join(parts)}.")



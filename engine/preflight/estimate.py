"""Preflight's arithmetic, pure (no mlx): the model figures, memory, disk and time estimates,
how much training a fact needs, and the formatting the reports share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from farense_core import batching
from farense_core import config as C
from farense_core import protocol as P

GB = 1024 ** 3
MB = 1024 ** 2
REPORT_VERSION = 1
REPORT_FILE = "preflight_report.json"
RECOMMENDED_FILE = C.RECOMMENDED_FILE
MEMORY_MARGIN = 0.2            # a recommended setting keeps at least this share of the budget free
RUNTIME_BYTES = 512 * MB       # the engine outside MLX's buffers: Python, tokenizer, libraries
PROBE_SECONDS = 120.0          # wall-clock budget for the probe's training steps
PYTHON_MIN = (3, 10)           # pyproject's requires-python
PYTHON_TESTED = (3, 13)        # newest Python the project's wheels are known to cover
OPENBLAS_INSTALL = "sudo apt-get install libopenblas0-pthread"
# the brief's list; the project's own requirements (read from its metadata) are added to it
PACKAGES = ("mlx", "mlx-lm", "textual", "plotext", "psutil", "transformers")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "sgd": 0, "adafactor": 1}  # state arrays per trainable weight

Emit = Callable[[P.Record], None]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:,.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _jsonable(obj):
    """Report values as JSON: no inf/nan, no tuples, no numpy scalars."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.item())
    return obj


@dataclass
class ModelInfo:
    """The model figures the estimates need, taken from the loaded model."""

    path: str
    parameters: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    loaded_bytes: int                 # weights as loaded (packed when quantized)
    disk_bytes: int
    quantization: Optional[dict]
    float_dtype: str
    # per block, from the first: (module key, input dims, output dims) of its linear layers
    linears: list = field(default_factory=list)
    load_seconds: float = 0.0

    def weight_bytes(self, working: str) -> int:
        if working.endswith("-bit"):
            return self.loaded_bytes
        return self.parameters * DTYPE_BYTES.get(working, 4)

    def trained_layers(self, cfg: dict) -> int:
        n = cfg["num_layers"]
        return self.layers if n == -1 else min(n, self.layers)

    def trainable_parameters(self, cfg: dict) -> int:
        n = self.trained_layers(cfg)
        blocks = self.linears[len(self.linears) - n:] if n else []
        if cfg["fine_tune_type"] == "full":
            return sum(i * o for block in blocks for _, i, o in block)
        lora = cfg["lora_parameters"]
        keys = lora.get("keys")
        rank = lora["rank"]
        total = 0
        for block in blocks:
            for key, i, o in block:
                if keys is None or key in keys:
                    total += rank * (i + o) + (o if cfg["fine_tune_type"] == "dora" else 0)
        return total

def working_dtype(base_dtype: str, quantization: Optional[dict], float_dtype: str, on_cpu: bool,
                  full: bool = False) -> str:
    """The dtype label the base computes in: ``config.resolve_base_dtype`` for a model not loaded yet
    (a refused combination is reported by the trainer; the estimates take the stored base)."""
    bits = quantization["bits"] if quantization else None
    try:
        return C.resolve_base_dtype(base_dtype, bits, float_dtype, on_cpu, full)
    except C.ConfigError:
        return f"{bits}-bit" if bits else float_dtype


# ----------------------------------------------------------------- estimates


def estimate_memory(info: ModelInfo, cfg: dict, working: str, batch: Optional[int] = None,
                    seq: Optional[int] = None) -> dict:
    """Peak bytes of one training update, by part.

    Per token and trained block the backward pass keeps the inputs of the adapted linears, the
    norms' inputs, q/k/v, the MLP's gate/up/product (about 8 x hidden + 2 x kv + 4 x
    intermediate values) and the attention scores and probabilities (2 x heads x sequence);
    blocks below the lowest adapted one keep nothing. The logits are kept three times in float32
    (logits, softmax, their gradient). Checked against MLX's measured peak for SmolLM2-135M in
    float32 on the CPU: 0-6% over it from 64 to 512 tokens, batch 1 to 4.
    """
    batch = batch or cfg["batch_size"]
    seq = seq or cfg["max_seq_length"]
    act = 4 if working == "float32" else 2
    trainable = info.trainable_parameters(cfg)
    state_bytes = 4 if cfg["fine_tune_type"] != "full" else DTYPE_BYTES.get(working, 4)
    slots = OPTIMIZER_SLOTS.get(cfg["optimizer"], 2)
    n = info.trained_layers(cfg)
    kv = info.kv_heads * info.head_dim
    per_token_block = 8 * info.hidden + 2 * kv + 4 * info.intermediate + 2 * info.heads * seq
    tokens = batch * seq
    if cfg["grad_checkpoint"]:  # block inputs kept, one block's activations recomputed at a time
        blocks = tokens * (n * info.hidden + per_token_block) * act
    else:
        blocks = tokens * n * per_token_block * act
    parts = {
        "weights": info.weight_bytes(working),
        "trainable": trainable * state_bytes * (2 + slots),  # weights, gradients, optimizer state
        "activations": int(blocks * 1.1),
        "logits": tokens * info.vocab * 4 * 3,
        "runtime": RUNTIME_BYTES,
    }
    parts["total"] = sum(parts.values())
    parts.update(batch_size=batch, max_seq_length=seq, trainable_parameters=trainable, working=working)
    return parts


def estimate_disk(info: ModelInfo, cfg: dict, train_count: int, working: str = "") -> dict:
    """Bytes a run writes: kept checkpoints (adapter + optimizer state), best and final adapters, logs.
    A full fine-tune's weights are saved in the dtype they train in (``working``)."""
    trainable = info.trainable_parameters(cfg)
    weight_bytes = 4 if cfg["fine_tune_type"] != "full" else DTYPE_BYTES.get(working or info.float_dtype, 4)
    adapter = trainable * weight_bytes
    checkpoint = adapter * (1 + OPTIMIZER_SLOTS.get(cfg["optimizer"], 2)) + 64 * 1024
    per_epoch, total = batching.updates_planned(cfg, train_count)
    epochs = math.ceil(total / per_epoch) if per_epoch else 1
    saves = total // cfg["save_every"] + epochs
    kept = saves if cfg["keep_checkpoints"] == 0 else min(saves, cfg["keep_checkpoints"] + 1)  # +1 mid-write
    logs = total * 1200 + 1 * MB  # events.jsonl, metrics.csv and .json per update
    need = kept * checkpoint + 2 * adapter + logs
    return {"adapter": adapter, "checkpoint": checkpoint, "checkpoints_kept": kept, "logs": logs,
            "total": need, "fused_model": info.parameters * 2, "updates": total}


FACT_EXPOSURES = 36
FACT_EXPOSURES_WARN = 30


def phrasings_per_answer(samples: list[dict]) -> Optional[float]:
    """Examples per distinct answer: how many phrasings each fact has (None for text data)."""
    from farense_core.datafiles import question_answer

    answers = [qa[2] for qa in map(question_answer, samples) if qa is not None]
    return len(answers) / len(set(answers)) if answers else None


# the share of the measured matmul rate a training update achieves: the probe measured 97 tokens/s
# for a full fine-tune of SmolLM2-135M (829 MFLOP per token at 384 tokens) on this project's 2-core
# CPU while its float32 matmuls ran at 124 GFLOP/s, i.e. 0.65 (2026-11-30)
TRAIN_EFFICIENCY = 0.6


def training_flops_per_token(info: ModelInfo, cfg: dict, seq: int) -> float:
    """Forward through every block and the output layer, backward through the trained blocks
    (weights and inputs for full fine-tuning, inputs only for the frozen weights under LoRA)."""
    blocks = sum(i * o for block in info.linears for _, i, o in block)
    head = info.vocab * info.hidden
    attention = 4 * seq * info.heads * info.head_dim * info.layers  # scores and weighted values
    forward = 2 * (blocks + head) + attention
    share = info.trained_layers(cfg) / max(info.layers, 1)
    backward_blocks = (2 if cfg["fine_tune_type"] == "full" else 1) * share * (2 * blocks + attention)
    return forward + backward_blocks + 2 * head


def estimate_time(info: ModelInfo, cfg: dict, lengths: list[int], rate_gflops: float = 0.0,
                  tokens_per_second: float = 0.0) -> dict:
    """Seconds per epoch and for the run: from a measured training rate when given, else from the
    matmul rate."""
    seq = cfg["max_seq_length"]
    tokens = sum(min(n, seq) for n in lengths)
    mean = tokens / len(lengths) if lengths else seq
    if not tokens_per_second:
        tokens_per_second = rate_gflops * 1e9 * TRAIN_EFFICIENCY / training_flops_per_token(info, cfg, int(mean))
    per_epoch_updates, total = batching.updates_planned(cfg, len(lengths))
    epochs = total / per_epoch_updates if per_epoch_updates else 0
    epoch_seconds = tokens / tokens_per_second if tokens_per_second else 0.0
    return {"tokens_per_epoch": tokens, "tokens_per_second": round(tokens_per_second, 1), "epochs": epochs,
            "epoch_seconds": round(epoch_seconds, 1), "seconds": round(epoch_seconds * epochs, 1)}


def longest_example(lengths: Optional[dict]) -> int:
    """Tokens in the longest example of any file (0 when unknown)."""
    return max((max(v) for v in (lengths or {}).values() if v), default=0)


def _round_up(n: int, multiple: int) -> int:
    return multiple * math.ceil(n / multiple)

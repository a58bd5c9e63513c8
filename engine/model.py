"""Model preparation, shared by training, the preflight probe, chat and evaluation: loading with
mlx-lm, the base's dtype (``farense_core.config.resolve_base_dtype`` says which, this applies it),
the fine-tune type (LoRA, DoRA or full) and the adapter's config."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from farense_core.config import ConfigError, resolve_base_dtype
from farense_core.models import ModelNotFoundError, locate_model


class InputError(ValueError):
    """A problem with the user's inputs (model, data, settings), reported as one sentence."""


def load_model(name: str):
    """mlx-lm's loader, with one sentence for a model that is not there."""
    from mlx_lm.utils import load

    try:
        path = locate_model(name)
    except ModelNotFoundError as e:
        raise InputError(str(e)) from None
    try:
        return load(path)
    except Exception as e:  # noqa: BLE001 - hub errors, bad configs
        if not Path(path).exists():
            raise InputError(f"The model {name} is not a local folder and could not be fetched from the "
                             f"Hugging Face hub ({type(e).__name__}); use a local MLX model folder or default.") from None
        raise


def quantization_of(model) -> Optional[dict]:
    for _, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return {"bits": int(m.bits), "group_size": int(m.group_size), "mode": getattr(m, "mode", "affine")}
    return None


def float_dtype(model) -> str:
    """The dtype of the model's float weights ("float16" for a quantized model's scales)."""
    for _, p in tree_flatten(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating):
            return str(p.dtype).replace("mlx.core.", "")
    return "float32"


def on_cpu() -> bool:
    return mx.default_device().type == mx.cpu


def set_base_dtype(model, choice: str, full: bool = False, float32_fits: bool = True) -> str:
    """Apply ``base_dtype`` to a loaded model; return the dtype the base computes in."""
    from mlx_lm.utils import dequantize_model

    quant = quantization_of(model)
    try:
        label = resolve_base_dtype(choice, quant["bits"] if quant else None, float_dtype(model), on_cpu(), full,
                                   float32_fits)
    except ConfigError as e:
        raise InputError(str(e)) from None
    if label.endswith("-bit") or (quant is None and label == float_dtype(model)):
        return label
    if quant:
        dequantize_model(model)
    model.set_dtype(getattr(mx, label))
    return label


def apply_fine_tune_type(model, cfg: dict) -> None:
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    n = cfg["num_layers"]
    if n > len(model.layers):
        raise InputError(f"num_layers is {n}, but the model has only {len(model.layers)} layers; "
                         f"set num_layers to at most {len(model.layers)} (or -1 for all).")
    if cfg["fine_tune_type"] == "full":
        for layer in model.layers[-max(n, 0):]:
            layer.unfreeze()
    else:
        check_lora_keys(model, cfg["lora_parameters"].get("keys"))
        linear_to_lora_layers(model, n, cfg["lora_parameters"], use_dora=cfg["fine_tune_type"] == "dora")


def adaptable_modules(model) -> list[str]:
    """The names, within a block, of the layers LoRA can adapt (linear and switch layers)."""
    block = model.layers[-1]
    return [name for name, m in block.named_modules()
            if name and (isinstance(m, (nn.Linear, nn.QuantizedLinear)) or "SwitchLinear" in type(m).__name__)]


def check_lora_keys(model, keys) -> None:
    """lora_parameters.keys must name layers the blocks have (mlx-lm skips unknown names silently and
    fails on other kinds of module)."""
    if not keys:
        return
    have = adaptable_modules(model)
    wrong = [k for k in keys if k not in have]
    if wrong:
        raise InputError(f"lora_parameters.keys names {', '.join(wrong)}, which this model's blocks do not have as "
                         f"linear layers; use some of: {', '.join(have)}.")


def prepare(name: str, cfg: dict):
    """Load ``name`` and make it trainable as ``cfg`` says: (model, tokenizer, stored quantization,
    the dtype the base computes in)."""
    model, tokenizer = load_model(name)
    stored = quantization_of(model)
    base = set_base_dtype(model, cfg["base_dtype"], cfg["fine_tune_type"] == "full")
    mx.random.seed(cfg["seed"])
    apply_fine_tune_type(model, cfg)
    mx.eval(model.parameters())
    return model, tokenizer, stored, base


def parameter_counts(model) -> tuple[int, int]:
    """(parameters, trainable parameters); packed quantized weights count as the values they hold."""
    total = sum(p.size for _, p in tree_flatten(model.parameters()))
    trainable = sum(p.size for _, p in tree_flatten(model.trainable_parameters()))
    for _, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            total += m.weight.size * (32 // m.bits) - m.weight.size - m.scales.size - m.biases.size
    return int(total), int(trainable)


def trainable_weights(model) -> dict:
    return dict(tree_flatten(model.trainable_parameters()))


def weights_finite(model) -> bool:
    return all(bool(mx.all(mx.isfinite(w)).item()) for w in trainable_weights(model).values())


def adapter_config(cfg: dict, model_name: str) -> dict:
    """What mlx-lm's load_adapters and fuse read, plus the run's settings for the record."""
    keep = ("fine_tune_type", "num_layers", "lora_parameters", "base_dtype", "max_seq_length",
            "mask_prompt", "learning_rate", "batch_size", "grad_accumulation_steps", "seed")
    out = {k: cfg[k] for k in keep}
    out["model"] = model_name
    return out

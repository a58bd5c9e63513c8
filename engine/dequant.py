"""Quantized layers computed as a dequantize, then a float matmul (``dequant_matmul``).

A quantized layer's matmul (``mx.quantized_matmul``) unpacks its 4-bit weights inside the kernel. For the
many rows of a training step that kernel is slower on CUDA than unpacking the weights into a float matrix
and running the GPU's float matmul (bench/bench_dequant.py measures both). Here a quantized linear layer
does the latter, and its gradient with respect to its input unpacks the weights again rather than keeping
the float matrix from the forward pass: the float copy of one layer lives only while its matmul runs, so
the step's memory is that of the quantized model plus one layer's float weights.

The layers stay ``nn.QuantizedLinear`` (their parameters, names and what saves or fuses them do not
change); only how they compute does. The weights are frozen: no gradient reaches them.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn


# fewer rows than this (generation: a token per sequence) keep MLX's kernel, made for them
DEQUANT_FROM_ROWS = 256


def decide(choice: str, base: str) -> tuple[bool, str]:
    """Whether a run's quantized layers compute dequantized (``dequant_matmul`` is auto, on or off; ``base``
    is what the base computes in, "4-bit" when kept quantized), and the reason in a few words."""
    if not base.endswith("-bit"):
        return False, f"not used: the base computes in {base}"
    if choice == "off":
        return False, "MLX's quantized kernel (dequant_matmul: off)"
    if choice == "auto" and not (mx.default_device().type == mx.gpu and mx.cuda.is_available()):
        return False, "MLX's quantized kernel (dequant_matmul: auto uses it off CUDA GPUs; on forces the other)"
    return True, f"weights dequantized for matmuls of {DEQUANT_FROM_ROWS} rows or more, then float matmuls"


@lru_cache(maxsize=None)
def _matmul(group_size: int, bits: int, mode: str):
    """``x @ dequantize(w).T`` with a gradient for ``x`` that dequantizes again."""

    def unpack(w, scales, biases, after):
        # only once ``after`` (the matmul's other operand) is computed: the unpacking does not depend on the
        # data, and MLX would otherwise unpack many layers' weights early and hold them (measured: a step of
        # SmolLM2 peaked 0.22 GB higher on the CPU)
        w, scales, biases = mx.depends([w, scales, biases], [after])
        return mx.dequantize(w, scales, biases, group_size=group_size, bits=bits, mode=mode)

    @mx.custom_function
    def matmul(x, w, scales, biases):
        return x @ unpack(w, scales, biases, x).astype(x.dtype).T

    @matmul.vjp
    def matmul_vjp(primals, cotangent, output):
        x, w, scales, biases = primals
        dx = cotangent @ unpack(w, scales, biases, cotangent).astype(cotangent.dtype)
        return dx, mx.zeros_like(w), mx.zeros_like(scales), mx.zeros_like(biases)

    return matmul


class DequantizedLinear(nn.QuantizedLinear):
    """A quantized linear layer whose matmul dequantizes first (see the module's docstring)."""

    def __call__(self, x):
        biases = self.get("biases")
        if biases is None or x.size < DEQUANT_FROM_ROWS * x.shape[-1]:  # modes without biases: the kernel
            return super().__call__(x)
        y = _matmul(self.group_size, self.bits, getattr(self, "mode", "affine"))(
            x, self["weight"], self["scales"], biases)
        if "bias" in self:
            y = y + self["bias"]
        return y


def use_dequantized_matmul(model) -> int:
    """Make every quantized linear layer of ``model`` compute as ``DequantizedLinear``; the count changed."""
    changed = 0
    # mlx-lm's DoRA layers compute with their base's weights themselves, never calling it
    dora = {id(m.linear) for _, m in model.named_modules() if type(m).__name__.startswith("DoRA")}
    for _, m in model.named_modules():
        if type(m) is nn.QuantizedLinear and id(m) not in dora:
            m.__class__ = DequantizedLinear
            changed += 1
    return changed


def apply(model, choice: str, base: str) -> str:
    """``dequant_matmul`` applied to a model prepared for training; what its quantized matmuls are, in words
    (with how many layers compute dequantized: DoRA's layers, mixture-of-experts layers and a head tied to a
    quantized embedding keep their own computation)."""
    on, why = decide(choice, base)
    if on:
        why += f" ({use_dequantized_matmul(model)} layers)"
    return why

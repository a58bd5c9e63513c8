"""Import a llama-architecture GGUF file (llama.cpp, LM Studio, Ollama) as an MLX model folder.

The folder holds ``config.json``, ``model.safetensors`` and the tokenizer, and ``mlx_lm.load`` reads it.

- MLX reads Q4_0, Q4_1 and Q8_0 blocks natively as affine-quantized arrays with group size 32 (4 or
  8 bits), exactly, so those tensors stay quantized. One file often mixes types (SmolLM2's Q4_1 file
  keeps its embedding in Q8_0): the quantization block names every module whose bits differ from the
  most common ones.
- F32 and F16 tensors stay float (BF16 arrives as float16: that is how MLX's GGUF reader gives it).
- Every other block type (the K-quants, the IQ types, Q5_0...) is refused with one sentence rather
  than dequantized: MLX cannot keep them quantized, and a silently 4x larger model is no import.
- llama.cpp stores the q and k projection rows reordered for its rotary layout; they are put back
  in the Hugging Face order that mlx-lm's llama expects (a row permutation, exact on quantized rows).
- The tokenizer is rebuilt from the file's metadata with transformers' GGUF converter, with the chat
  template and the special tokens the file names.

The header is read here, before any tensor loads, so a file that cannot be imported is refused at
once. The folder is written beside ``out_dir`` under a hidden name and renamed into place at the
end: there is never a half-written model folder.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

GROUP_SIZE = 32  # every GGUF block type MLX reads quantized has 32 weights per block

# ggml tensor type ids (ggml.h) -> names, for messages
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
    24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
    35: "TQ2_0", 39: "MXFP4",
}
IMPORTABLE_TYPES = {0, 1, 30, 2, 3, 8}  # F32, F16, BF16, Q4_0, Q4_1, Q8_0

# GGUF tensor names -> mlx-lm llama module paths
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.x rope scaling, as per-frequency factors

# Llama 3.x rope scaling: llama.cpp stores only the resulting factors; these are the parameters
# every Llama 3.1/3.2 release uses, and the factors are checked against them.
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


class GGUFImportError(ValueError):
    """One sentence: what is wrong with the file and what to do instead."""


# ---------------------------------------------------------------- reading the header


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # numbers and strings as Python values, arrays as lists
    tensor_types: dict[str, int]  # tensor name -> ggml type id


# GGUF metadata value types -> struct format (8 is a string, 9 an array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}


class _Truncated(Exception):
    pass


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _Truncated
    return data


def _unpack(f: BinaryIO, fmt: str):
    return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]


def _string(f: BinaryIO) -> str:
    return _read(f, _unpack(f, "<Q")).decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int):
    if kind == 8:
        return _string(f)
    if kind == 9:
        item, count = _unpack(f, "<I"), _unpack(f, "<Q")
        if item == 8:
            return [_string(f) for _ in range(count)]
        if item in _NUMPY:
            dtype = np.dtype(_NUMPY[item])
            return np.frombuffer(_read(f, dtype.itemsize * count), dtype=dtype).tolist()
        return [_value(f, item) for _ in range(count)]
    if kind in _SCALARS:
        return _unpack(f, _SCALARS[kind])
    raise ValueError(f"unknown metadata value type {kind}")


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """The metadata and tensor types of a GGUF file, without reading any tensor data."""
    path = Path(path)
    if not path.exists():
        raise GGUFImportError(f"{path} does not exist; check the path and try again.")
    if path.is_dir():
        raise GGUFImportError(f"{path} is a folder, not a GGUF file; give the path of the .gguf file.")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFImportError(
                f"{path} is not a GGUF file (it does not start with 'GGUF'); "
                "give a .gguf file from llama.cpp, LM Studio or Ollama."
            )
        try:
            version = _unpack(f, "<I")
            if version not in (2, 3):
                raise GGUFImportError(
                    f"{path} is GGUF version {version}, which this importer does not read; "
                    "convert the model again with a current llama.cpp."
                )
            n_tensors, n_kv = _unpack(f, "<Q"), _unpack(f, "<Q")
            metadata = {}
            for _ in range(n_kv):
                key = _string(f)
                metadata[key] = _value(f, _unpack(f, "<I"))
            tensor_types = {}
            for _ in range(n_tensors):
                name = _string(f)
                n_dims = _unpack(f, "<I")
                _read(f, 8 * n_dims)  # the shape: mx.load gives it
                tensor_types[name] = _unpack(f, "<I")
                _unpack(f, "<Q")  # the offset
        except (_Truncated, ValueError, struct.error):
            raise GGUFImportError(f"{path} is truncated or damaged; download or convert it again.") from None
    return GGUFHeader(version, metadata, tensor_types)


# ---------------------------------------------------------------- checks and the model config


def _check_importable(path: Path, header: GGUFHeader) -> None:
    meta = header.metadata
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFImportError(
            f"{path.name} is a {arch!r} model, but only 'llama' models can be imported from GGUF; "
            "use the model's Hugging Face id (an MLX conversion) instead."
        )
    if meta.get("llama.expert_count", 0):
        raise GGUFImportError(
            f"{path.name} is a mixture-of-experts llama, which this importer does not handle; "
            "use the model's Hugging Face id instead."
        )
    refused = Counter(t for t in header.tensor_types.values() if t not in IMPORTABLE_TYPES)
    if refused:
        kind, count = refused.most_common(1)[0]
        name = GGML_TYPE_NAMES.get(kind, f"ggml type {kind}")
        raise GGUFImportError(
            f"{path.name} stores {count} tensors as {name}, which MLX cannot keep quantized; "
            "download the Q4_0, Q4_1, Q8_0, F16 or F32 version of the model instead."
        )
    if "tokenizer.ggml.tokens" not in meta:
        raise GGUFImportError(
            f"{path.name} has no tokenizer in its metadata; convert the model again with a current llama.cpp."
        )


def _meta(meta: dict, key: str, path: Path, default: Any = None) -> Any:
    value = meta.get(key, default)
    if value is None:
        raise GGUFImportError(
            f"{path.name} lacks the metadata key {key!r}; convert the model again with a current llama.cpp."
        )
    if isinstance(value, list):
        raise GGUFImportError(
            f"{path.name} sets {key!r} per layer, which a llama model cannot hold; "
            "use the model's Hugging Face id instead."
        )
    return value


def _f32(value: float) -> float:
    """A float32 from the file as the short decimal it was written from (1e-05, not 9.99999974e-06)."""
    return float(f"{value:.7g}")


def _llama3_rope_factors(factor: float, head_dim: int, base: float) -> np.ndarray:
    """The per-frequency factors llama.cpp writes for Llama 3.x rope scaling."""
    low, high = LLAMA3_ROPE["low_freq_factor"], LLAMA3_ROPE["high_freq_factor"]
    old_context = LLAMA3_ROPE["original_max_position_embeddings"]
    wavelen = 2 * math.pi * base ** (np.arange(0, head_dim, 2) / head_dim)
    smooth = (old_context / wavelen - low) / (high - low)
    return np.where(
        wavelen < old_context / high, 1.0,
        np.where(wavelen > old_context / low, factor, 1 / ((1 - smooth) / factor + smooth)),
    )


def _rope_scaling(path: Path, meta: dict, rope_factors, head_dim: int, base: float) -> dict | None:
    kind = meta.get("llama.rope.scaling.type", "none")
    if kind == "linear":
        return {"type": "linear", "factor": _f32(_meta(meta, "llama.rope.scaling.factor", path))}
    if kind != "none":
        raise GGUFImportError(
            f"{path.name} uses {kind!r} rope scaling, which this importer does not handle; "
            "use the model's Hugging Face id instead."
        )
    if rope_factors is None:
        return None
    factors = np.asarray(rope_factors, dtype=np.float64).reshape(-1)
    if np.allclose(factors, 1.0):
        return None
    factor = float(factors.max())
    if factors.size != head_dim // 2 or not np.allclose(
        factors, _llama3_rope_factors(factor, head_dim, base), rtol=1e-4
    ):
        raise GGUFImportError(
            f"{path.name} has rope frequency factors that match no Llama 3 rope scaling; "
            "use the model's Hugging Face id instead."
        )
    return {"rope_type": "llama3", "factor": _f32(factor), **LLAMA3_ROPE}


def _unpermute(x, n_head: int):
    """Undo llama.cpp's rotary row order: rows (head, pair index, half) -> (head, half, pair index)."""
    rows = x.shape[0]
    return x.reshape(n_head, rows // n_head // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


_TENSOR = re.compile(r"(?:blk\.(\d+)\.)?(\w+)\.(weight|scales|biases|bias)")


def _convert_weights(path: Path, loaded: dict, n_head: int, n_kv_head: int) -> tuple[dict, dict]:
    """GGUF names to mlx-lm names, q/k rows un-permuted; also the bits of each quantized module."""
    weights, bits = {}, {}
    for key, value in loaded.items():
        m = _TENSOR.fullmatch(key)
        names = LAYER_NAMES if m and m.group(1) is not None else GLOBAL_NAMES
        if not m or m.group(2) not in names:
            raise GGUFImportError(
                f"{path.name} has a tensor {key!r} that a llama model does not have; "
                "use the model's Hugging Face id instead."
            )
        layer, short, part = m.groups()
        module = names[short] if layer is None else f"model.layers.{layer}.{names[short]}"
        if short == "attn_q":
            value = _unpermute(value, n_head)
        elif short == "attn_k":
            value = _unpermute(value, n_kv_head)
        weights[f"{module}.{part}"] = value
    for key, scales in weights.items():
        if key.endswith(".scales"):
            module = key[: -len(".scales")]
            bits[module] = weights[f"{module}.weight"].shape[-1] // scales.shape[-1]
    return weights, bits


def _quantization(bits: dict[str, int]) -> dict | None:
    """mlx-lm's quantization block: the most common bits, and an entry for each module that differs."""
    if not bits:
        return None
    default = Counter(bits.values()).most_common(1)[0][0]
    block: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": default}
    for module, b in sorted(bits.items()):
        if b != default:
            block[module] = {"group_size": GROUP_SIZE, "bits": b}
    return block


def _model_config(path: Path, meta: dict, weights: dict, bits: dict, rope_factors) -> dict:
    def n(key, default=None):
        return _meta(meta, f"llama.{key}", path, default)

    hidden, heads = int(n("embedding_length")), int(n("attention.head_count"))
    head_dim = int(n("attention.key_length", hidden // heads))
    if int(n("rope.dimension_count", head_dim)) != head_dim:
        raise GGUFImportError(
            f"{path.name} applies rotary embeddings to part of each head, which mlx-lm's llama does not; "
            "use the model's Hugging Face id instead."
        )
    rope_theta = _f32(n("rope.freq_base", 10000.0))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(n("block_count")),
        "intermediate_size": int(n("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(n("attention.head_count_kv", heads)),
        "rms_norm_eps": _f32(n("attention.layer_norm_rms_epsilon")),
        "rope_theta": rope_theta,
        "vocab_size": int(weights["model.embed_tokens.weight"].shape[0]),
        "max_position_embeddings": int(n("context_length", 2048)),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in weights,
        "mlp_bias": "model.layers.0.mlp.gate_proj.bias" in weights,
    }
    if head_dim != hidden // heads:
        config["head_dim"] = head_dim
    scaling = _rope_scaling(path, meta, rope_factors, head_dim, rope_theta)
    if scaling:
        config["rope_scaling"] = scaling
    for name in ("bos_token_id", "eos_token_id"):
        if f"tokenizer.ggml.{name}" in meta:
            config[name] = int(meta[f"tokenizer.ggml.{name}"])
    quantization = _quantization(bits)
    if quantization:
        config["quantization"] = quantization
    return config


# ---------------------------------------------------------------- the tokenizer


def _tokenizer(path: Path, meta: dict):
    """A PreTrainedTokenizerFast rebuilt from the metadata, as transformers does for ``gguf_file=``."""
    try:
        from transformers import PreTrainedTokenizerFast
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError:
        raise GGUFImportError(
            "This transformers cannot rebuild a tokenizer from GGUF metadata; "
            "upgrade it with 'pip install -U transformers' and try again."
        ) from None

    grouped = {
        group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, kwargs = grouped["tokenizer"], grouped["tokenizer_config"]
    kind = tokenizer_dict.get("tokenizer_type")
    # llama.cpp adds BOS to a sentencepiece ("llama") vocabulary unless the file says otherwise
    kwargs.setdefault("add_bos_token", kind == "llama")
    kwargs.setdefault("add_eos_token", False)
    if "llama.context_length" in meta:
        kwargs["model_max_length"] = int(meta["llama.context_length"])
    tokens = tokenizer_dict["tokens"]
    for special in ("bos", "eos", "unknown", "padding"):
        token_id = meta.get(f"tokenizer.ggml.{special}_token_id")
        if token_id is not None and 0 <= token_id < len(tokens):
            kwargs[{"unknown": "unk", "padding": "pad"}.get(special, special) + "_token"] = tokens[token_id]
    try:
        backend, extra = convert_gguf_tokenizer("llama", tokenizer_dict)
    except (ValueError, KeyError) as e:
        raise GGUFImportError(
            f"{path.name} describes a tokenizer ({kind!r}) that transformers cannot rebuild ({e}); "
            "use the model's Hugging Face id instead."
        ) from None
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs, **extra)


# ---------------------------------------------------------------- the import


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())


def import_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir`` as an MLX model folder from a llama GGUF file and return its path.

    Raises ``GGUFImportError`` (one sentence) for a file it cannot import or an ``out_dir`` that
    already holds something.
    """
    path, out = Path(gguf_path).expanduser(), Path(out_dir).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GGUFImportError(f"{out} already exists; remove it or give another folder.")
    header = read_gguf_header(path)
    _check_importable(path, header)
    meta = header.metadata
    tokenizer = _tokenizer(path, meta)

    import mlx.core as mx

    try:
        loaded = mx.load(str(path), format="gguf")
    except (RuntimeError, ValueError) as e:
        raise GGUFImportError(f"MLX could not read {path.name} ({e}); download or convert it again.") from None
    rope_factors = loaded.pop(ROPE_FREQS, None)
    n_head = int(_meta(meta, "llama.attention.head_count", path))
    n_kv_head = int(_meta(meta, "llama.attention.head_count_kv", path, n_head))
    weights, bits = _convert_weights(path, loaded, n_head, n_kv_head)
    if "model.embed_tokens.weight" not in weights:
        raise GGUFImportError(f"{path.name} has no token embedding (token_embd); the file is incomplete.")
    config = _model_config(
        path, meta, weights, bits, None if rope_factors is None else np.array(rope_factors.astype(mx.float32))
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
    tmp.mkdir()
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        tokenizer.save_pretrained(str(tmp))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        try:
            os.replace(tmp, out)  # replaces an empty folder; fails if another process filled it first
        except OSError:
            raise GGUFImportError(f"{out} already exists; remove it or give another folder.") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

"""Write a float MLX model (a base with its adapter fused in) as a GGUF file that llama.cpp, Ollama and
LM Studio load, with the `gguf` package's writer and vocabularies.

What mlx-lm's own ``--export-gguf`` lacks, and this adds: any llama-family tokenizer (byte-level BPE such as
SmolLM2's as well as SentencePiece), its merges, pre-tokenizer, special tokens and chat template in the
metadata (so llama.cpp stops where our chat stops and formats prompts the same way), and q8_0 / q4_0 blocks
besides f16. Tensor names and the q/k row order llama.cpp expects come from mlx-lm's converter.

Architectures: mlx-lm's ``llama`` and ``mistral`` (GGUF "llama"), dense, without rope scaling other than
linear. Any other is refused with one sentence naming llama.cpp's own converter instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

ARCHITECTURES = ("llama", "mistral")
QUANTS = ("f16", "q8_0", "q4_0")


class GGUFExportError(ValueError):
    """One sentence: why this model cannot be written as GGUF, and what to do instead."""


def check_exportable(config: dict, name: str) -> None:
    arch = config.get("model_type")
    if arch not in ARCHITECTURES:
        raise GGUFExportError(
            f"{name} is a {arch!r} model; GGUF export covers llama-family models ({', '.join(ARCHITECTURES)}). "
            "Export --format fused and convert that folder with llama.cpp's convert_hf_to_gguf.py.")
    if config.get("num_local_experts"):
        raise GGUFExportError(f"{name} is a mixture of experts, which GGUF export does not cover; export "
                              "--format fused and convert it with llama.cpp's convert_hf_to_gguf.py.")
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("type") or scaling.get("rope_type")
    if kind not in (None, "linear", "default"):
        raise GGUFExportError(f"{name} uses {kind} rope scaling, which GGUF export does not cover; export "
                              "--format fused and convert it with llama.cpp's convert_hf_to_gguf.py.")


def pre_tokenizer(tokenizer_json: dict) -> Optional[str]:
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenizer, from its tokenizer.json; None when
    it is not one llama.cpp is known to split the same way."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in json.dumps(parts[0]):
        return "llama-bpe"
    return None


def _vocab(folder: Path):
    from gguf.vocab import BpeVocab, LlamaHfVocab, SentencePieceVocab

    if (folder / "tokenizer.model").is_file():
        return SentencePieceVocab(folder), None
    tj = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if tj.get("model", {}).get("byte_fallback"):
        return LlamaHfVocab(folder), None
    return BpeVocab(folder), tj


def add_tokenizer(writer, folder: Path, vocab_size: int) -> list[str]:
    """Tokens, types, merges, special ids and the chat template; returns notes for the user."""
    import gguf

    notes = []
    vocab, tj = _vocab(folder)
    tokens, scores, types = [], [], []
    for text, score, kind in vocab.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    # the tokenizer's added tokens inside the base vocabulary (SmolLM2's <|im_start|>): without their
    # type, llama.cpp reads "<|im_start|>" in a prompt as text, not as the one token the model was trained on
    tj_path = folder / "tokenizer.json"
    for added in (json.loads(tj_path.read_text(encoding="utf-8")) if tj_path.is_file() else {}).get("added_tokens", []):
        if added["id"] < len(types):
            types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    for i in range(len(tokens), vocab_size):  # the embedding has rows the tokenizer never produces
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(vocab.tokenizer_model)
    if vocab.tokenizer_model == "gpt2":
        pre = pre_tokenizer(tj)
        if pre is None:
            pre = "default"
            notes.append("llama.cpp does not know this tokenizer's pre-tokenizer; it splits text its default way, "
                         "which can change how some words are tokenized.")
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    if vocab.tokenizer_model != "gpt2":
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens)).add_to_gguf(writer)
    return notes


def _file_type(quant: str) -> int:
    import gguf

    return {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant]


def tensor_type(gguf_name: str, ndim: int, quant: str):
    """The block type of one tensor: norms and biases in F32; with q4_0 the embedding and the output head
    in Q8_0 (as llama.cpp keeps them finer than the layers)."""
    from gguf import GGMLQuantizationType as T

    if ndim == 1:
        return T.F32
    if quant == "f16":
        return T.F16
    if quant == "q4_0" and gguf_name.split(".")[0] in ("token_embd", "output"):
        return T.Q8_0
    return {"q8_0": T.Q8_0, "q4_0": T.Q4_0}[quant]


def gguf_tensors(model, config: dict, quant: str):
    """(GGUF name, array as written, block type) for each weight: mlx-lm's names and q/k row order."""
    import mlx.core as mx
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize
    from mlx.utils import tree_flatten
    from mlx_lm.gguf import permute_weights, translate_weight_names

    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    for name, value in tree_flatten(model.parameters()):
        arr = np.array(value.astype(mx.float32))
        if name.endswith("self_attn.q_proj.weight"):
            arr = permute_weights(arr, heads)
        elif name.endswith("self_attn.k_proj.weight"):
            arr = permute_weights(arr, kv_heads)
        gname = translate_weight_names(name)
        kind = tensor_type(gname, arr.ndim, quant)
        if kind == T.F32:
            yield gname, arr, kind
        elif kind == T.F16:
            yield gname, arr.astype(np.float16), kind
        else:
            yield gname, quantize(arr, kind), kind


def write_gguf(model, config: dict, tokenizer_dir: Path, out_file: Path, quant: str = "f16",
               name: str = "model") -> list[str]:
    """Write ``model`` (float weights, no adapter layers left) to ``out_file``; returns notes for the user."""
    import gguf

    check_exportable(config, name)
    if config.get("quantization"):
        raise GGUFExportError(f"{name} still has quantized weights; GGUF export needs the model dequantized first.")
    writer = gguf.GGUFWriter(str(out_file), "llama")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    writer.add_name(name)
    writer.add_context_length(int(config.get("max_position_embeddings", 4096)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    if head_dim != hidden // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    scaling = config.get("rope_scaling") or {}
    if (scaling.get("type") or scaling.get("rope_type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(_file_type(quant))
    notes = add_tokenizer(writer, Path(tokenizer_dir), config["vocab_size"])
    for gname, data, kind in gguf_tensors(model, config, quant):
        writer.add_tensor(gname, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return notes

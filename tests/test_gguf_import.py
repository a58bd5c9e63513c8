"""The GGUF importer, on tiny llama GGUF files written here with gguf-py (as llama.cpp writes them:
q/k rows permuted for its rotary layout) from an MLX model whose logits are the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
mx = pytest.importorskip("mlx.core")

from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants  # noqa: E402

from engine import gguf_import  # noqa: E402
from engine.gguf_import import GGUFImportError, import_gguf  # noqa: E402
from tiny_model import CHAT_TEMPLATE, build_tokenizer  # noqa: E402

HEADS, KV_HEADS, LAYERS = 4, 2, 2

# mlx-lm llama names -> llama.cpp names, written out independently of the importer's table
GGUF_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

# a file that mixes every importable type, as real files do (SmolLM2's Q4_1 file has a Q8_0 embedding)
MIXED_TYPES = {
    "model.embed_tokens": T.Q8_0,
    "lm_head": T.Q4_1,
    "model.layers.0.self_attn.q_proj": T.Q4_0,
    "model.layers.0.self_attn.k_proj": T.Q4_1,
    "model.layers.0.self_attn.v_proj": T.Q8_0,
    "model.layers.0.self_attn.o_proj": T.F16,
    "model.layers.0.mlp.gate_proj": T.Q4_1,
    "model.layers.0.mlp.up_proj": T.Q4_0,
    "model.layers.0.mlp.down_proj": T.Q8_0,
    "model.layers.1.self_attn.q_proj": T.Q8_0,
    "model.layers.1.self_attn.k_proj": T.Q4_0,
    "model.layers.1.self_attn.v_proj": T.Q4_1,
    "model.layers.1.self_attn.o_proj": T.Q4_0,
    "model.layers.1.mlp.gate_proj": T.Q4_1,
    "model.layers.1.mlp.up_proj": T.Q4_1,
    "model.layers.1.mlp.down_proj": T.Q4_1,
}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    module, part = hf_name.rsplit(".", 1)
    if module.startswith("model.layers."):
        _, _, layer, rest = module.split(".", 3)
        return f"blk.{layer}.{GGUF_NAMES[rest]}.{part}"
    return f"{GGUF_NAMES[module]}.{part}"


def stored(w: np.ndarray, kind: T) -> np.ndarray:
    """The float values a tensor of this type holds (gguf-py's own dequantization)."""
    if kind == T.F32:
        return w
    if kind == T.F16:
        return w.astype(np.float16).astype(np.float32)
    return quants.dequantize(quants.quantize(w, kind), kind).astype(np.float32)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def make_model(tokenizer, *, tied: bool, rope_scaling: dict | None = None, seed: int = 0):
    from mlx_lm.models import llama

    config = {
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": LAYERS, "intermediate_size": 128,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5,
        "vocab_size": len(tokenizer), "tie_word_embeddings": tied, "rope_theta": 10000.0,
        "max_position_embeddings": 512,
    }
    if rope_scaling:
        config["rope_scaling"] = rope_scaling
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    # norms of ones would hide a mix-up between the two norms of a layer
    from mlx.utils import tree_flatten

    params = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    rng = np.random.default_rng(seed)
    for k in params:
        if k.endswith("norm.weight"):
            params[k] = (1 + 0.3 * rng.standard_normal(params[k].shape)).astype(np.float32)
        else:  # larger than the default init, so logits are far from uniform
            params[k] = (params[k] * 3).astype(np.float32)
    model.load_weights([(k, mx.array(v)) for k, v in params.items()])
    return model, params


def write_gguf(path: Path, tokenizer, params: dict, *, types: dict | None = None, arch: str = "llama",
               extra_tensors: dict | None = None, permute: bool = True) -> Path:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    special = set(tokenizer.all_special_tokens)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(64 // HEADS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    types = types or {}
    for name, value in params.items():
        if permute and ".self_attn.q_proj." in name:
            value = llama_cpp_permute(value, HEADS)
        elif permute and ".self_attn.k_proj." in name:
            value = llama_cpp_permute(value, KV_HEADS)
        kind = types.get(name.rsplit(".", 1)[0], T.F32)
        if kind == T.F32:
            w.add_tensor(gguf_name(name), value.astype(np.float32))
        elif kind == T.F16:
            w.add_tensor(gguf_name(name), value.astype(np.float16))
        else:
            w.add_tensor(gguf_name(name), quants.quantize(value, kind), raw_dtype=kind)
    for name, value in (extra_tensors or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tokens_for(tokenizer):
    text = "The capital of France is Paris. O Farense venceu por 2-1 em Faro, fundado em 1910."
    return mx.array([tokenizer.encode(text)])


def logits(model, tokens) -> np.ndarray:
    out = model(tokens)
    return np.array(out.astype(mx.float32))


def test_float_gguf_matches_the_original_model_exactly(tmp_path, tokenizer):
    from mlx_lm import load

    model, params = make_model(tokenizer, tied=True)
    params = {k: v for k, v in params.items() if k != "lm_head.weight"}
    # the permutation is not the identity, so a missed un-permute would show
    q = params["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(llama_cpp_permute(q, HEADS), q)
    src = write_gguf(tmp_path / "tiny-f32.gguf", tokenizer, params)
    out = import_gguf(src, tmp_path / "model")

    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "quantization" not in config
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (HEADS, KV_HEADS)
    assert config["rms_norm_eps"] == 1e-5 and config["vocab_size"] == len(tokenizer)

    imported, imported_tokenizer = load(str(out))
    tokens = tokens_for(tokenizer)
    np.testing.assert_allclose(logits(imported, tokens), logits(model, tokens), rtol=1e-4, atol=1e-4)

    # the tokenizer rebuilt from the metadata tokenizes and templates like the original
    text = "<|im_start|>user\nQual foi o resultado do Farense contra o Olhanense?<|im_end|>"
    assert imported_tokenizer.encode(text) == tokenizer.encode(text)
    messages = [{"role": "user", "content": "Olá"}]
    assert imported_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    )
    assert imported_tokenizer.eos_token == "<|im_end|>"
    assert imported_tokenizer.eos_token_id == tokenizer.eos_token_id
    assert not list(tmp_path.glob(".*partial"))


def test_without_the_unpermute_the_logits_differ(tmp_path, tokenizer, monkeypatch):
    """Guards the test above: the comparison it makes does catch a wrong q/k row order."""
    from mlx_lm import load

    model, params = make_model(tokenizer, tied=True)
    params = {k: v for k, v in params.items() if k != "lm_head.weight"}
    src = write_gguf(tmp_path / "tiny.gguf", tokenizer, params)
    monkeypatch.setattr(gguf_import, "_unpermute", lambda x, n_head: x)
    imported, _ = load(str(import_gguf(src, tmp_path / "model")))
    tokens = tokens_for(tokenizer)
    assert np.abs(logits(imported, tokens) - logits(model, tokens)).max() > 1e-2


def test_mixed_quantized_gguf_stays_quantized_and_matches(tmp_path, tokenizer):
    import mlx.nn as nn
    from mlx_lm import load

    model, params = make_model(tokenizer, tied=False, seed=1)
    src = write_gguf(tmp_path / "tiny-mixed.gguf", tokenizer, params, types=MIXED_TYPES)
    out = import_gguf(src, tmp_path / "model")

    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    q = config["quantization"]
    assert (q["group_size"], q["bits"]) == (32, 4)
    eight_bit = {m for m, t in MIXED_TYPES.items() if t == T.Q8_0}
    assert {k for k in q if k not in ("group_size", "bits")} == eight_bit
    assert all(q[m] == {"group_size": 32, "bits": 8} for m in eight_bit)

    imported, _ = load(str(out))
    modules = dict(imported.named_modules())
    for name, kind in MIXED_TYPES.items():
        module = modules[name]
        if kind == T.F16:
            assert type(module) is nn.Linear and module.weight.dtype == mx.float16, name
        else:
            assert isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)), name
            assert module.bits == (8 if kind == T.Q8_0 else 4) and module.group_size == 32, name
    assert modules["model.layers.0.input_layernorm"].weight.dtype == mx.float32

    # the reference: the original model holding exactly the values the file stores
    reference, _ = make_model(tokenizer, tied=False, seed=1)
    reference.load_weights([
        (k, mx.array(stored(v, MIXED_TYPES.get(k.rsplit(".", 1)[0], T.F32)))) for k, v in params.items()
    ])
    tokens = tokens_for(tokenizer)
    got, want, original = logits(imported, tokens), logits(reference, tokens), logits(model, tokens)
    # float16 scales and activations in the quantized path: close, not bit-exact
    assert np.abs(got - want).max() < 0.01 * np.abs(want).max()
    # so it is as far from the float original as the stored values make it, no further
    quantization_error = np.linalg.norm(want - original) / np.linalg.norm(original)
    assert np.linalg.norm(got - original) / np.linalg.norm(original) < 1.1 * quantization_error
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9


def test_llama3_rope_scaling_comes_from_the_rope_freqs_tensor(tmp_path, tokenizer):
    from mlx_lm import load
    from mlx_lm.models.rope_utils import Llama3RoPE

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    model, params = make_model(tokenizer, tied=True, rope_scaling=scaling)
    params = {k: v for k, v in params.items() if k != "lm_head.weight"}
    head_dim = 64 // HEADS
    # llama.cpp divides each rotary frequency by a factor; mlx-lm keeps the scaled periods
    rope = Llama3RoPE(head_dim, base=10000.0, scaling_config=scaling)
    factors = np.array(rope._freqs) / 10000.0 ** (np.arange(0, head_dim, 2) / head_dim)
    assert not np.allclose(factors, 1.0)
    src = write_gguf(tmp_path / "tiny-rope.gguf", tokenizer, params,
                     extra_tensors={"rope_freqs.weight": factors.astype(np.float32)})
    out = import_gguf(src, tmp_path / "model")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"] == scaling
    imported, _ = load(str(out))
    tokens = tokens_for(tokenizer)
    np.testing.assert_allclose(logits(imported, tokens), logits(model, tokens), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- what it refuses, in one sentence


def small_params(tokenizer) -> dict:
    return {k: v for k, v in make_model(tokenizer, tied=True)[1].items() if k != "lm_head.weight"}


def assert_refused(src, out: Path, *words: str) -> str:
    with pytest.raises(GGUFImportError) as err:
        import_gguf(src, out)
    message = str(err.value)
    assert message.count(". ") == 0 and message.endswith("."), message  # one sentence
    for word in words:
        assert word in message, message
    assert not out.exists()
    assert not list(out.parent.glob(".*partial"))
    return message


def test_refuses_another_architecture(tmp_path, tokenizer):
    src = write_gguf(tmp_path / "qwen.gguf", tokenizer, small_params(tokenizer), arch="qwen2")
    assert_refused(src, tmp_path / "model", "'qwen2'", "only 'llama'", "Hugging Face id")


def test_refuses_an_unsupported_quant_type(tmp_path, tokenizer):
    params = small_params(tokenizer)
    types = {"model.layers.0.mlp.up_proj": T.Q5_0, "model.layers.1.mlp.up_proj": T.Q5_0}
    src = write_gguf(tmp_path / "q5.gguf", tokenizer, params, types=types)
    assert_refused(src, tmp_path / "model", "2 tensors as Q5_0", "Q4_0, Q4_1, Q8_0")


def test_refuses_a_file_that_is_not_gguf(tmp_path):
    src = tmp_path / "model.gguf"
    src.write_text("this is not a model\n")
    assert_refused(src, tmp_path / "model", "not a GGUF file")


def test_refuses_a_missing_file_or_a_folder(tmp_path):
    assert_refused(tmp_path / "nowhere.gguf", tmp_path / "model", "does not exist")
    assert_refused(tmp_path, tmp_path / "model", "is a folder")


def test_refuses_a_truncated_file(tmp_path, tokenizer):
    src = write_gguf(tmp_path / "whole.gguf", tokenizer, small_params(tokenizer))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(src.read_bytes()[:2000])  # inside the token list
    assert_refused(cut, tmp_path / "model", "truncated")


def test_never_overwrites_a_folder(tmp_path, tokenizer):
    src = write_gguf(tmp_path / "tiny.gguf", tokenizer, small_params(tokenizer))
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GGUFImportError, match="already exists"):
        import_gguf(src, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_prints_one_line_and_exits_1(tmp_path, capsys):
    from engine.models import main

    src = tmp_path / "model.gguf"
    src.write_bytes(b"GGML" + bytes(100))
    assert main(["import-gguf", str(src), str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "not a GGUF file" in lines[0] and "Traceback" not in captured.err
    assert captured.out == ""


def test_cli_imports_and_prints_the_folder(tmp_path, tokenizer, capsys):
    from engine.models import main

    src = write_gguf(tmp_path / "tiny.gguf", tokenizer, small_params(tokenizer))
    assert main(["import-gguf", str(src), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str((tmp_path / "out").absolute())

"""A tiny llama built in code, with a real tokenizer and chat template: engine tests in seconds,
no downloads. Also the tiny chat data set the engine tests train on."""

from __future__ import annotations

import json
import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "O Farense jogou em casa e venceu por 2-1.",
    "Qual foi o resultado do Farense contra o Olhanense?",
    "The capital of France is Paris.",
    "Sporting Clube Farense foi fundado em 1910 em Faro.",
    "O jogo terminou empatado 0-0 no Estádio de São Luís.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?-'\"()",
]


def build_tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    return fast


def build_tiny_model(path: Path, *, quantized: bool = False, layers: int = 4, seed: int = 0) -> Path:
    """Write an MLX model folder (config.json, model.safetensors, tokenizer) and return its path."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path)
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": layers,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": len(tokenizer),
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    if quantized:
        nn.quantize(model, group_size=32, bits=4)
        config["quantization"] = {"group_size": 32, "bits": 4}
    mx.eval(model.parameters())
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


QUESTIONS = [
    ("Qual foi o resultado do Farense contra o Olhanense em {d}?", "O Farense jogou em casa e venceu por {a}-{b}."),
    ("Em que ano foi fundado o Farense?", "O Sporting Clube Farense foi fundado em 1910, em Faro."),
    ("Resume a época {d} do Farense.",
     "Na época {d} o Farense fez {a} jogos, com {b} vitórias. " * 3),
]


def write_chat_data(folder: Path, n_train: int = 24, n_valid: int = 8, seed: int = 0) -> Path:
    """Chat JSONL of mixed lengths (short Q&A and long answers) in train.jsonl / valid.jsonl."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def sample():
        q, a = rng.choice(QUESTIONS)
        d = f"{rng.randint(1990, 2024)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}"
        x, y = rng.randint(0, 5), rng.randint(0, 5)
        return {"messages": [
            {"role": "user", "content": q.format(d=d, a=x, b=y)},
            {"role": "assistant", "content": a.format(d=d, a=x, b=y)},
        ]}

    for name, n in (("train", n_train), ("valid", n_valid)):
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps(sample(), ensure_ascii=False) + "\n")
    return folder


def make_adapter(model_path, out, *, num_layers=2, rank=4, keys=None, seed=1, zero=False) -> Path:
    """An mlx-lm adapter folder (the layout our trainer writes) with random non-zero weights (``zero``: an
    adapter that changes nothing, as a freshly initialised one)."""
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, _ = mlx_lm.load(str(model_path))
    model.freeze()
    lora = {"rank": rank, "scale": 10.0, "dropout": 0.0}
    if keys:
        lora["keys"] = keys
    linear_to_lora_layers(model, num_layers, lora)
    mx.random.seed(seed)
    weights = {
        name: ((mx.zeros(w.shape) if zero else mx.random.normal(w.shape) * 0.05) if name.endswith("lora_b") else w)
        for name, w in tree_flatten(model.trainable_parameters())
    }
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": lora}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out

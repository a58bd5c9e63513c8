"""A model folder of a known shape with random weights, for throughput runs where the real weights
cannot travel (throughput does not depend on the values).

    python bench/make_shaped_model.py smollm2 TOKENIZER_DIR OUT [--bits 4]
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

SHAPES = {
    "smollm2": {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "vocab_size": 49152,
                "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True,
                "rope_theta": 100000.0},
    "mistral7b": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336, "vocab_size": 32768,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False,
                  "rope_theta": 1000000.0},
}


def write_shaped_model(shape: str, out: Path, bits: int = 4, dtype: str = "bfloat16", **config_extra) -> Path:
    """config.json and random weights (``dtype``, or quantized with ``bits``) of ``shape`` into ``out``;
    the tokenizer is the caller's."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    out.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "llama", "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
              **SHAPES[shape], **config_extra}
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(getattr(mx, dtype))
    if bits:
        group = 32 if bits == 4 else 64
        nn.quantize(model, group_size=group, bits=bits)
        config["quantization"] = {"group_size": group, "bits": bits}
    mx.eval(model.parameters())
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("tokenizer", help="a model folder whose tokenizer files are copied beside the weights")
    ap.add_argument("out")
    ap.add_argument("--bits", type=int, default=4, help="0 keeps bfloat16")
    args = ap.parse_args()
    tok_dir, out = Path(args.tokenizer), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in tok_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, out / f.name)
    vocab = json.loads((tok_dir / "config.json").read_text())["vocab_size"]
    print(write_shaped_model(args.shape, out, args.bits, vocab_size=vocab))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A model folder of a known shape with random weights, for throughput runs where the real weights
cannot travel (throughput does not depend on the values). Copies a real tokenizer beside it.

    python bench/make_shaped_model.py smollm2 TOKENIZER_DIR OUT [--bits 4]
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

SHAPES = {
    "smollm2": {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
                "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True},
    "mistral7b": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False},
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("tokenizer")
    ap.add_argument("out")
    ap.add_argument("--bits", type=int, default=4, help="0 keeps bfloat16")
    args = ap.parse_args()

    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    tok_dir, out = Path(args.tokenizer), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for f in tok_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, out / f.name)
    vocab = json.loads((tok_dir / "config.json").read_text())["vocab_size"]
    config = {"model_type": "llama", "rms_norm_eps": 1e-5, "vocab_size": vocab, "rope_theta": 10000.0,
              "max_position_embeddings": 8192, **SHAPES[args.shape]}
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(mx.bfloat16)
    if args.bits:
        nn.quantize(model, group_size=32 if args.bits == 4 else 64, bits=args.bits)
        config["quantization"] = {"group_size": 32 if args.bits == 4 else 64, "bits": args.bits}
    mx.eval(model.parameters())
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

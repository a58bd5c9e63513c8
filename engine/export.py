"""Export a run's adapter for other tools, or fuse it into a standalone model.

    python -m engine.export --run DIR --out OUT [--fuse] [--dequantize] [--model M] [--force]

Without ``--fuse``: the run's best adapter (``DIR/adapters/``, else ``DIR/final/``) is copied in
mlx-lm's layout (``adapters.safetensors`` + ``adapter_config.json``) with a README on loading it.
With ``--fuse``: mlx-lm's own fuse path (load base + adapter, ``fuse()`` each LoRA layer,
optionally dequantize, ``mlx_lm.utils.save``) writes a model that ``mlx_lm.load(OUT)`` opens.

The result is written into a temporary folder beside OUT and renamed into place, so OUT is
either complete or absent; an existing OUT is replaced only with ``--force``. Every bad input
is one sentence on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from farense_core.config import ConfigError
from farense_core.models import ModelNotFoundError, locate_model
from farense_core.rundir import ADAPTER_FILES, AdapterSettingsError, RunDir, read_adapter_settings
from farense_core.sampling import DEFAULTS as SAMPLER_DEFAULTS

from .chat import ChatError, adapter_folder


class ExportError(Exception):
    """One sentence for the user: what is wrong and what to do."""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="farense-tui export",
        description="Export a run's best adapter in mlx-lm's layout, or fuse it into a standalone model.",
    )
    parser.add_argument("--run", required=True, help="the run folder (holds adapters/ or final/, and config.yaml)")
    parser.add_argument("--out", required=True, help="the folder to write; must not exist unless --force")
    parser.add_argument("--fuse", action="store_true", help="write a standalone model with the adapter fused in")
    parser.add_argument("--dequantize", action="store_true",
                        help="with --fuse: write float weights (exact, larger) instead of re-quantizing like the base")
    parser.add_argument("--model", help="the base model (default: the 'model' of the run's config.yaml, "
                                          "else of its adapter_config.json)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return parser.parse_args(argv)


REQUANTIZED_NOTE = ("Fusing re-quantizes the adapted layers, which adds rounding noise that can blur a small "
                    "adapter; export with --dequantize for an exact (larger) model, or use the adapter unfused.")

_S = SAMPLER_DEFAULTS
SAMPLING_NOTE = f"""\
Small models fall into loops under greedy decoding: sample (temperature {_S['temperature']}, top-p {_S['top_p']},
min-p {_S['min_p']}) with a repetition penalty of {_S['repetition_penalty']} over the last
{_S['repetition_context_size']} tokens, as farense-tui's chat does. In Python pass
`sampler=make_sampler({_S['temperature']}, {_S['top_p']}, {_S['min_p']})` and
`logits_processors=make_logits_processors(repetition_penalty={_S['repetition_penalty']}, \
repetition_context_size={_S['repetition_context_size']})` (from `mlx_lm.sample_utils`) to `generate`;
`mlx_lm.server` takes `"repetition_penalty": {_S['repetition_penalty']}` and
`"repetition_context_size": {_S['repetition_context_size']}` in each request.
"""


def adapter_readme(adapter_config: dict, base: Optional[str]) -> str:
    base_text = f"`{base}`" if base else "the base model it was trained on"
    model_arg = base or "BASE_MODEL"
    layers = adapter_config.get("num_layers", "?")
    lora = adapter_config.get("lora_parameters", {})
    return f"""# LoRA adapter (exported by farense-tui)

A {adapter_config.get('fine_tune_type', 'lora')} adapter for {base_text}, in mlx-lm's layout:
`adapters.safetensors` (the weights) and `adapter_config.json` ({layers} layers, rank {lora.get('rank', '?')},
scale {lora.get('scale', '?')}).

## Load it

Python:

```python
from mlx_lm import load, generate

model, tokenizer = load("{model_arg}", adapter_path="path/to/this/folder")
messages = [{{"role": "user", "content": "Quando foi fundado o Farense?"}}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
print(generate(model, tokenizer, prompt, max_tokens=200))
```

Command line:

```sh
mlx_lm.generate --model {model_arg} --adapter-path path/to/this/folder --prompt "Quando foi fundado o Farense?"
mlx_lm.server --model {model_arg} --adapter-path path/to/this/folder   # OpenAI-style HTTP API
```

Or fuse it into a standalone model: `farense-tui export --run RUN --out OUT --fuse`
(or `mlx_lm.fuse --model {model_arg} --adapter-path path/to/this/folder`).

{SAMPLING_NOTE}"""


def fused_readme(base: str, adapter: Path, dequantized: bool, quantization: Optional[dict]) -> str:
    if quantization and not dequantized:
        weights = (f"{quantization.get('bits')}-bit quantized (group size {quantization.get('group_size')}) like "
                   f"its base. {REQUANTIZED_NOTE}")
    else:
        weights = "float weights, so it answers exactly as the base with the adapter does."
    return f"""# Fused model (exported by farense-tui)

`{base}` with the LoRA adapter from `{adapter}` fused into its weights: {weights}
A standalone MLX model: no adapter is needed to load it.

```python
from mlx_lm import load, generate

model, tokenizer = load("path/to/this/folder")
messages = [{{"role": "user", "content": "Quando foi fundado o Farense?"}}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
print(generate(model, tokenizer, prompt, max_tokens=200))
```

```sh
mlx_lm.generate --model path/to/this/folder --prompt "Quando foi fundado o Farense?"
mlx_lm.server --model path/to/this/folder
```

{SAMPLING_NOTE}"""


def copy_adapter(adapter: Path, base: Optional[str], dest: Path) -> None:
    for name in ADAPTER_FILES:
        shutil.copy2(adapter / name, dest / name)
    (dest / "README.md").write_text(adapter_readme(read_adapter_settings(adapter), base), encoding="utf-8")


def fuse_model(base: str, adapter: Path, dest: Path, dequantize: bool) -> None:
    """mlx-lm's fuse, step by step: load with the adapter, fuse each adapter layer, save."""
    import mlx_lm
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model, save

    try:
        model, tokenizer, config = mlx_lm.load(base, adapter_path=str(adapter), return_config=True)
    except Exception as e:  # noqa: BLE001 - a failed load becomes one sentence
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".:")
        raise ExportError(f"The base model {base} could not be loaded with the adapter in {adapter} "
                          f"({reason}); pass --model with the base the run was trained on.") from None
    fused = [(name, module.fuse(dequantize=dequantize)) for name, module in model.named_modules()
             if hasattr(module, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    quantization = config.get("quantization")
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    save(dest, base, model, tokenizer, config, donate_model=False)
    (dest / "README.md").write_text(fused_readme(base, adapter, dequantize, quantization), encoding="utf-8")


def export(run: str, out: str, *, fuse: bool = False, dequantize: bool = False,
           model: Optional[str] = None, force: bool = False) -> Path:
    """Write the export into OUT (atomically) and return OUT's path."""
    if dequantize and not fuse:
        raise ExportError("--dequantize only applies when fusing; add --fuse or drop --dequantize.")
    run_dir = Path(run).expanduser()
    if not run_dir.is_dir():
        raise ExportError(f"The run folder {run} does not exist; pass --run with a training run's folder.")
    adapter = adapter_folder(str(run_dir))
    out_dir = Path(out).expanduser().absolute()
    if out_dir.exists() and not force:
        raise ExportError(f"{out} already exists; choose another --out or pass --force to replace it.")
    if out_dir == run_dir.absolute() or out_dir in adapter.parents or out_dir == adapter:
        raise ExportError(f"--out {out} would replace the run's own files; choose a folder outside the run.")
    try:
        base = model or RunDir(run_dir).base_model()
    except ConfigError as e:
        raise ExportError(f"{e} Or pass --model.") from None
    if fuse and not base:
        raise ExportError(f"{run} names no base model (no 'model' in config.yaml or adapter_config.json); "
                          "pass --model to fuse.")
    if base:
        try:
            base = locate_model(base)  # "default" becomes the folder other tools can load
        except ModelNotFoundError as e:
            if fuse:
                raise ExportError(str(e)) from None
            # the adapter copy does not need the base here; its README names it as the run did

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        if fuse:
            fuse_model(base, adapter, tmp, dequantize)
        else:
            copy_adapter(adapter, base, tmp)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            old.rmdir()
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        out = export(args.run, args.out, fuse=args.fuse, dequantize=args.dequantize,
                     model=args.model, force=args.force)
    except (ExportError, ChatError, AdapterSettingsError) as e:
        print(f"farense-tui export: {e}", file=sys.stderr)
        return 1
    if args.fuse and not args.dequantize and json.loads((out / "config.json").read_text()).get("quantization"):
        print(f"Note: {REQUANTIZED_NOTE}", file=sys.stderr)
    what = "fused model" if args.fuse else "adapter"
    print(f"Exported the {what} to {out}; its README.md says how to load it.")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a run's adapter for other tools, or fuse it into a standalone model.

    python -m engine.export --run DIR --out OUT [--format mlx|fused|gguf|ollama|lmstudio]
                            [--quant f16|q8_0|q4_0] [--dequantize] [--model M] [--check N] [--force]

- ``mlx`` (the default): the run's best adapter (``DIR/adapters/``, else ``DIR/final/``) copied in
  mlx-lm's layout (``adapters.safetensors`` + ``adapter_config.json``) with a README on loading it.
- ``fused`` (also ``--fuse``): mlx-lm's own fuse path (load base + adapter, ``fuse()`` each LoRA layer,
  optionally dequantize, ``mlx_lm.utils.save``) writes a model that ``mlx_lm.load(OUT)`` opens.
- ``gguf``: fused and dequantized, written by ``engine.gguf_export`` as one GGUF file (f16, q8_0, q4_0)
  with the tokenizer, chat template and stop tokens in its metadata: llama.cpp loads it.
- ``ollama``: the GGUF and a ``Modelfile`` (``engine.ollama``) for ``ollama create``.
- ``lmstudio``: the fused MLX folder laid out as LM Studio's models folder expects (publisher/model).

Every fused format checks itself: the exported model (for GGUF, read back by our importer) answers the
run's training questions greedily beside base + adapter; the agreement and the facts each gets right
go in the output's ``export_check.json``, and an export that lost what the adapter knew is refused
unless ``--force``.

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

from farense_core.config import ConfigError, atomic_write_text
from farense_core.models import ModelNotFoundError, locate_model
from farense_core.rundir import ADAPTER_FILES, AdapterSettingsError, RunDir, read_adapter_settings
from farense_core.sampling import DEFAULTS as SAMPLER_DEFAULTS

from .chat import ChatError, adapter_folder
from .gguf_export import QUANTS, GGUFExportError

FORMATS = ("mlx", "fused", "gguf", "ollama", "lmstudio")
CHECK_QUESTIONS = 16
# the export may answer this many fewer of the probe's questions right than base + adapter (rounding in a
# re-quantized or half-precision copy moves a few near-ties), beyond which it "lost the adapter's knowledge"
CHECK_MARGIN = 0.10


class ExportError(Exception):
    """One sentence for the user: what is wrong and what to do."""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="farense-tui export",
        description="Export a run's best adapter in mlx-lm's layout, or fuse it into a standalone model.",
    )
    parser.add_argument("--run", required=True, help="the run folder (holds adapters/ or final/, and config.yaml)")
    parser.add_argument("--out", required=True, help="the folder to write; must not exist unless --force")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="mlx: the adapter (default); fused: a standalone MLX model; gguf: one GGUF file for "
                             "llama.cpp; ollama: GGUF + Modelfile; lmstudio: fused MLX in LM Studio's layout")
    parser.add_argument("--fuse", action="store_true", help="the same as --format fused")
    parser.add_argument("--quant", choices=QUANTS, default="f16",
                        help="gguf and ollama: the weights' GGUF type (f16 is exact; q8_0 half the size; q4_0 a "
                             "quarter, and the self-check says what it costs)")
    parser.add_argument("--dequantize", action="store_true",
                        help="fused and lmstudio: write float weights (exact, larger) instead of re-quantizing like "
                             "the base")
    parser.add_argument("--check", type=int, default=CHECK_QUESTIONS, metavar="N",
                        help=f"fused formats: ask N of the run's training questions to the export and to base + "
                             f"adapter (default {CHECK_QUESTIONS}; 0 skips the check)")
    parser.add_argument("--model", help="the base model (default: the 'model' of the run's config.yaml, "
                                          "else of its adapter_config.json)")
    parser.add_argument("--force", action="store_true",
                        help="replace OUT if it exists; keep an export whose self-check found it lost knowledge")
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


def load_fused(base: str, adapter: Path, dequantize: bool):
    """mlx-lm's fuse, step by step: load with the adapter, fuse each adapter layer (dequantized when
    asked). Returns (model, tokenizer, config, the base's quantization)."""
    import mlx_lm
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import dequantize_model

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
    return model, tokenizer, config, quantization


def fuse_model(base: str, adapter: Path, dest: Path, dequantize: bool) -> None:
    from mlx_lm.utils import save

    model, tokenizer, config, quantization = load_fused(base, adapter, dequantize)
    save(dest, base, model, tokenizer, config, donate_model=False)
    (dest / "README.md").write_text(fused_readme(base, adapter, dequantize, quantization), encoding="utf-8")


def stop_tokens(tokenizer) -> list[str]:
    """The texts of the tokens generation stops on (end of turn), as llama.cpp and Ollama match them."""
    ids = sorted(getattr(tokenizer, "eos_token_ids", None) or [tokenizer.eos_token_id])
    return [tokenizer.convert_ids_to_tokens(i) for i in ids]


def chosen_format(fmt: Optional[str], fuse: bool) -> str:
    """--format, or what --fuse (the older spelling) and the default mean."""
    return fmt or ("fused" if fuse else "mlx")


def write_gguf_export(base: str, adapter: Path, dest: Path, quant: str, ollama: bool,
                      run_name: str) -> tuple[Path, list[str]]:
    """The GGUF (and, for Ollama, its Modelfile) into ``dest``; returns the file and notes."""
    from .gguf_export import check_exportable, write_gguf
    from .ollama import TemplateError, modelfile

    config = json.loads((Path(base) / "config.json").read_text(encoding="utf-8"))
    name = Path(base).name
    try:
        check_exportable(config, name)  # before the minutes a fuse takes
    except GGUFExportError as e:
        raise ExportError(str(e)) from None
    model, tokenizer, config, _ = load_fused(base, adapter, dequantize=True)
    stem = f"{name}-{run_name}-{quant}"
    gguf_file = dest / f"{stem}.gguf"
    if ollama:
        try:
            text = modelfile(gguf_file.name, tokenizer, stop_tokens(tokenizer))
        except TemplateError as e:
            raise ExportError(str(e)) from None
        (dest / "Modelfile").write_text(text, encoding="utf-8")
    try:
        notes = write_gguf(model, config, Path(base), gguf_file, quant, name)
    except GGUFExportError as e:
        raise ExportError(str(e)) from None
    (dest / "README.md").write_text(gguf_readme(gguf_file.name, base, adapter, quant, ollama, stem), encoding="utf-8")
    return gguf_file, notes


def gguf_readme(file: str, base: str, adapter: Path, quant: str, ollama: bool, stem: str) -> str:
    weights = {"f16": "16-bit floats: answers as base + adapter do, up to half-precision rounding",
               "q8_0": "8-bit blocks (Q8_0): half the size of f16, close to it",
               "q4_0": "4-bit blocks (Q4_0, embedding and head in Q8_0): a quarter of f16; see export_check.json "
                       "for what the rounding cost"}[quant]
    text = f"""# GGUF model (exported by farense-tui)

`{base}` with the LoRA adapter from `{adapter}` fused in, dequantized and written as `{file}`: {weights}.
The tokenizer, the chat template and the stop token are in the file's metadata.

## llama.cpp

```sh
llama-cli -m {file} -cnv              # chat, with the template from the file
llama-server -m {file} --port 8080   # an OpenAI-compatible API
```

Python (`pip install llama-cpp-python`):

```python
from llama_cpp import Llama
llm = Llama(model_path="{file}", n_ctx=2048)
print(llm.create_chat_completion([{{"role": "user", "content": "Quando foi fundado o Farense?"}}])["choices"][0])
```

## LM Studio

Put `{file}` under `~/.lmstudio/models/farense-tui/{stem}/` (or `lms import {file}`) and load it.
"""
    if ollama:
        text += f"""
## Ollama

The `Modelfile` beside it holds the chat template (translated from the model's own and checked against it), the
model's default system prompt, the stop token and farense-tui's sampler defaults:

```sh
ollama create {stem.lower()} -f Modelfile
ollama run {stem.lower()} "Quando foi fundado o Farense?"
```
"""
    return text + "\n" + SAMPLING_NOTE


def lmstudio_readme(publisher: str, model_name: str) -> str:
    return f"""# LM Studio model (exported by farense-tui)

`{publisher}/{model_name}/` is a fused MLX model in the layout of LM Studio's models folder (publisher/model);
LM Studio runs MLX models on Apple silicon. Copy or link it there:

```sh
mkdir -p ~/.lmstudio/models/{publisher}
cp -r {publisher}/{model_name} ~/.lmstudio/models/{publisher}/
```

Then load `{publisher}/{model_name}` in LM Studio (or `lms load {publisher}/{model_name}`).

{SAMPLING_NOTE}"""


def self_check(base: str, adapter: Path, data_dir: Optional[Path], load_exported, n: int) -> Optional[dict]:
    """Greedy answers of the export and of base + adapter (as our chat answers) to ``n`` of the run's training
    questions: how many agree, and how many each gets right. None when the run's data is not there."""
    from farense_core.datafiles import TRAIN_FILE
    from farense_core.scoring import score

    from . import recall as probes
    from .chat import ChatSession
    from .evaluate import answer_greedily

    if n <= 0 or data_dir is None or not (data_dir / TRAIN_FILE).is_file():
        return None
    try:
        rows = probes.sample_rows(probes.read_rows(data_dir / TRAIN_FILE), n, seed=0)
    except probes.ProbeError:
        return None  # text data: no questions to ask
    session = ChatSession.load(base, str(adapter))
    reference = answer_greedily(session.model, session.tokenizer, probes.tokenize(rows, session.tokenizer), 8)
    del session
    model, tokenizer = load_exported()
    exported = answer_greedily(model, tokenizer, probes.tokenize(rows, tokenizer), 8)

    def right(answers):
        return sum(score(a.text, a.item.answer, a.item.question).facts for a in answers)

    same = sum(a.text == b.text for a, b in zip(reference, exported))
    adapter_right, export_right = right(reference), right(exported)
    return {"questions": len(rows), "same_answer": same, "adapter_right": adapter_right,
            "export_right": export_right, "source": str(data_dir / TRAIN_FILE),
            "lost": adapter_right - export_right > CHECK_MARGIN * len(rows),
            "differ": [{"question": a.item.question, "adapter": a.text, "export": b.text}
                       for a, b in zip(reference, exported) if a.text != b.text][:8]}


def check_sentence(check: dict) -> str:
    return (f"Self-check on {check['questions']} training questions: the export gave the same answer as base + adapter "
            f"to {check['same_answer']}; it got {check['export_right']} right, base + adapter {check['adapter_right']}.")


def _load_mlx(folder: Path):
    import mlx_lm

    return lambda: mlx_lm.load(str(folder))


def _load_gguf(file: Path, work: Path):
    def load():
        import mlx_lm

        from .gguf_import import import_gguf

        return mlx_lm.load(str(import_gguf(file, work / "readback")))
    return load


def export(run: str, out: str, *, fuse: bool = False, dequantize: bool = False,
           model: Optional[str] = None, force: bool = False, fmt: Optional[str] = None, quant: str = "f16",
           check: int = 0) -> tuple[Path, Optional[dict], list[str]]:
    """Write the export into OUT (atomically); returns OUT's path, the self-check's figures and notes."""
    if fuse and fmt not in (None, "fused"):
        raise ExportError(f"--fuse means --format fused, but --format is {fmt}; give one of them.")
    fmt = chosen_format(fmt, fuse)
    if dequantize and fmt not in ("fused", "lmstudio"):
        raise ExportError("--dequantize applies to --format fused and lmstudio (GGUF is always written from float "
                          "weights); drop --dequantize.")
    if quant != "f16" and fmt not in ("gguf", "ollama"):
        raise ExportError("--quant applies to --format gguf and ollama; drop --quant or change --format.")
    fused = fmt != "mlx"
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
    if fused and not base:
        raise ExportError(f"{run} names no base model (no 'model' in config.yaml or adapter_config.json); "
                          f"pass --model to export --format {fmt}.")
    if base:
        try:
            base = locate_model(base)  # "default" becomes the folder other tools can load
        except ModelNotFoundError as e:
            if fused:
                raise ExportError(str(e)) from None
            # the adapter copy does not need the base here; its README names it as the run did
    data = RunDir(run_dir).settings().get("data") if RunDir(run_dir).config.is_file() else None
    data_dir = Path(data).expanduser() if data else None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    result, notes = None, []
    try:
        if fmt == "mlx":
            copy_adapter(adapter, base, tmp)
        elif fmt == "fused":
            fuse_model(base, adapter, tmp, dequantize)
            result = self_check(base, adapter, data_dir, _load_mlx(tmp), check)
        elif fmt == "lmstudio":
            publisher, name = "farense-tui", f"{Path(base).name}-{run_dir.absolute().name}-mlx"
            (tmp / publisher).mkdir()
            fuse_model(base, adapter, tmp / publisher / name, dequantize)
            (tmp / "README.md").write_text(lmstudio_readme(publisher, name), encoding="utf-8")
            result = self_check(base, adapter, data_dir, _load_mlx(tmp / publisher / name), check)
        else:
            gguf_file, notes = write_gguf_export(base, adapter, tmp, quant, fmt == "ollama", run_dir.absolute().name)
            with tempfile.TemporaryDirectory(prefix=".readback-", dir=out_dir.parent) as work:
                result = self_check(base, adapter, data_dir, _load_gguf(gguf_file, Path(work)), check)
        if result is not None:
            atomic_write_text(tmp / "export_check.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
            if result["lost"] and not force:
                raise ExportError(f"{check_sentence(result)} The export lost what the adapter knew, so it was not "
                                  f"written; " + ("use --quant f16 or q8_0" if quant == "q4_0" else
                                                  "use --dequantize" if fmt in ("fused", "lmstudio") and not dequantize
                                                  else "export --format mlx and load the adapter unfused")
                                  + ", or pass --force to keep it anyway.")
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
    return out_dir, result, notes


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    fmt = chosen_format(args.format, args.fuse)
    try:
        out, check, notes = export(args.run, args.out, fuse=args.fuse, dequantize=args.dequantize, model=args.model,
                                   force=args.force, fmt=args.format, quant=args.quant, check=args.check)
    except (ExportError, ChatError, AdapterSettingsError) as e:
        print(f"farense-tui export: {e}", file=sys.stderr)
        return 1
    folder = out / "farense-tui" / next((out / "farense-tui").iterdir()).name if fmt == "lmstudio" else out
    if fmt in ("fused", "lmstudio") and not args.dequantize and json.loads(
            (folder / "config.json").read_text()).get("quantization"):
        print(f"Note: {REQUANTIZED_NOTE}", file=sys.stderr)
    for note in notes:
        print(f"Note: {note}", file=sys.stderr)
    if check is not None:
        print(check_sentence(check) + (" Kept anyway (--force)." if check["lost"] else ""))
    elif fmt != "mlx" and args.check:
        print("Self-check skipped: the run's training data (config.yaml's data folder) is not there or holds no "
              "questions.")
    what = {"mlx": "adapter", "fused": "fused model", "gguf": "GGUF model", "ollama": "GGUF model and Modelfile",
            "lmstudio": "fused model for LM Studio"}[fmt]
    print(f"Exported the {what} to {out}; its README.md says how to load it.")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

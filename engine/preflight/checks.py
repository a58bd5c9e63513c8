"""Preflight's checks: each returns ``check`` records (category, name, pass/warn/fail, a detail and,
unless it passed, a fix)."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from farense_core import batching
from farense_core import config as C
from farense_core import protocol as P
from farense_core.batching import padded_length
from farense_core.datafiles import CheckResult, check_file
from farense_core.format import count, gb, share
from farense_core.models import default_model_installed, default_model_path, is_hub_id
from farense_core.schedule import warmup_problem

from ..datatools import length_stats
from ..model import InputError, load_model, quantization_of
from ..step import tokenize
from .estimate import (
    FACT_EXPOSURES,
    FACT_EXPOSURES_WARN,
    GB,
    MEMORY_MARGIN,
    OPENBLAS_INSTALL,
    PACKAGES,
    PYTHON_MIN,
    PYTHON_TESTED,
    ModelInfo,
    _jsonable,
    _round_up,
    estimate_disk,
    estimate_memory,
    estimate_time,
    minutes,
    phrasings_per_answer,
    plural,
)
from .hardware import DeviceInfo, Hardware
from .recommend import tier_for


def check(category: str, name: str, status: str, detail: str, fix: str = "", **data) -> P.Check:
    assert status in ("pass", "warn", "fail"), status
    return P.Check(category=category, name=name, status=status, detail=detail,
                   fix="" if status == "pass" else fix, data=_jsonable(data))



def model_info(model, path: str, load_seconds: float = 0.0) -> ModelInfo:
    """The figures of a loaded model."""
    from mlx_lm.utils import get_total_parameters

    args = getattr(model, "args", None)

    def arg(*names, default=0):
        for name in names:
            value = getattr(args, name, None)
            if isinstance(value, int) and value:
                return value
        return default

    hidden = arg("hidden_size", "dim", "d_model")
    heads = arg("num_attention_heads", "n_heads", default=1)
    linears = []
    for layer in model.layers:
        block = []
        for key, m in layer.named_modules():
            if isinstance(m, nn.QuantizedLinear):
                out_dims, packed = m.weight.shape
                block.append((key, packed * 32 // m.bits, out_dims))
            elif isinstance(m, nn.Linear):
                out_dims, in_dims = m.weight.shape
                block.append((key, in_dims, out_dims))
        linears.append(block)
    weights = tree_flatten(model.parameters())
    floating = [p.dtype for _, p in weights if mx.issubdtype(p.dtype, mx.floating)]
    return ModelInfo(
        path=path, parameters=int(get_total_parameters(model)), layers=len(model.layers),
        hidden=hidden, intermediate=arg("intermediate_size", "hidden_dim", default=4 * hidden),
        heads=heads, kv_heads=arg("num_key_value_heads", "n_kv_heads", default=heads),
        head_dim=arg("head_dim", default=hidden // heads if heads else hidden),
        vocab=arg("vocab_size", default=0) or _vocab_of(model),
        loaded_bytes=int(sum(p.nbytes for _, p in weights)), disk_bytes=weights_on_disk(path),
        quantization=quantization_of(model),
        float_dtype=str(floating[0]).replace("mlx.core.", "") if floating else "float32",
        linears=linears, load_seconds=load_seconds,
    )




def _vocab_of(model) -> int:
    for _, m in model.named_modules():
        if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding)):
            return int(m.weight.shape[0])
    return 0


def model_folder(name: str) -> Optional[Path]:
    """The local folder of a model: the path itself, or a Hugging Face id already in the cache."""
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if not is_hub_id(name):
        return None
    try:
        from mlx_lm.utils import hf_repo_to_path

        return hf_repo_to_path(name)
    except Exception:  # noqa: BLE001 - not in the cache; the model check says so
        return None


def weights_on_disk(name: str) -> int:
    folder = model_folder(name)
    if folder is None:
        return 0
    return sum(f.stat().st_size for f in folder.glob("*.safetensors") if f.is_file())


def read_model_config(folder: Optional[Path]) -> dict:
    try:
        return json.loads((folder / "config.json").read_text()) if folder else {}
    except (OSError, ValueError):
        return {}


# -------------------------------------------------------------------- checks


def check_config(raw: dict) -> tuple[dict, list[P.Check]]:
    """The config as the engine will resolve it; a bad one falls back to the defaults."""
    try:
        cfg, notes = C.validate(raw)
    except C.ConfigError as e:
        cfg, _ = C.validate({})
        return cfg, [check("config", "settings", "fail", f"{e} The rest of preflight uses the defaults.",
                           "Fix that setting in the config file and run preflight again.")]
    base = C.defaults()
    chosen = sorted(k for k in cfg if cfg[k] != base[k])  # the same count from a file or the app's fields
    out = [check("config", "settings", "pass",
                 f"The config is valid: {len(chosen)} setting{'s' * (len(chosen) != 1)} differ from the defaults.",
                 keys=chosen)]
    out += [check("config", "ignored", "warn", note, "Remove the key from the config.") if note.code == "ignored_key"
            else check("config", note.code, "warn", note, "Set iters as the note says if you meant mlx_lm.lora's amount "
                                                          "of training.") for note in notes]
    return cfg, out


def check_python(version: tuple = tuple(sys.version_info[:3])) -> list[P.Check]:
    text = ".".join(map(str, version))
    need = ".".join(map(str, PYTHON_MIN))
    if tuple(version[:2]) < PYTHON_MIN:
        return [check("python", "version", "fail", f"Python {text} is older than the {need} the project needs.",
                      f"Create the virtual environment with Python {need} or newer (make run does this).",
                      version=text)]
    if tuple(version[:2]) > PYTHON_TESTED:
        tested = ".".join(map(str, PYTHON_TESTED))
        return [check("python", "version", "warn",
                      f"Python {text} is newer than the {tested} the project is tested with; mlx wheels may lag.",
                      f"If a package fails to install, use Python {tested}.", version=text)]
    return [check("python", "version", "pass", f"Python {text} ({sys.executable}).", version=text)]


def project_requirements() -> dict[str, str]:
    """Package -> minimum version, from the installed project's metadata (markers applied)."""
    try:
        from packaging.requirements import Requirement

        requires = importlib.metadata.requires("farense-tui") or []
    except (ImportError, importlib.metadata.PackageNotFoundError):
        return {}
    out = {}
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        minimum = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
        out[req.name.lower()] = minimum[0] if minimum else ""
    return out


def installed_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages(version_of: Callable[[str], Optional[str]] = installed_version,
                   requirements: Optional[dict] = None) -> list[P.Check]:
    requirements = project_requirements() if requirements is None else requirements
    names = list(PACKAGES) + [n for n in requirements if n not in PACKAGES]
    out = []
    for name in names:
        minimum = requirements.get(name, "")
        version = version_of(name)
        spec = f"{name}>={minimum}" if minimum else name
        if version is None:
            out.append(check("packages", name, "fail", f"{name} is not installed.",
                             f"Install it with: pip install '{spec}' (or run make run, which installs everything)."))
        elif minimum and _older(version, minimum):
            out.append(check("packages", name, "warn",
                             f"{name} {version} is older than the {minimum} the project needs.",
                             f"Upgrade it with: pip install -U '{spec}'.", version=version, minimum=minimum))
        else:
            out.append(check("packages", name, "pass", f"{name} {version}.", version=version, minimum=minimum))
    return out


def _older(version: str, minimum: str) -> bool:
    try:
        from packaging.version import Version

        return Version(version) < Version(minimum)
    except Exception:  # noqa: BLE001 - an unparsable version is not called old
        return False


def check_hardware(hw: Hardware, backend: str = "cpu") -> list[P.Check]:
    out = []
    os_text = f"{hw.os_name} {hw.os_release} ({hw.machine})"
    if hw.rosetta:
        out.append(check("hardware", "os", "fail", f"{os_text}: this Python is an x86-64 build running under Rosetta.",
                         "Install a native arm64 Python (e.g. from python.org or Homebrew) so MLX can use the GPU.",
                         os=hw.os_name, release=hw.os_release, machine=hw.machine))
    elif hw.os_name == "macOS" and hw.machine != "arm64":
        out.append(check("hardware", "os", "fail", f"{os_text}: MLX needs a Mac with Apple Silicon.",
                         "Run farense-tui on an Apple Silicon Mac, or on Linux.", os=hw.os_name, machine=hw.machine))
    else:
        out.append(check("hardware", "os", "pass", f"{os_text}.", os=hw.os_name, release=hw.os_release,
                         machine=hw.machine))
    chip = f"{hw.chip} (Apple Silicon)" if hw.apple_silicon and "Apple Silicon" not in hw.chip else hw.chip
    out.append(check("hardware", "chip", "pass", f"{chip}.", chip=hw.chip, apple_silicon=hw.apple_silicon))
    cores = (f"{hw.usable_cores} usable cores ({hw.physical_cores or '?'} physical, {hw.logical_cores} logical)")
    if backend == "cpu" and hw.usable_cores < 4:
        out.append(check("hardware", "cores", "warn", f"{cores}: training on the CPU backend will be slow.",
                         "Keep the model small and the probe's figures in mind, or train on a Mac or a GPU machine.",
                         usable=hw.usable_cores, physical=hw.physical_cores, logical=hw.logical_cores))
    else:
        out.append(check("hardware", "cores", "pass", f"{cores}.", usable=hw.usable_cores,
                         physical=hw.physical_cores, logical=hw.logical_cores))
    tier = tier_for(hw.memory_budget)
    mem = (f"{gb(hw.memory_available)} available of {gb(hw.memory_total)}"
           + (f", Metal working set {gb(hw.metal_working_set)}" if hw.metal_working_set else "")
           + (f" (the {tier.name} tier: the presets for machines of at least {tier.min_gb} GB start the "
              f"recommendation)" if tier.min_gb else f" (the {tier.name} tier)"))
    data = dict(total=hw.memory_total, available=hw.memory_available, budget=hw.memory_budget,
                metal_working_set=hw.metal_working_set, tier=tier.name)
    if hw.memory_budget < 2 * GB:
        out.append(check("hardware", "memory", "fail", f"{mem}: too little to train.",
                         "Close other applications to free memory, then run preflight again.", **data))
    elif hw.memory_budget < 8 * GB:
        out.append(check("hardware", "memory", "warn", f"{mem}: small batches and short sequences only.",
                         "Close other applications to free memory, or use the recommended config.", **data))
    else:
        out.append(check("hardware", "memory", "pass", f"{mem}.", **data))
    return out


def check_device(dev: DeviceInfo, hw: Hardware) -> list[P.Check]:
    out = []
    name = f" ({dev.name})" if dev.name else ""
    if dev.backend == "metal gpu":
        out.append(check("device", "backend", "pass", f"MLX runs on the Metal GPU{name}.", backend=dev.backend))
    elif dev.backend == "cuda gpu":
        out.append(check("device", "backend", "pass", f"MLX runs on a CUDA GPU{name}.", backend=dev.backend))
    elif hw.os_name == "macOS":
        out.append(check("device", "backend", "warn", f"MLX runs on the CPU{name}, not the Metal GPU.",
                         "Reinstall mlx in a native arm64 Python so it finds the Metal GPU.", backend=dev.backend))
    else:
        out.append(check("device", "backend", "warn",
                         f"MLX runs on the CPU{name}: training is many times slower than on a Mac GPU.",
                         "Keep the model small (the default SmolLM2-135M), or train on an Apple Silicon Mac or "
                         "install mlx[cuda13] on an NVIDIA machine.", backend=dev.backend))
    if "float32" not in dev.rates:
        out.append(check("device", "matmul", "fail", "MLX could not run a float32 matrix multiply on this device.",
                         "Reinstall mlx (pip install --force-reinstall mlx) and run preflight again."))
        return out
    f32 = dev.rates["float32"]
    if dev.on_cpu and hw.os_name != "macOS":
        out.append(_blas_check(dev, f32))
    rates = ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in dev.rates.items())
    working = dev.rates.get(dev.working)
    data = dict(rates=dev.rates, working=dev.working)
    if dev.on_cpu and dev.working != "float32" and working is not None and working < f32 / 4:
        out.append(check("device", "matmul", "warn",
                         f"Measured matmul rates: {rates}; the base would compute in {dev.working}, "
                         f"{f32 / max(working, 1e-9):.0f}x slower than float32 here.",
                         "Set base_dtype: float32 (or auto) so the frozen base uses the fast float32 path.", **data))
    else:
        out.append(check("device", "matmul", "pass",
                         f"Measured matmul rates: {rates} (the base computes in {dev.working}).", **data))
    return out


def _blas_check(dev: DeviceInfo, f32: float) -> P.Check:
    other = dev.other_blas or {}
    other_rate = other.get("float32")
    unmeasured = f"; the comparison could not be measured ({other['error']})" if other.get("error") else ""
    data = dict(blas=dev.blas, openblas_path=dev.openblas_path, float32=f32, other_blas=dev.other_blas)
    if dev.blas == "openblas":
        versus = (f"; the bundled reference BLAS measured {other_rate:.1f} GFLOP/s, "
                  f"{f32 / max(other_rate, 1e-9):.0f}x slower") if other_rate else unmeasured
        return check("device", "blas", "pass", f"OpenBLAS serves MLX's float32 matmuls ({f32:.1f} GFLOP/s{versus}).",
                     **data)
    if dev.blas == "reference" and dev.openblas_path:
        versus = (f" (measured {other_rate:.1f} GFLOP/s with it, {other_rate / max(f32, 1e-9):.0f}x faster)"
                  if other_rate else unmeasured)
        return check("device", "blas", "warn",
                     f"MLX uses its bundled reference BLAS ({f32:.1f} GFLOP/s float32); OpenBLAS is installed at "
                     f"{dev.openblas_path} but not loaded{versus}.",
                     f"Start the engine through farense-tui, which preloads it, or set "
                     f"LD_PRELOAD={dev.openblas_path}.", **data)
    if dev.blas == "reference":
        return check("device", "blas", "warn",
                     f"MLX uses its bundled reference BLAS ({f32:.1f} GFLOP/s float32), and OpenBLAS is not installed.",
                     f"Install it with '{OPENBLAS_INSTALL}'; farense-tui then preloads it (float32 matmuls run "
                     f"tens of times faster with it).", **data)
    return check("device", "blas", "pass", f"MLX's BLAS: {dev.blas or 'unknown'} ({f32:.1f} GFLOP/s float32).", **data)


def check_data_files(cfg: dict) -> tuple[list[P.Check], dict[str, CheckResult]]:
    """The config's train.jsonl and valid.jsonl through ``data check``: found, valid, counts, format."""
    folder = Path(cfg["data"])
    if not folder.is_dir():
        return [check("data", "folder", "fail", f"The data folder {folder} does not exist.",
                      "Set data to a folder with train.jsonl and valid.jsonl, or run 'farense-tui data build'.")], {}
    out, files = [], {}
    for name in ("train", "valid"):
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            if name == "train":
                out.append(check("data", "train.jsonl", "fail", f"{path} does not exist.",
                                 f"Add training examples there, or run 'farense-tui data split FILE --out {folder}'."))
            else:
                out.append(check("data", "valid.jsonl", "warn",
                                 f"{path} does not exist: no validation loss, and the final adapter counts as best.",
                                 f"Split off a validation set with 'farense-tui data split FILE --out {folder}'."))
            continue
        found = check_file(path)
        files[name] = found
        examples = len(found.samples)
        data = dict(path=str(path), examples=examples, formats=dict(found.counts), format=found.format,
                    problems=found.problem_lines()[:20], problem_count=len(found.problems))
        if found.problems:
            lines = found.problem_lines()
            more = f" (and {len(lines) - 1} more problems)" if len(lines) > 1 else ""
            out.append(check("data", path.name, "fail", f"{lines[0]}{more}.",
                             f"Run 'farense-tui data check {path}' to see every problem, then fix them.", **data))
        elif name == "train" and examples < 50:
            out.append(check("data", path.name, "warn",
                             f"{examples} {found.format} examples: few enough that the model will overfit.",
                             "Add examples (hundreds at least), or train for fewer epochs.", **data))
        else:
            out.append(check("data", path.name, "pass", f"{examples} examples, {found.format} format.", **data))
    return out, files


def check_model(cfg: dict, name: str) -> tuple[list[P.Check], Optional[tuple]]:
    """Found, size, loads, quantization, parameters. Returns (checks, (model, tokenizer, info) or None)."""
    if Path(name) == default_model_path() and not default_model_installed():
        return [check("model", "found", "fail", "The default model (SmolLM2-135M-Instruct) is not installed yet.",
                      "Run 'farense-tui model default' (or make run), or set model to a local MLX folder or a "
                      "Hugging Face id.")], None
    folder = model_folder(name)
    if folder is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")
        if not is_hub_id(name):
            return [check("model", "found", "fail", f"The model folder {name} does not exist.",
                          "Run 'farense-tui model default', or fix the model path.")], None
        if offline:
            return [check("model", "found", "fail", f"{name} is not in the local Hugging Face cache and "
                          f"the engine runs offline.",
                          f"Download it once with 'huggingface-cli download {name}' (or set HF_HUB_OFFLINE=0).")], None
        return [check("model", "found", "warn", f"{name} is not in the local Hugging Face cache; training "
                      f"will download it first.", "Download it now to check it: "
                      f"huggingface-cli download {name}.")], None
    disk = weights_on_disk(str(folder))
    out = [check("model", "found", "pass", f"{folder} ({gb(disk)} of weights on disk).", path=str(folder),
                 disk_bytes=disk)]
    tic = time.perf_counter()
    try:
        model, tokenizer = load_model(name)
    except InputError as e:
        return out + [check("model", "loads", "fail", str(e), "Fix the model folder or name another model.")], None
    except Exception as e:  # noqa: BLE001 - the reason is shown whole
        return out + [check("model", "loads", "fail", f"The model did not load: {type(e).__name__}: {e}",
                            "Check that the folder holds an MLX model (config.json, *.safetensors, tokenizer), "
                            "or re-create it with 'farense-tui model default'.",
                            traceback=traceback.format_exc())], None
    seconds = time.perf_counter() - tic
    info = model_info(model, name, seconds)
    q = info.quantization
    kind = f"{q['bits']}-bit (group size {q['group_size']})" if q else info.float_dtype
    out.append(check("model", "loads", "pass",
                     f"Loaded in {seconds:.1f} s: {count(info.parameters)} parameters in {kind}, "
                     f"{info.layers} blocks, {gb(info.loaded_bytes)} in memory.",
                     parameters=info.parameters, quantization=q, dtype=info.float_dtype, layers=info.layers,
                     loaded_bytes=info.loaded_bytes, load_seconds=round(seconds, 3)))
    n = cfg["num_layers"]
    if n > info.layers:
        out.append(check("model", "num_layers", "fail", f"num_layers is {n}, but the model has {info.layers} blocks.",
                         f"Set num_layers to at most {info.layers}, or -1 for all of them.", layers=info.layers))
    return out, (model, tokenizer, info)


def check_token_lengths(cfg: dict, files: dict[str, CheckResult], tokenizer) -> tuple[list[P.Check], dict]:
    """Token lengths as the trainer makes them (chat template applied) and what max_seq_length truncates."""
    out, lengths = [], {}
    limit = cfg["max_seq_length"]
    for name, found in files.items():
        if found.problems or not found.samples:
            continue
        try:
            tokens = tokenize(found.samples, tokenizer, cfg["mask_prompt"])
        except InputError as e:
            out.append(check("data", f"{name} tokens", "fail", str(e), "Fix the data or set mask_prompt: false."))
            continue
        lengths[name] = tokens.lengths
        st = length_stats(tokens.lengths, limit)
        figures = (f"tokens per example: median {st.median:g}, p95 {st.p95}, max {st.max}, "
                   f"total {sum(tokens.lengths):,}")
        data = dict(min=st.min, mean=round(st.mean, 2), median=st.median, p95=st.p95, max=st.max,
                    total=sum(tokens.lengths), truncated=st.truncated,
                    truncated_share=round(st.truncated_fraction, 4), max_seq_length=limit,
                    histogram=[list(b) for b in st.histogram])
        empty = 0
        if cfg["mask_prompt"]:
            empty = sum(1 for t, o in zip(tokens.tokens, tokens.offsets) if o >= min(len(t), limit))
            data["no_answer_tokens"] = empty
        if st.truncated or empty:
            lost = f"; {empty} keep no answer tokens at all" if empty else ""
            out.append(check("data", f"{name} tokens", "warn",
                             f"{figures}; max_seq_length {limit} truncates {st.truncated} "
                             f"({share(st.truncated_fraction)}){lost}.",
                             f"Raise max_seq_length to {_round_up(st.max, 64)} to keep every example whole, "
                             f"or accept the truncation.", **data))
        else:
            out.append(check("data", f"{name} tokens", "pass", f"{figures}; max_seq_length {limit} truncates none.",
                             **data))
    return out, lengths


# Measured on the default model (docs/quality.md): each fact seen 36 times (12 epochs x 3 phrasings) was
# recalled 98% of the time, 24 times (8 x 3) 84%, twice (2 x 1) 3%.
def check_fact_exposure(cfg: dict, files: dict[str, CheckResult]) -> list[P.Check]:
    """Is the planned training long enough to learn facts: epochs x phrasings per fact."""
    train = files.get("train")
    if train is None or train.problems or not train.samples:
        return []
    phrasings = phrasings_per_answer(train.samples)
    if phrasings is None:
        return []
    per_epoch, total = batching.updates_planned(cfg, len(train.samples))
    epochs = total / per_epoch if per_epoch else 0
    seen = epochs * phrasings
    data = dict(phrasings=round(phrasings, 2), epochs=round(epochs, 2), exposures=round(seen, 1))
    detail = (f"Each answer is trained about {seen:.0f} times ({epochs:g} epochs x {phrasings:.1f} phrasings per "
              f"answer).")
    if seen >= FACT_EXPOSURES_WARN:
        return [check("training", "facts", "pass", detail + " Enough to learn facts, as measured on the default model.",
                      **data)]
    fix = f"Raise epochs to {math.ceil(FACT_EXPOSURES / max(phrasings, 1))}"
    if phrasings < 3:
        fix += " and give each fact at least 3 phrasings of its question (farense-tui data build does for the Farense set)"
    return [check("training", "facts", "warn",
                  detail + f" Too few for a model to recall facts: measured on the default model, facts seen "
                  f"{FACT_EXPOSURES} times were recalled 98% of the time, twice 3% (docs/quality.md).",
                  fix + "; if the answers teach a style rather than facts, ignore this.", **data)]



def check_warmup(cfg: dict, files: dict[str, CheckResult]) -> list[P.Check]:
    """Warmup that does not end before the run does."""
    train = files.get("train")
    if train is None or train.problems or not train.samples:
        return []
    problem = warmup_problem(cfg, batching.updates_planned(cfg, len(train.samples))[1])
    if not problem:
        return []
    what, fix = problem.split("; ", 1)
    return [check("training", "warmup", "warn", what + ".", fix[0].upper() + fix[1:])]


def check_time(cfg: dict, info: Optional[ModelInfo], dev: DeviceInfo, working: str, lengths: dict,
               measured_tps: float = 0.0) -> list[P.Check]:
    """How long the run will take here: from the probe's measured rate, else from the matmul rate."""
    train = lengths.get("train")
    rate = dev.rates.get(working) or dev.rates.get("float32") or 0.0
    if info is None or not train or not (rate or measured_tps):
        return []
    est = estimate_time(info, cfg, train, rate, measured_tps)
    est["source"] = "the probe's measured rate" if measured_tps else f"the measured {working} matmul rate"
    detail = (f"About {minutes(est['epoch_seconds'])} per epoch ({est['tokens_per_epoch']:,} tokens at "
              f"~{est['tokens_per_second']:,.0f} tokens/s, from {est['source']}), {minutes(est['seconds'])} for "
              f"{est['epochs']:g} epochs.")
    if est["seconds"] > 24 * 3600:
        return [check("time", "training", "warn", detail + " That is more than a day on this machine.",
                      "Train on a faster machine (a Mac's GPU, or a CUDA GPU), or train fewer epochs knowing that "
                      "fewer facts will be learned.", **est)]
    return [check("time", "training", "pass", detail, **est)]



def free_disk(path: Path) -> tuple[Path, int]:
    """Free bytes on the file system that holds path (its nearest existing ancestor)."""
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def check_disk(cfg: dict, out_dir: Path, info: Optional[ModelInfo], train_count: int,
               free: Optional[int] = None, working: str = "") -> list[P.Check]:
    where, measured = free_disk(out_dir)
    free = measured if free is None else free
    if info is None:
        status = "pass" if free >= GB else "warn"
        return [check("disk", "space", status, f"{gb(free)} free at {where}; the run's needs are unknown "
                      f"until the model loads.", "Free at least 1 GB there.", free=free, path=str(where))]
    need = estimate_disk(info, cfg, train_count, working)
    detail = (f"{gb(free)} free at {where}; the run needs about {gb(need['total'])} "
              f"({plural(need['checkpoints_kept'], 'checkpoint')} of {gb(need['checkpoint'])}, best and final "
              f"adapters, logs); fusing the adapter into a model later needs {gb(need['fused_model'])} more")
    data = dict(free=free, path=str(where), need=need)
    if free < need["total"]:
        return [check("disk", "space", "fail", detail + ".",
                      "Free disk space there, lower keep_checkpoints, or pass --out on another disk.", **data)]
    if free < need["total"] + need["fused_model"] + GB:
        return [check("disk", "space", "warn", detail + ": enough to train, tight for anything more.",
                      "Free some disk space before exporting a fused model.", **data)]
    return [check("disk", "space", "pass", detail + ".", **data)]


def check_memory(cfg: dict, info: Optional[ModelInfo], working: str, hw: Hardware,
                 longest: int = 0) -> list[P.Check]:
    """The estimate for the config as given, at the longest batch the data makes (``longest`` tokens)."""
    if info is None:
        return [check("memory", "estimate", "warn", "No estimate: the model did not load.",
                      "Fix the model check first.")]
    seq = padded_length(longest, cfg["max_seq_length"]) if longest else cfg["max_seq_length"]
    est = estimate_memory(info, cfg, working, seq=seq)
    budget = hw.memory_budget
    share = est["total"] / budget if budget else math.inf
    longest_batch = ", the longest batch the data makes," if seq < cfg["max_seq_length"] else ""
    detail = (f"Estimated peak {gb(est['total'])} for batch {est['batch_size']} x {est['max_seq_length']} tokens"
              f"{longest_batch} "
              f"(weights {gb(est['weights'])} in {working}, trained weights and optimizer {gb(est['trainable'])}, "
              f"activations {gb(est['activations'] + est['logits'])}, runtime {gb(est['runtime'])}) "
              f"against {gb(budget)} available ({share:.0%})")
    fix = ("Use the recommended config (smaller batch_size or max_seq_length), or set grad_checkpoint: true.")
    data = dict(estimate=est, budget=budget, share=round(share, 4))
    if share > 1:
        return [check("memory", "estimate", "fail", detail + ": it will not fit.", fix, **data)]
    if share > 1 - MEMORY_MARGIN:
        return [check("memory", "estimate", "warn", detail + f": less than {MEMORY_MARGIN:.0%} would stay free.",
                      fix, **data)]
    return [check("memory", "estimate", "pass", detail + ".", **data)]



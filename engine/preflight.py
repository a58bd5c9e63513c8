"""Preflight: check this machine, the data and the model, then recommend a config that fits.

Each check is a small function returning ``check`` records (category, name, pass/warn/fail,
a detail and, unless it passed, a fix). ``run_preflight`` runs them in order, streaming each
record as it is made, then recommends a config:

1. the seeds' memory tiers (below 6 GB ... 32 GB and more of available memory) give batch size,
   accumulation, sequence length and learning rate;
2. that is adjusted to the model and the data: the sequence length to the longest example,
   batch and sequence shrunk until the memory estimate keeps 20% free, ``num_layers`` to the
   model's depth, and on a CPU backend ``base_dtype: float32`` (MLX's CPU backend only has a
   fast BLAS path for float32; bfloat16, float16 and quantized matmuls run far slower);
3. with ``probe``, a few real training updates at candidate batch sizes and sequence lengths
   measure peak memory and tokens/s, and the fastest setting that keeps 20% free wins.

The report (``preflight_report.json``) and the config (``recommended_config.json``, a complete
config the engine trains with as it is) are written atomically into ``out``.

The report: ``version``, ``created``, ``seconds``, ``ok`` (no check failed), ``summary`` (counts by
status), ``config`` (the input, resolved), ``model``, ``hardware``, ``device`` (rates in GFLOP/s),
``checks`` (the check records in order), ``recommendation`` (``config``, ``tier``, ``reasons``,
``estimate``, ``source``: tiers or probe) and ``probe`` (null without ``--probe``; else ``rows``
with measured peak, tokens/s and the estimate beside it, ``picked``, ``method``, budgets).

Hardware figures come in as a ``Hardware`` and device figures as a ``DeviceInfo``, so tests can
fake a 5 GB laptop or a reference-BLAS Linux box.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import mlx.core as mx
import mlx.nn as nn
import psutil
from mlx.utils import tree_flatten

from . import config as C
from . import protocol as P
from .batching import padded_length
from .datatools import CheckResult, check_file, length_stats
from .models import default_model_installed, default_model_path, resolve_model
from .blas import loaded_blas
from .server import Context, handles
from .trainer import (
    TrainingError, apply_fine_tune_type, compiled_step, load_model, make_optimizer, quantization_of, set_base_dtype,
    tokenize,
)

GB = 1024 ** 3
MB = 1024 ** 2
REPORT_VERSION = 1
REPORT_FILE = "preflight_report.json"
RECOMMENDED_FILE = "recommended_config.json"
MEMORY_MARGIN = 0.2            # a recommended setting keeps at least this share of the budget free
RUNTIME_BYTES = 512 * MB       # the engine outside MLX's buffers: Python, tokenizer, libraries
PROBE_SECONDS = 120.0          # wall-clock budget for the probe's training steps
PYTHON_MIN = (3, 10)           # pyproject's requires-python
PYTHON_TESTED = (3, 13)        # newest Python the project's wheels are known to cover
OPENBLAS_INSTALL = "sudo apt-get install libopenblas0-pthread"
# the brief's list; the project's own requirements (read from its metadata) are added to it
PACKAGES = ("mlx", "mlx-lm", "textual", "plotext", "psutil", "transformers")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OPTIMIZER_SLOTS = {"adam": 2, "adamw": 2, "sgd": 0, "adafactor": 1}  # state arrays per trainable weight

Emit = Callable[[P.Record], None]


def gb(n: float) -> str:
    """Bytes for people: MB under a gigabyte, GB from there."""
    if abs(n) < 10 * MB:
        return f"{n / MB:.1f} MB"
    return f"{n / MB:,.0f} MB" if abs(n) < GB else f"{n / GB:.1f} GB"


def count(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:,.0f}M" if n >= 10e6 else f"{n / 1e6:.2f}M"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:,.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def check(category: str, name: str, status: str, detail: str, fix: str = "", **data) -> P.Check:
    assert status in ("pass", "warn", "fail"), status
    return P.Check(category=category, name=name, status=status, detail=detail,
                   fix="" if status == "pass" else fix, data=_jsonable(data))


def _jsonable(obj):
    """Report values as JSON: no inf/nan, no tuples, no numpy scalars."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.item())
    return obj


# ------------------------------------------------------------------ hardware


@dataclass
class Hardware:
    """What the machine offers. ``detect()`` reads the real one; tests build their own."""

    os_name: str
    os_release: str
    machine: str
    chip: str
    apple_silicon: bool
    physical_cores: int
    logical_cores: int
    usable_cores: int
    memory_total: int
    memory_available: int
    metal_working_set: Optional[int] = None  # Metal's recommended working set (macOS GPU)
    rosetta: bool = False                   # an x86-64 Python translated on Apple Silicon

    @property
    def memory_budget(self) -> int:
        """What a training run may use: available memory, capped by Metal's working set."""
        if self.metal_working_set:
            return min(self.memory_available, self.metal_working_set)
        return self.memory_available

    @classmethod
    def detect(cls) -> "Hardware":
        system = platform.system()
        machine = platform.machine()
        vm = psutil.virtual_memory()
        total, available = int(vm.total), int(vm.available)
        limit = _cgroup_memory_limit()
        if limit is not None and limit < total:
            used = _read_int("/sys/fs/cgroup/memory.current") or 0
            total, available = limit, max(0, min(available, limit - used))
        chip, rosetta = _chip_name(system, machine)
        apple = system == "Darwin" and (machine == "arm64" or rosetta or chip.startswith("Apple"))
        try:
            usable = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS
            usable = os.cpu_count() or 1
        working_set = None
        if mx.metal.is_available():
            working_set = int(mlx_device_info().get("max_recommended_working_set_size", 0)) or None
        release = platform.mac_ver()[0] if system == "Darwin" else platform.release()
        return cls(
            os_name="macOS" if system == "Darwin" else system, os_release=release, machine=machine,
            chip=chip, apple_silicon=apple, physical_cores=psutil.cpu_count(logical=False) or 0,
            logical_cores=os.cpu_count() or 1, usable_cores=usable, memory_total=total,
            memory_available=available, metal_working_set=working_set, rosetta=rosetta,
        )


def _read_int(path: str) -> Optional[int]:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_memory_limit() -> Optional[int]:
    """A container's memory limit (cgroup v2), which the OOM killer enforces whatever psutil says."""
    return _read_int("/sys/fs/cgroup/memory.max")


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _chip_name(system: str, machine: str) -> tuple[str, bool]:
    if system == "Darwin":
        brand = _sysctl("machdep.cpu.brand_string") or machine
        return brand, _sysctl("sysctl.proc_translated") == "1"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip(), False
    except OSError:
        pass
    return platform.processor() or machine, False


# -------------------------------------------------------------------- device


@dataclass
class DeviceInfo:
    """MLX's device and its measured matmul rates (GFLOP/s by dtype label)."""

    backend: str                      # "metal gpu", "cuda gpu" or "cpu"
    name: str = ""
    blas: str = ""                    # openblas, reference, accelerate (CPU backend)
    openblas_path: Optional[str] = None  # an OpenBLAS library on disk, loaded or not
    working: str = "float32"          # the dtype the frozen base computes in for the config
    rates: dict = field(default_factory=dict)
    other_blas: Optional[dict] = None  # {"blas", "float32"} measured in a second process

    @property
    def on_cpu(self) -> bool:
        return self.backend == "cpu"


def mlx_device_info() -> dict:
    """MLX's description of its device (``mx.device_info`` from 0.30, ``mx.metal.device_info`` before)."""
    describe = getattr(mx, "device_info", None) or getattr(mx.metal, "device_info", None)
    try:
        return dict(describe()) if describe else {}
    except Exception:  # noqa: BLE001 - a description is nice to have, never a reason to fail
        return {}


def device_backend() -> str:
    if mx.default_device().type == mx.cpu:
        return "cpu"
    return "metal gpu" if mx.metal.is_available() else "cuda gpu"


def openblas_library() -> Optional[str]:
    """Debian's OpenBLAS if installed (the path the launcher preloads); Linux only."""
    if not sys.platform.startswith("linux"):
        return None
    from .blas import openblas_path

    return openblas_path()


def matmul_rate(label: str = "float32", seconds: float = 1.0, n: int = 512,
                quantization: Optional[dict] = None) -> float:
    """GFLOP/s of an n x n matmul in ``label`` (float32, bfloat16, float16 or N-bit), run ~seconds."""
    x = mx.random.normal((n, n))
    w = mx.random.normal((n, n))
    if label.endswith("-bit"):
        q = quantization or {}
        bits, group = int(label.split("-")[0]), int(q.get("group_size", 64))
        wq, scales, biases = mx.quantize(w, group_size=group, bits=bits)
        mx.eval(x, wq, scales, biases)

        def op():
            return mx.quantized_matmul(x, wq, scales, biases, transpose=True, group_size=group, bits=bits)
    else:
        dtype = getattr(mx, label)
        x, w = x.astype(dtype), w.astype(dtype)
        mx.eval(x, w)

        def op():
            return x @ w
    mx.eval(op())  # warm-up: first-call setup is not the rate
    runs, tic = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - tic < seconds:
        mx.eval(op())
        runs += 1
    return 2 * n ** 3 * runs / (time.perf_counter() - tic) / 1e9


def other_blas_rate(blas: str, library: Optional[str], seconds: float = 0.5) -> Optional[dict]:
    """float32 rate with the other BLAS, measured in a child process (a BLAS cannot be swapped in place).

    Returns {"blas", "float32"}, or {"blas", "error"} when the child could not measure it."""
    if blas not in ("openblas", "reference") or not library:
        return None
    wanted = "reference" if blas == "openblas" else "openblas"
    env = dict(os.environ)
    preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and "openblas" not in p]
    if wanted == "openblas":
        preload.insert(0, library)
    env["LD_PRELOAD"] = ":".join(preload)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    try:
        done = subprocess.run([sys.executable, "-m", "engine.preflight", "matmul", "float32", str(seconds)],
                              capture_output=True, text=True, timeout=120, env=env)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        return {"blas": wanted, "error": f"{type(e).__name__}: {e}"}
    if measured.get("blas") != wanted:
        return {"blas": wanted, "error": f"the child process still loaded {measured.get('blas')}"}
    return measured


def measure_device(working: str = "float32", stored: str = "float32", quantization: Optional[dict] = None,
                   seconds: float = 1.0, compare_blas: bool = True) -> DeviceInfo:
    """Rates of float32, of the dtype the base will compute in and, on a CPU backend, of the dtype it is
    stored in (what the recommendation's choice of base_dtype is measured against)."""
    backend = device_backend()
    info = DeviceInfo(backend=backend, name=str(mlx_device_info().get("device_name", "")), working=working)
    if backend == "cpu":
        info.blas = loaded_blas()
        info.openblas_path = openblas_library()
    labels = ["float32", working] + ([stored] if backend == "cpu" else [])
    for label in dict.fromkeys(labels):
        info.rates[label] = round(matmul_rate(label, seconds, quantization=quantization), 2)
    if backend == "cpu" and compare_blas:
        info.other_blas = other_blas_rate(info.blas, info.openblas_path, seconds / 2)
    return info


def working_dtype(base_dtype: str, quantization: Optional[dict], float_dtype: str, on_cpu: bool,
                  full: bool = False) -> str:
    """The dtype label the base computes in: the rule of ``trainer.set_base_dtype``."""
    if base_dtype == "auto" and full:
        return "float32"
    if base_dtype == "keep" or (base_dtype == "auto" and not on_cpu):
        return f"{quantization['bits']}-bit" if quantization else float_dtype
    return "float32" if base_dtype == "auto" else base_dtype


# --------------------------------------------------------------------- model


@dataclass
class ModelInfo:
    """The model figures the estimates need, taken from the loaded model."""

    path: str
    parameters: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    loaded_bytes: int                 # weights as loaded (packed when quantized)
    disk_bytes: int
    quantization: Optional[dict]
    float_dtype: str
    # per block, from the first: (module key, input dims, output dims) of its linear layers
    linears: list = field(default_factory=list)
    load_seconds: float = 0.0

    def weight_bytes(self, working: str) -> int:
        if working.endswith("-bit"):
            return self.loaded_bytes
        return self.parameters * DTYPE_BYTES.get(working, 4)

    def trained_layers(self, cfg: dict) -> int:
        n = cfg["num_layers"]
        return self.layers if n == -1 else min(n, self.layers)

    def trainable_parameters(self, cfg: dict) -> int:
        n = self.trained_layers(cfg)
        blocks = self.linears[len(self.linears) - n:] if n else []
        if cfg["fine_tune_type"] == "full":
            return sum(i * o for block in blocks for _, i, o in block)
        lora = cfg["lora_parameters"]
        keys = lora.get("keys")
        rank = lora["rank"]
        total = 0
        for block in blocks:
            for key, i, o in block:
                if keys is None or key in keys:
                    total += rank * (i + o) + (o if cfg["fine_tune_type"] == "dora" else 0)
        return total

    @classmethod
    def from_model(cls, model, path: str, load_seconds: float = 0.0) -> "ModelInfo":
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
        return cls(
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
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
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


# ----------------------------------------------------------------- estimates


def estimate_memory(info: ModelInfo, cfg: dict, working: str, batch: Optional[int] = None,
                    seq: Optional[int] = None) -> dict:
    """Peak bytes of one training update, by part.

    Per token and trained block the backward pass keeps the inputs of the adapted linears, the
    norms' inputs, q/k/v, the MLP's gate/up/product (about 8 x hidden + 2 x kv + 4 x
    intermediate values) and the attention scores and probabilities (2 x heads x sequence);
    blocks below the lowest adapted one keep nothing. The logits are kept three times in float32
    (logits, softmax, their gradient). Checked against MLX's measured peak for SmolLM2-135M in
    float32 on the CPU: 0-6% over it from 64 to 512 tokens, batch 1 to 4.
    """
    batch = batch or cfg["batch_size"]
    seq = seq or cfg["max_seq_length"]
    act = 4 if working == "float32" else 2
    trainable = info.trainable_parameters(cfg)
    state_bytes = 4 if cfg["fine_tune_type"] != "full" else DTYPE_BYTES.get(working, 4)
    slots = OPTIMIZER_SLOTS.get(cfg["optimizer"], 2)
    n = info.trained_layers(cfg)
    kv = info.kv_heads * info.head_dim
    per_token_block = 8 * info.hidden + 2 * kv + 4 * info.intermediate + 2 * info.heads * seq
    tokens = batch * seq
    if cfg["grad_checkpoint"]:  # block inputs kept, one block's activations recomputed at a time
        blocks = tokens * (n * info.hidden + per_token_block) * act
    else:
        blocks = tokens * n * per_token_block * act
    parts = {
        "weights": info.weight_bytes(working),
        "trainable": trainable * state_bytes * (2 + slots),  # weights, gradients, optimizer state
        "activations": int(blocks * 1.1),
        "logits": tokens * info.vocab * 4 * 3,
        "runtime": RUNTIME_BYTES,
    }
    parts["total"] = sum(parts.values())
    parts.update(batch_size=batch, max_seq_length=seq, trainable_parameters=trainable, working=working)
    return parts


def updates_planned(cfg: dict, train_count: int) -> tuple[int, int]:
    """(updates per epoch, total updates): the trainer's arithmetic (a bucket of batch x accumulation
    examples per update, the last one smaller)."""
    per_epoch = math.ceil(train_count / C.effective_batch_size(cfg)) if train_count else 0
    if cfg["iters"] is not None:
        return per_epoch, int(cfg["iters"])
    return per_epoch, max(1, round(cfg["epochs"] * per_epoch)) if per_epoch else 0


def estimate_disk(info: ModelInfo, cfg: dict, train_count: int, working: str = "") -> dict:
    """Bytes a run writes: kept checkpoints (adapter + optimizer state), best and final adapters, logs.
    A full fine-tune's weights are saved in the dtype they train in (``working``)."""
    trainable = info.trainable_parameters(cfg)
    weight_bytes = 4 if cfg["fine_tune_type"] != "full" else DTYPE_BYTES.get(working or info.float_dtype, 4)
    adapter = trainable * weight_bytes
    checkpoint = adapter * (1 + OPTIMIZER_SLOTS.get(cfg["optimizer"], 2)) + 64 * 1024
    per_epoch, total = updates_planned(cfg, train_count)
    epochs = math.ceil(total / per_epoch) if per_epoch else 1
    saves = total // cfg["save_every"] + epochs
    kept = saves if cfg["keep_checkpoints"] == 0 else min(saves, cfg["keep_checkpoints"] + 1)  # +1 mid-write
    logs = total * 1200 + 1 * MB  # events.jsonl, metrics.csv and .json per update
    need = kept * checkpoint + 2 * adapter + logs
    return {"adapter": adapter, "checkpoint": checkpoint, "checkpoints_kept": kept, "logs": logs,
            "total": need, "fused_model": info.parameters * 2, "updates": total}


# -------------------------------------------------------------------- checks


def check_config(raw: dict) -> tuple[dict, list[P.Check]]:
    """The config as the engine will resolve it; a bad one falls back to the defaults."""
    try:
        cfg, notes = C.validate(raw)
    except C.ConfigError as e:
        cfg, _ = C.validate({})
        return cfg, [check("config", "settings", "fail", f"{e} The rest of preflight uses the defaults.",
                           "Fix that setting in the config file and run preflight again.")]
    out = [check("config", "settings", "pass",
                 f"The config is valid ({len(raw)} settings given, the rest default).", keys=sorted(raw))]
    out += [check("config", "ignored", "warn", note, "Remove the key from the config.") for note in notes]
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
           + f" (the {tier.name} tier)")
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
        if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
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
    except TrainingError as e:
        return out + [check("model", "loads", "fail", str(e), "Fix the model folder or name another model.")], None
    except Exception as e:  # noqa: BLE001 - the reason is shown whole
        return out + [check("model", "loads", "fail", f"The model did not load: {type(e).__name__}: {e}",
                            "Check that the folder holds an MLX model (config.json, *.safetensors, tokenizer), "
                            "or re-create it with 'farense-tui model default'.",
                            traceback=traceback.format_exc())], None
    seconds = time.perf_counter() - tic
    info = ModelInfo.from_model(model, name, seconds)
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
            tokens = tokenize(found.samples, tokenizer, cfg["mask_prompt"], Path(found.path).name)
        except TrainingError as e:
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
                             f"({st.truncated_fraction:.0%}){lost}.",
                             f"Raise max_seq_length to {_round_up(st.max, 64)} to keep every example whole, "
                             f"or accept the truncation.", **data))
        else:
            out.append(check("data", f"{name} tokens", "pass", f"{figures}; max_seq_length {limit} truncates none.",
                             **data))
    return out, lengths


# Measured on the default model (docs/quality.md): each fact seen 36 times (12 epochs x 3 phrasings) was
# recalled 98% of the time, 24 times (8 x 3) 84%, twice (2 x 1) 3%.
FACT_EXPOSURES = 36
FACT_EXPOSURES_WARN = 30


def phrasings_per_answer(samples: list[dict]) -> Optional[float]:
    """Examples per distinct answer: how many phrasings each fact has (None for text data)."""
    from .probe import question_answer

    answers = [qa[2] for qa in map(question_answer, samples) if qa is not None]
    return len(answers) / len(set(answers)) if answers else None


def check_fact_exposure(cfg: dict, files: dict[str, CheckResult]) -> list[P.Check]:
    """Is the planned training long enough to learn facts: epochs x phrasings per fact."""
    train = files.get("train")
    if train is None or train.problems or not train.samples:
        return []
    phrasings = phrasings_per_answer(train.samples)
    if phrasings is None:
        return []
    per_epoch, total = updates_planned(cfg, len(train.samples))
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


# the share of the measured matmul rate a training update achieves: the probe measured 97 tokens/s
# for a full fine-tune of SmolLM2-135M (829 MFLOP per token at 384 tokens) on this project's 2-core
# CPU while its float32 matmuls ran at 124 GFLOP/s, i.e. 0.65 (2026-11-30)
TRAIN_EFFICIENCY = 0.6


def training_flops_per_token(info: ModelInfo, cfg: dict, seq: int) -> float:
    """Forward through every block and the output layer, backward through the trained blocks
    (weights and inputs for full fine-tuning, inputs only for the frozen weights under LoRA)."""
    blocks = sum(i * o for block in info.linears for _, i, o in block)
    head = info.vocab * info.hidden
    attention = 4 * seq * info.heads * info.head_dim * info.layers  # scores and weighted values
    forward = 2 * (blocks + head) + attention
    share = info.trained_layers(cfg) / max(info.layers, 1)
    backward_blocks = (2 if cfg["fine_tune_type"] == "full" else 1) * share * (2 * blocks + attention)
    return forward + backward_blocks + 2 * head


def estimate_time(info: ModelInfo, cfg: dict, lengths: list[int], rate_gflops: float = 0.0,
                  tokens_per_second: float = 0.0) -> dict:
    """Seconds per epoch and for the run: from a measured training rate when given, else from the
    matmul rate."""
    seq = cfg["max_seq_length"]
    tokens = sum(min(n, seq) for n in lengths)
    mean = tokens / len(lengths) if lengths else seq
    if not tokens_per_second:
        tokens_per_second = rate_gflops * 1e9 * TRAIN_EFFICIENCY / training_flops_per_token(info, cfg, int(mean))
    per_epoch_updates, total = updates_planned(cfg, len(lengths))
    epochs = total / per_epoch_updates if per_epoch_updates else 0
    epoch_seconds = tokens / tokens_per_second if tokens_per_second else 0.0
    return {"tokens_per_epoch": tokens, "tokens_per_second": round(tokens_per_second, 1), "epochs": epochs,
            "epoch_seconds": round(epoch_seconds, 1), "seconds": round(epoch_seconds * epochs, 1)}


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


def longest_example(lengths: Optional[dict]) -> int:
    """Tokens in the longest example of any file (0 when unknown)."""
    return max((max(v) for v in (lengths or {}).values() if v), default=0)


def _round_up(n: int, multiple: int) -> int:
    return multiple * math.ceil(n / multiple)


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


# ------------------------------------------------------------ recommendation


@dataclass(frozen=True)
class Tier:
    name: str
    min_gb: float
    batch_size: int
    grad_accumulation_steps: int
    max_seq_length: int
    learning_rate: float


# The seeds' table (002, "Configurações Recomendadas por Hardware"), picked by available memory as
# the seeds' preflight_check.py did. One change: 16 GB uses 2e-4, what the user ran on that very
# machine (001); the 002 table's 5e-4 is not what they found to work there.
TIERS = (
    Tier("<6 GB", 0, 1, 8, 128, 1e-4),
    Tier("6-8 GB", 6, 1, 4, 256, 2e-4),
    Tier("8 GB", 8, 2, 2, 512, 3e-4),
    Tier("16 GB", 16, 4, 2, 512, 2e-4),
    Tier("32 GB+", 32, 8, 1, 512, 5e-4),
)
EPOCHS = 3                 # the seeds' default
LARGE_MODEL = 13e9         # above this, the learning rate is halved
MAX_RECOMMENDED_SEQ = 4096


def tier_for(budget_bytes: int) -> Tier:
    found = TIERS[0]
    for tier in TIERS:
        if budget_bytes >= tier.min_gb * GB:
            found = tier
    return found


@dataclass
class Recommendation:
    config: dict
    tier: str
    reasons: list = field(default_factory=list)
    estimate: Optional[dict] = None
    source: str = "tiers"

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))


def recommend(cfg: dict, raw: dict, hw: Hardware, dev: DeviceInfo, info: Optional[ModelInfo],
              model_name: str, lengths: Optional[dict] = None, train_count: int = 0) -> Recommendation:
    """A complete config for this machine, model and data, with a sentence per decision."""
    budget = hw.memory_budget
    limit = (1 - MEMORY_MARGIN) * budget
    tier = tier_for(budget)
    rec = copy.deepcopy(cfg)
    rec["model"] = cfg["model"] or model_name  # the user's name as given; the resolved default otherwise
    # what the config sets for learning (a recipe: learning rate, updates of so many examples) is kept;
    # the tier fills in what it leaves unset, and memory decides how an update is cut into micro-batches
    own_batch = "batch_size" in raw or "grad_accumulation_steps" in raw
    if not own_batch:
        rec.update(batch_size=tier.batch_size, grad_accumulation_steps=tier.grad_accumulation_steps)
    if "max_seq_length" not in raw:
        rec["max_seq_length"] = tier.max_seq_length
    if "learning_rate" not in raw:
        rec["learning_rate"] = tier.learning_rate
    reasons = [f"{gb(budget)} of memory available puts this machine in the {tier.name} tier: batch "
               f"{tier.batch_size}, accumulation {tier.grad_accumulation_steps}, {tier.max_seq_length} tokens, "
               f"learning rate {tier.learning_rate:g}."]
    kept = [k for k, given in (("updates of batch_size x grad_accumulation_steps examples", own_batch),
                               ("max_seq_length", "max_seq_length" in raw),
                               ("learning_rate", "learning_rate" in raw)) if given]
    if kept:
        reasons.append(f"The config's own {', '.join(kept)} are kept (a recipe's choices); only memory changes how "
                       f"an update is cut into micro-batches.")
    out = Recommendation(rec, tier.name, reasons)

    # base dtype: float32 on a CPU backend (the only fast BLAS path), the stored base on a GPU
    quant = info.quantization if info else None
    if dev.on_cpu:
        rec["base_dtype"] = "float32"
        why = ("On the CPU backend only float32 matmuls use the fast BLAS path (bfloat16, float16 and quantized "
               "ones run far slower), so the base is trained in float32")
        slower = {k: v for k, v in dev.rates.items() if k != "float32"}
        if "float32" in dev.rates and slower:
            why += (f" (measured here: float32 {dev.rates['float32']:.1f} GFLOP/s, "
                    + ", ".join(f"{k} {v:.1f}" for k, v in slower.items()) + ")")
        if dev.blas == "reference":
            why += f"; install OpenBLAS ('{OPENBLAS_INSTALL}') to make that path fast"
        reasons.append(why + ".")
    else:
        rec["base_dtype"] = "auto"
        reasons.append("On the GPU the base stays as stored" + (f" ({quant['bits']}-bit: QLoRA)" if quant else "")
                       + ", which is what keeps a large model in memory.")
    if info is None:
        reasons.append("The model did not load, so these tier values are not adjusted to it.")
        return out

    if info.trained_layers(rec) < rec["num_layers"]:
        rec["num_layers"] = info.layers
        reasons.append(f"num_layers is {info.layers}: the model has no more blocks than that.")
    if info.parameters > LARGE_MODEL and "learning_rate" not in raw:
        rec["learning_rate"] = tier.learning_rate / 2
        reasons.append(f"{info.parameters / 1e9:.0f}B parameters is a large model: the learning rate is halved "
                       f"to {rec['learning_rate']:g}.")

    def working() -> str:
        return working_dtype(rec["base_dtype"], quant, info.float_dtype, dev.on_cpu, rec["fine_tune_type"] == "full")

    def fits() -> bool:
        return estimate_memory(info, rec, working())["total"] <= limit

    stored = working_dtype("keep", quant, info.float_dtype, dev.on_cpu)
    if dev.on_cpu and stored != "float32" and not _fits_at_all(info, rec, working(), limit):
        rec["base_dtype"] = "keep"
        reasons.append(f"A float32 copy of the base ({gb(info.weight_bytes('float32'))}) does not fit in memory, so "
                       f"the base stays {stored} as stored: slower matmuls, but it fits.")

    # sequence length: cover the longest example when memory allows
    longest = longest_example(lengths)
    if longest > rec["max_seq_length"]:
        wanted = min(_round_up(longest, 64), MAX_RECOMMENDED_SEQ)
        before = rec["max_seq_length"]
        rec["max_seq_length"] = wanted
        if fits():
            reasons.append(f"The longest example has {longest} tokens, so max_seq_length is raised to {wanted} "
                           f"and nothing is truncated; the estimate still keeps {MEMORY_MARGIN:.0%} free.")
        else:
            rec["max_seq_length"] = before
            reasons.append(f"The longest example has {longest} tokens but {wanted} tokens would not fit; "
                           f"max_seq_length stays {before} and longer examples are truncated.")
    elif longest and _round_up(longest, 64) < rec["max_seq_length"]:
        rec["max_seq_length"] = _round_up(longest, 64)
        reasons.append(f"The longest example has {longest} tokens, so max_seq_length {rec['max_seq_length']} keeps "
                       f"every example whole; batches are never longer, so the estimate and the probe measure "
                       f"what the run will really hold.")

    # shrink until the estimate keeps the margin free: batch first (accumulation keeps the effective
    # batch), then the sequence, then gradient checkpointing
    shrunk = []
    while not fits():
        if rec["batch_size"] > 1:
            rec["batch_size"] //= 2
            rec["grad_accumulation_steps"] *= 2
            shrunk.append(f"batch {rec['batch_size']} x accumulation {rec['grad_accumulation_steps']}")
        elif rec["max_seq_length"] > 128:
            rec["max_seq_length"] = max(128, rec["max_seq_length"] // 2)
            shrunk.append(f"max_seq_length {rec['max_seq_length']}")
        elif not rec["grad_checkpoint"]:
            rec["grad_checkpoint"] = True
            shrunk.append("gradient checkpointing")
        else:
            reasons.append(f"Even batch 1 x 128 tokens with gradient checkpointing is estimated above "
                           f"{gb(limit)}: this model is too large for the memory available.")
            break
    if shrunk:
        reasons.append(f"{count(info.parameters)} parameters ({gb(info.weight_bytes(working()))} as trained) "
                       f"leave too little room for the tier's setting, so: {', '.join(shrunk)}.")

    _schedule(rec, raw, train_count, reasons)
    out.estimate = estimate_memory(info, rec, working())
    reasons.append(f"Estimated peak {gb(out.estimate['total'])} of {gb(budget)} available "
                   f"({out.estimate['total'] / budget:.0%}).")
    return out


def _fits_at_all(info: ModelInfo, rec: dict, working: str, limit: float) -> bool:
    smallest = dict(rec, batch_size=1, max_seq_length=128, grad_checkpoint=True)
    return estimate_memory(info, smallest, working)["total"] <= limit


def _schedule(rec: dict, raw: dict, train_count: int, reasons: list) -> None:
    """Epochs, warmup and intervals sized to the data; whatever the user set is kept."""
    if "epochs" not in raw and "iters" not in raw:
        rec["epochs"], rec["iters"] = float(EPOCHS), None
    per_epoch, total = updates_planned(rec, train_count)
    if not total:
        return
    parts = []
    if "warmup_steps" not in raw:
        rec["warmup_steps"] = min(100, max(1, total // 10))
        parts.append(f"warmup over {plural(rec['warmup_steps'], 'update')}")
    if "steps_per_eval" not in raw:
        rec["steps_per_eval"] = max(1, min(200, per_epoch // 2 or 1))
        parts.append(f"validation every {rec['steps_per_eval']}")
    if "save_every" not in raw:
        rec["save_every"] = max(1, min(100, per_epoch // 2 or 1))
        parts.append(f"a checkpoint every {rec['save_every']}")
    if "steps_per_report" not in raw:
        rec["steps_per_report"] = max(1, min(10, per_epoch // 5 or 1))
    if parts:
        reasons.append(f"{train_count} examples make {plural(per_epoch, 'update')} per epoch and {total} in all: "
                       f"{', '.join(parts)}.")


# --------------------------------------------------------------------- probe


@dataclass
class ProbeRow:
    batch_size: int
    max_seq_length: int
    peak_memory: int = 0
    tokens_per_second: float = 0.0
    ok: bool = False
    note: str = ""
    seconds: float = 0.0
    ran: bool = False
    over_memory: bool = False  # measured or predicted over the limit
    estimated: int = 0         # the estimate's total, beside the measured peak

    def event(self) -> P.ProbeResult:
        return P.ProbeResult(batch_size=self.batch_size, max_seq_length=self.max_seq_length,
                             peak_memory=self.peak_memory, tokens_per_second=round(self.tokens_per_second, 2),
                             ok=self.ok, note=self.note)


class ProbeRunner:
    """Real training updates on synthetic token batches: (batch, seq) -> (peak bytes, tokens/s, seconds).

    The model is the one the run would train (LoRA applied, base in the recommended dtype); every
    position carries loss, so each batch is the worst case of its shape. The first update of each
    shape is a warm-up; the rate comes from the ones after it.
    """

    def __init__(self, model, cfg: dict, vocab: int, min_seconds: float = 1.0, max_steps: int = 3):
        self.model, self.vocab = model, vocab
        self.min_seconds, self.max_steps = min_seconds, max_steps
        self.optimizer = make_optimizer(cfg)
        self.step = compiled_step(model, self.optimizer)  # exactly the trainer's update
        model.train()

    def _update(self, inputs, targets, mask) -> None:
        loss, ntoks, _ = self.step(inputs, targets, mask, None, None, None, True)
        mx.eval(self.model.state, self.optimizer.state, loss, ntoks)

    def __call__(self, batch: int, seq: int) -> tuple[int, float, float]:
        mx.clear_cache()
        mx.reset_peak_memory()
        start = time.perf_counter()
        tokens = mx.random.randint(0, self.vocab, (batch, seq + 1))
        inputs, targets, mask = tokens[:, :-1], tokens[:, 1:], mx.ones((batch, seq))
        self._update(inputs, targets, mask)
        steps, tic = 0, time.perf_counter()
        while steps < 1 or (steps < self.max_steps and time.perf_counter() - tic < self.min_seconds):
            self._update(inputs, targets, mask)
            steps += 1
        rate = batch * seq * steps / (time.perf_counter() - tic)
        peak = int(mx.get_peak_memory())
        mx.clear_cache()
        return peak, rate, time.perf_counter() - start


def probe_candidates(seq: int, longest: int = 0, batches: Iterable[int] = (1, 2, 4, 8, 16)) -> tuple[list, list]:
    """Sequence lengths: the recommended one, doubled towards the longest example (if longer), halved as
    fallbacks (measured only if the recommended one does not fit). Batch sizes ascending."""
    seqs = [seq]
    while longest > seqs[-1] and seqs[-1] < MAX_RECOMMENDED_SEQ:
        seqs.append(min(seqs[-1] * 2, _round_up(longest, 64), MAX_RECOMMENDED_SEQ))
    fallback = seq // 2
    while fallback >= 64:
        seqs.append(fallback)
        fallback //= 2
    return seqs, sorted(set(batches))


def run_probe(runner: Callable[[int, int], tuple], seqs: list[int], batches: list[int], budget: int,
              predict: Optional[Callable[[int, int], int]] = None, time_budget: float = PROBE_SECONDS,
              emit: Emit = lambda e: None, stop: Optional[threading.Event] = None,
              recommended_seq: Optional[int] = None) -> list[ProbeRow]:
    """Measure each (batch, seq) from small to large, skipping what cannot fit or finish in time.

    A candidate is ok when its measured peak plus the runtime keeps ``MEMORY_MARGIN`` of the
    budget free. Once one exceeds it, every candidate at least as large in both dimensions is
    skipped; so is any whose estimate (scaled by how the measured peaks compared with it so far)
    would exceed it, or whose time at the measured rate would overrun the time budget. The
    shorter fallback sequences run only if nothing at the recommended length fits.
    """
    limit = (1 - MEMORY_MARGIN) * budget
    rows: list[ProbeRow] = []
    exceeded: list[tuple[int, int]] = []
    ratios: list[float] = []  # measured / estimated, so far
    rate = 0.0
    started = time.perf_counter()
    recommended_seq = recommended_seq or seqs[0]
    for seq in seqs:
        if seq < recommended_seq and not _needs_shorter(rows, recommended_seq):
            break  # the recommended length fits (or was not measured for time): no fallbacks
        for batch in batches:
            row = ProbeRow(batch, seq)
            row.estimated = predict(batch, seq) if predict else 0
            spent = time.perf_counter() - started
            if stop is not None and stop.is_set():
                row.note = "skipped: stop requested"
            elif any(batch >= b and seq >= s for b, s in exceeded):
                row.note = "skipped: a smaller setting already went over the memory limit"
                row.over_memory = True
            elif row.estimated and row.estimated * max(ratios, default=1.0) > limit:
                predicted = row.estimated * max(ratios, default=1.0)
                row.note = f"skipped: predicted {gb(predicted)}, over the {gb(limit)} limit"
                row.over_memory = True
                exceeded.append((batch, seq))
            elif rate and spent + 2 * batch * seq / rate > time_budget:
                row.note = (f"skipped: about {2 * batch * seq / rate:.0f} s at the measured rate, past the "
                            f"probe's {time_budget:.0f} s budget")
            else:
                peak, tps, secs = runner(batch, seq)
                row.ran, row.peak_memory, row.tokens_per_second, row.seconds = True, peak, tps, round(secs, 2)
                used = peak + RUNTIME_BYTES
                row.ok = used <= limit
                row.note = f"uses {used / budget:.0%} of {gb(budget)}"
                if not row.ok:
                    row.note += f", over the {1 - MEMORY_MARGIN:.0%} limit"
                    row.over_memory = True
                    exceeded.append((batch, seq))
                if row.estimated:
                    ratios.append(used / row.estimated)
                rate = tps
            rows.append(row)
            emit(row.event())
    return rows


def _needs_shorter(rows: list[ProbeRow], seq: int) -> bool:
    """Nothing at the recommended length fits, and memory (not time) is why."""
    return (not any(r.ok and r.max_seq_length >= seq for r in rows)
            and any(r.over_memory and r.max_seq_length == seq for r in rows))


def pick_probe(rows: list[ProbeRow], seq: int) -> Optional[ProbeRow]:
    """The fastest setting at the longest sequence that fits, from the recommended length up; shorter
    lengths only when the recommended one went over the memory limit."""
    ok = [r for r in rows if r.ok and r.max_seq_length >= seq]
    if _needs_shorter(rows, seq):
        ok = [r for r in rows if r.ok]
    if not ok:
        return None
    longest = max(r.max_seq_length for r in ok)
    return max((r for r in ok if r.max_seq_length == longest), key=lambda r: r.tokens_per_second)


def apply_probe(rec: Recommendation, rows: list[ProbeRow], train_tokens: int = 0) -> Optional[ProbeRow]:
    cfg = rec.config
    best = pick_probe(rows, cfg["max_seq_length"])
    if best is None:
        rec.reasons.append(f"The probe measured no setting at {cfg['max_seq_length']} tokens that keeps "
                           f"{MEMORY_MARGIN:.0%} of memory free; the estimate-based values stay.")
        return None
    effective = cfg["batch_size"] * cfg["grad_accumulation_steps"]
    cfg["batch_size"] = best.batch_size
    cfg["grad_accumulation_steps"] = max(1, round(effective / best.batch_size))
    cfg["max_seq_length"] = best.max_seq_length
    rec.source = "probe"
    why = (f"The probe measured batch {best.batch_size} x {best.max_seq_length} tokens as the fastest setting that "
           f"keeps {MEMORY_MARGIN:.0%} of memory free ({best.tokens_per_second:,.0f} tokens/s, peak "
           f"{gb(best.peak_memory)}); accumulation {cfg['grad_accumulation_steps']} keeps the effective batch near "
           f"{effective}.")
    if train_tokens:
        why += (f" At that rate an epoch of {train_tokens:,} tokens takes at most about "
                f"{minutes(train_tokens / best.tokens_per_second)}.")
    rec.reasons.append(why)
    return best


# ------------------------------------------------------------------- the run


def run_preflight(raw: dict, out: str | os.PathLike = "checkpoints", probe: bool = False, emit: Emit = lambda e: None,
                  stop: Optional[threading.Event] = None, hardware: Optional[Hardware] = None,
                  device: Optional[DeviceInfo] = None, matmul_seconds: float = 1.0, compare_blas: bool = True,
                  probe_seconds: float = PROBE_SECONDS, probe_shapes: Optional[tuple[list, list]] = None,
                  ) -> tuple[dict, dict, list[P.Check]]:
    """Run every check (streamed through emit), recommend, optionally probe, write the two files.

    Returns (report, recommended config, checks).
    """
    started = time.perf_counter()
    raw = dict(raw or {})
    checks: list[P.Check] = []

    def add(records: list[P.Check]) -> None:
        for record in records:
            checks.append(record)
            emit(record)

    def guarded(category: str, fn, *args, default=None):
        """A check that crashes is a bug: it becomes a failed check and an error with its traceback."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - shown whole, never swallowed
            emit(P.Error(message=f"The {category} check crashed: {type(e).__name__}: {e}",
                         traceback=traceback.format_exc(), code="preflight"))
            add([check(category, "crashed", "fail", f"The check crashed: {type(e).__name__}: {e}",
                       "Report this with the traceback from the engine's error event.")])
            return default

    hw = hardware or Hardware.detect()  # before the model loads: what the run will have
    cfg, config_checks = check_config(raw)
    add(config_checks)
    add(check_python())
    add(guarded("packages", check_packages, default=[]))
    backend = device.backend if device else device_backend()
    add(check_hardware(hw, backend))

    model_name = resolve_model(cfg["model"])
    model_cfg = read_model_config(model_folder(model_name))
    stored_quant = model_cfg.get("quantization")
    float_dtype = str(model_cfg.get("torch_dtype") or "float32")
    if float_dtype not in DTYPE_BYTES:
        float_dtype = "float32"
    full = cfg["fine_tune_type"] == "full"
    working = working_dtype(cfg["base_dtype"], stored_quant, float_dtype, backend == "cpu", full)
    stored = working_dtype("keep", stored_quant, float_dtype, backend == "cpu")
    dev = device or guarded("device", measure_device, working, stored, stored_quant, matmul_seconds, compare_blas,
                            default=DeviceInfo(backend=backend, working=working))
    add(check_device(dev, hw))

    data_checks, files = check_data_files(cfg)
    add(data_checks)
    model_checks, loaded = guarded("model", check_model, cfg, model_name, default=([], None))
    add(model_checks)
    model, tokenizer, info = loaded if loaded else (None, None, None)
    lengths: dict = {}
    if tokenizer is not None:
        length_checks, lengths = guarded("data", check_token_lengths, cfg, files, tokenizer, default=([], {}))
        add(length_checks)
    elif files:
        add([check("data", "tokens", "warn", "Token lengths are unknown: the model's tokenizer did not load.",
                   "Fix the model check first.")])
    train_count = len(files["train"].samples) if "train" in files else 0
    if info is not None:
        working = working_dtype(cfg["base_dtype"], info.quantization, info.float_dtype, dev.on_cpu, full)
    add(guarded("disk", check_disk, cfg, Path(out), info, train_count, None, working, default=[]))
    longest = longest_example(lengths)
    add(guarded("memory", check_memory, cfg, info, working, hw, longest, default=[]))
    add(guarded("training", check_fact_exposure, cfg, files, default=[]))

    rec = recommend(cfg, raw, hw, dev, info, model_name, lengths, train_count)
    probe_report = None
    if probe:
        probe_report = _probe(rec, model, info, hw, dev, lengths, emit, stop, probe_seconds, probe_shapes)
    model = loaded = None  # the probe was its last user
    picked = (probe_report or {}).get("picked") or {}
    add(guarded("time", check_time, cfg, info, dev, working, lengths, picked.get("tokens_per_second", 0.0),
                default=[]))

    recommended = rec.config
    try:
        C.validate(recommended)
    except C.ConfigError as e:  # a bug in recommend(): say so rather than write a config that will not load
        raise AssertionError(f"preflight recommended an invalid config: {e}") from None
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("pass", "warn", "fail")}
    report = {
        "version": REPORT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.perf_counter() - started, 2),
        "ok": counts["fail"] == 0,
        "summary": counts,
        "config": _jsonable(cfg),
        "model": model_name,
        "hardware": _jsonable(dataclasses.asdict(hw)),
        "device": _jsonable(dataclasses.asdict(dev)),
        "checks": [_jsonable(dataclasses.asdict(c)) for c in checks],
        "recommendation": rec.to_dict(),
        "probe": probe_report,
    }
    report_path, recommended_path = _write(Path(out), report, recommended, emit)
    emit(P.PreflightDone(report=report, recommended=_jsonable(recommended), report_path=report_path,
                         recommended_path=recommended_path))
    return report, recommended, checks


def _probe(rec: Recommendation, model, info: Optional[ModelInfo], hw: Hardware, dev: DeviceInfo, lengths: dict,
           emit: Emit, stop: Optional[threading.Event], seconds: float, shapes: Optional[tuple]) -> dict:
    if model is None or info is None:
        rec.reasons.append("The probe did not run: the model did not load.")
        return {"ran": False, "reason": "the model did not load", "rows": []}
    cfg = rec.config
    tic = time.perf_counter()
    emit(P.State(state="preflight", detail="probe: preparing the model as the run would train it"))
    working = set_base_dtype(model, cfg["base_dtype"], cfg["fine_tune_type"] == "full")
    mx.random.seed(cfg["seed"])
    apply_fine_tune_type(model, cfg)
    mx.eval(model.parameters())
    runner = ProbeRunner(model, cfg, info.vocab)
    longest = longest_example(lengths)
    seqs, batches = shapes or probe_candidates(cfg["max_seq_length"], longest)

    def predict(batch: int, seq: int) -> int:
        return estimate_memory(info, cfg, working, batch, seq)["total"]

    def measured(batch: int, seq: int):
        emit(P.State(state="preflight", detail=f"probe: batch {batch} x {seq} tokens"))
        return runner(batch, seq)

    rows = run_probe(measured, seqs, batches, hw.memory_budget, predict, seconds, emit, stop,
                     recommended_seq=cfg["max_seq_length"])
    train_tokens = sum(min(n, cfg["max_seq_length"]) for n in lengths.get("train", []))
    best = apply_probe(rec, rows, train_tokens)
    if best is not None:
        rec.estimate = estimate_memory(info, cfg, working)
    return {
        "ran": True, "seconds": round(time.perf_counter() - tic, 2), "time_budget": seconds,
        "budget": hw.memory_budget, "limit": int((1 - MEMORY_MARGIN) * hw.memory_budget), "working": working,
        "method": ("real LoRA updates (forward, backward, optimizer step, evaluated) on synthetic batches with loss "
                   "on every position; one warm-up update per shape, then timed updates; peak from "
                   "mx.get_peak_memory after mx.reset_peak_memory, plus the runtime allowance"),
        "rows": [_jsonable(dataclasses.asdict(r)) for r in rows],
        "picked": _jsonable(dataclasses.asdict(best)) if best else None,
    }


def _write(out: Path, report: dict, recommended: dict, emit: Emit) -> tuple[str, str]:
    report_path, recommended_path = out / REPORT_FILE, out / RECOMMENDED_FILE
    try:
        C.atomic_write_text(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        C.atomic_write_text(recommended_path, json.dumps(_jsonable(recommended), indent=2) + "\n")
    except OSError as e:
        emit(P.Error(message=f"Could not write the preflight files into {out} ({e.strerror}); "
                             f"pass --out with a folder you can write to.", code="io"))
        return "", ""
    return str(report_path), str(recommended_path)


@handles(P.Preflight)
def handle_preflight(ctx: Context, cmd: P.Preflight) -> None:
    ctx.emit(P.State(state="preflight", detail="checking"))
    run_preflight(cmd.config, cmd.out or "checkpoints", probe=cmd.probe, emit=ctx.emit, stop=ctx.stop_requested,
                  probe_seconds=cmd.probe_seconds)
    mx.clear_cache()  # the model is gone; give its buffers back


def _main(argv: list[str]) -> int:
    """``python -m engine.preflight matmul DTYPE SECONDS``: one rate as JSON (the BLAS comparison's child)."""
    if len(argv) == 3 and argv[0] == "matmul":
        rate = matmul_rate(argv[1], float(argv[2]))
        print(json.dumps({"blas": loaded_blas(), argv[1]: round(rate, 2)}))
        return 0
    print("usage: python -m engine.preflight matmul DTYPE SECONDS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

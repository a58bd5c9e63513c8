"""The machine and MLX's device: memory, cores, chip, backend, BLAS and measured matmul rates."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import mlx.core as mx
import psutil

from farense_core.blas import loaded_blas

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
    from farense_core.blas import openblas_path

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
        done = subprocess.run([sys.executable, "-m", "engine.preflight.run", "matmul", "float32", str(seconds)],
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



"""Which BLAS MLX uses on Linux, and where Debian's OpenBLAS is. Standard library only: the launcher
(UI side) decides LD_PRELOAD with ``openblas_path``, the engine reports what it got with ``loaded_blas``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

DEBIAN_OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"


def openblas_path() -> Optional[str]:
    """Debian's OpenBLAS, if installed (Linux only). MLX's Linux wheel links a reference BLAS that
    runs float32 matmuls ~40x slower; loading OpenBLAS first makes MLX use it instead."""
    if not sys.platform.startswith("linux"):
        return None
    override = os.environ.get("FARENSE_OPENBLAS")
    if override is not None:
        return override if override and Path(override).exists() else None
    return DEBIAN_OPENBLAS if Path(DEBIAN_OPENBLAS).exists() else None


def loaded_blas() -> str:
    """Which BLAS serves MLX: accelerate (macOS), openblas (a system OpenBLAS mapped into the
    process, e.g. through LD_PRELOAD) or reference (the wheel's bundled reference BLAS).
    NumPy's own bundled OpenBLAS (scipy_openblas) does not serve MLX and is not counted."""
    if sys.platform == "darwin":
        return "accelerate"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        name = os.path.basename(path)
        if "scipy_openblas" in name or "numpy" in path:
            continue
        if "openblas" in path:
            return "openblas"
    return "reference"

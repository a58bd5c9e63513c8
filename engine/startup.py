"""What ``python -m engine`` sets up before MLX starts (this module imports nothing from MLX): the CUDA graph
budget. MLX's CUDA backend records work into CUDA graphs and lets a graph's temporaries go only when the whole
graph has run; it ends a graph once the arrays it touches pass ``MLX_MAX_MB_PER_BUFFER``. Smaller graphs let a
step's temporaries go sooner. Measured on an H200 (bench/gpu_dequant.sh, stage graphs; Mistral-7B shape, 4-bit,
batch 4 x 512): one LoRA step peaked at 22.5 GB with MLX's budget, 15.4 GB with 200 MB and 14.3 GB with 50 MB,
at the same speed (with dequantized matmuls: 25.7, 17.3 and 15.2 GB, and 200 MB the fastest).
"""

from __future__ import annotations

from typing import MutableMapping

GRAPH_MB = 200


def apply(environ: MutableMapping[str, str], platform: str) -> None:
    """Set the graph budget where MLX may run on CUDA (Linux), unless the user set it."""
    if platform.startswith("linux"):
        environ.setdefault("MLX_MAX_MB_PER_BUFFER", str(GRAPH_MB))

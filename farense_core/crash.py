"""Why an engine died, in one sentence, and how to resume it: read from its exit code and its last
stderr lines. Pure Python: the Train tab and headless ``train`` explain a death the same way.

What is recognised: a signal (SIGKILL is usually the system reclaiming memory), an out-of-memory
error from MLX (``[metal::malloc]``, ``Resource limit exceeded``, ``std::bad_alloc``, CUDA's
``out of memory``), and macOS's GPU watchdog abort (``kIOGPUCommandBufferCallbackError...``),
which Metal raises when a command buffer is killed under memory pressure.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Optional, Sequence

OUT_OF_MEMORY_MARKS = ("[metal::malloc]", "resource limit exceeded", "std::bad_alloc", "memoryerror",
                       "out of memory", "cudaerrormemoryallocation", "insufficient memory")
GPU_WATCHDOG_MARK = "kiogpucommandbuffercallbackerror"


@dataclass(frozen=True)
class ExitCause:
    kind: str        # "out_of_memory", "gpu_watchdog", "killed", "signal" or "exit"
    sentence: str    # what happened, one sentence
    code: Optional[int]

    @property
    def out_of_memory(self) -> bool:
        """A death a smaller batch may avoid (a SIGKILL on a training machine is most often the
        system's memory killer)."""
        return self.kind in ("out_of_memory", "gpu_watchdog", "killed")


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def explain_exit(code: Optional[int], stderr: Sequence[str]) -> ExitCause:
    """The cause of an engine's death from its exit code (negative: the signal that ended it) and
    its last stderr lines."""
    text = "\n".join(stderr).lower()
    if GPU_WATCHDOG_MARK in text:
        return ExitCause("gpu_watchdog", "macOS aborted the GPU's work (kIOGPUCommandBufferCallbackError): the Mac "
                                         "ran short of memory for the GPU, so training stopped.", code)
    if any(mark in text for mark in OUT_OF_MEMORY_MARKS):
        return ExitCause("out_of_memory", "The engine ran out of memory: the batch did not fit.", code)
    if code is not None and code < 0:
        name = signal_name(-code)
        if -code == signal.SIGKILL:
            return ExitCause("killed", "The engine was killed (SIGKILL), most often by the system when memory runs "
                                       "out, or by a force quit.", code)
        return ExitCause("signal", f"The engine was ended by {name}.", code)
    if code is not None and code >= 128 + 1 and code - 128 in (signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV):
        return explain_exit(-(code - 128), stderr)  # a shell in between reports signals as 128 + N
    return ExitCause("exit", f"The engine exited unexpectedly (exit code {code}).", code)


def crash_report(code: Optional[int], stderr: Sequence[str]) -> str:
    """The cause's sentence, then the last stderr lines."""
    tail = "\n".join(stderr) or "(no output on stderr)"
    return f"{explain_exit(code, stderr).sentence} Its last output:\n{tail}"


def smaller_batch(cfg: dict) -> Optional[dict]:
    """The same run with half the batch and twice the accumulation: the same updates on the same
    examples (see batching.bucket_updates) in less memory; None when the batch is already 1 or
    does not halve."""
    batch = int(cfg.get("batch_size", 1))
    if batch < 2 or batch % 2:
        return None
    return {**cfg, "batch_size": batch // 2,
            "grad_accumulation_steps": int(cfg.get("grad_accumulation_steps", 1)) * 2}


def retry_config(cfg: dict, cause: ExitCause) -> tuple[dict, str]:
    """The config an automatic resume uses after ``cause``, and a line saying what changed."""
    if cause.out_of_memory:
        smaller = smaller_batch(cfg)
        if smaller is not None:
            return smaller, (f"resuming with batch_size {smaller['batch_size']} x grad_accumulation_steps "
                             f"{smaller['grad_accumulation_steps']} (the same updates in less memory)")
    return cfg, "resuming with the same settings"

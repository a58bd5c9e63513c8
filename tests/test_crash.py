"""An engine's death explained from its exit code and the text it printed: what the Train tab and
headless train say, and what an automatic resume changes."""

from __future__ import annotations

import signal

import pytest

from farense_core.crash import crash_report, explain_exit, retry_config, smaller_batch

# stderr lines as MLX, macOS and Python print them
METAL_OOM = ["libc++abi: terminating due to uncaught exception of type std::runtime_error: "
             "[metal::malloc] Attempting to allocate 9663676416 bytes which is greater than the maximum allowed "
             "buffer size of 8589934592 bytes."]
RESOURCE_LIMIT = ["RuntimeError: [METAL] Command buffer execution failed: Insufficient Memory "
                  "(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)"]
WATCHDOG = ["libc++abi: terminating due to uncaught exception of type std::runtime_error: [METAL] Command buffer "
            "execution failed: Caused GPU Timeout Error (00000002:kIOGPUCommandBufferCallbackErrorTimeout)"]
CUDA_OOM = ["RuntimeError: [cuda::malloc] out of memory"]
BAD_ALLOC = ["terminate called after throwing an instance of 'std::bad_alloc'", "  what():  std::bad_alloc"]
TRACEBACK = ["Traceback (most recent call last):", '  File "engine/trainer.py", line 3', "KeyError: 'x'"]


@pytest.mark.parametrize("code, stderr, kind, says", [
    (-6, METAL_OOM, "out_of_memory", "The engine ran out of memory"),
    (-6, BAD_ALLOC, "out_of_memory", "The engine ran out of memory"),
    (1, CUDA_OOM, "out_of_memory", "The engine ran out of memory"),
    (-6, WATCHDOG, "gpu_watchdog", "macOS aborted the GPU's work (kIOGPUCommandBufferCallbackError)"),
    (-6, RESOURCE_LIMIT, "gpu_watchdog", "macOS aborted the GPU's work"),
    (-9, [], "killed", "The engine was killed (SIGKILL), most often by the system when memory runs out"),
    (137, [], "killed", "The engine was killed (SIGKILL)"),
    (-11, [], "signal", "The engine was ended by SIGSEGV."),
    (-15, [], "signal", "The engine was ended by SIGTERM."),
    (1, TRACEBACK, "exit", "The engine exited unexpectedly (exit code 1)."),
    (None, [], "exit", "The engine exited unexpectedly (exit code None)."),
])
def test_a_death_is_named_from_its_code_and_text(code, stderr, kind, says):
    cause = explain_exit(code, stderr)
    assert cause.kind == kind and cause.sentence.startswith(says)
    assert cause.out_of_memory == (kind in ("out_of_memory", "gpu_watchdog", "killed"))
    report = crash_report(code, stderr)
    assert report.startswith(cause.sentence) and report.endswith("\n".join(stderr) or "(no output on stderr)")


def test_a_signal_number_without_a_name_is_still_said():
    assert explain_exit(-77, []).sentence == "The engine was ended by signal 77."
    assert signal.SIGKILL == 9  # what "killed" is checked against


def test_after_running_out_of_memory_the_same_updates_are_split_finer():
    cfg = {"batch_size": 8, "grad_accumulation_steps": 2, "learning_rate": 1e-4}
    oom = explain_exit(-9, [])
    config, note = retry_config(cfg, oom)
    assert config == {"batch_size": 4, "grad_accumulation_steps": 4, "learning_rate": 1e-4}
    assert note == "resuming with batch_size 4 x grad_accumulation_steps 4 (the same updates in less memory)"
    assert cfg["batch_size"] == 8  # the caller's config is not changed
    assert retry_config(cfg, explain_exit(1, TRACEBACK)) == (cfg, "resuming with the same settings")
    assert smaller_batch({"batch_size": 1}) is None and smaller_batch({"batch_size": 3}) is None
    assert retry_config({"batch_size": 1}, oom) == ({"batch_size": 1}, "resuming with the same settings")

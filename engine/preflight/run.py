"""The preflight run: every check in order, streamed, the recommendation, the probe, the files."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Optional

import mlx.core as mx

from farense_core import config as C
from farense_core import protocol as P
from farense_core.blas import loaded_blas
from farense_core.models import resolve_model
from farense_core.rundir import RUNS_FOLDER

from ..server import Context, handles
from .checks import (
    check,
    check_config,
    check_data_files,
    check_device,
    check_disk,
    check_fact_exposure,
    check_warmup,
    check_hardware,
    check_memory,
    check_model,
    check_packages,
    check_python,
    check_time,
    check_token_lengths,
    model_folder,
    read_model_config,
)
from .estimate import (
    DTYPE_BYTES,
    PROBE_SECONDS,
    RECOMMENDED_FILE,
    REPORT_FILE,
    REPORT_VERSION,
    Emit,
    _jsonable,
    longest_example,
    working_dtype,
)
from .hardware import DeviceInfo, Hardware, device_backend, matmul_rate, measure_device
from .probe import _probe
from .recommend import recommend

# ------------------------------------------------------------------- the run


def run_preflight(raw: dict, out: str | os.PathLike = RUNS_FOLDER, probe: bool = False, emit: Emit = lambda e: None,
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
    add(guarded("training", check_warmup, cfg, files, default=[]))

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
    run_preflight(cmd.config, cmd.out or RUNS_FOLDER, probe=cmd.probe, emit=ctx.emit, stop=ctx.stop_requested,
                  probe_seconds=cmd.probe_seconds)
    mx.clear_cache()  # the model is gone; give its buffers back


def _main(argv: list[str]) -> int:
    """``python -m engine.preflight.run matmul DTYPE SECONDS``: one rate as JSON (the BLAS comparison's child)."""
    if len(argv) == 3 and argv[0] == "matmul":
        rate = matmul_rate(argv[1], float(argv[2]))
        print(json.dumps({"blas": loaded_blas(), argv[1]: round(rate, 2)}))
        return 0
    print("usage: python -m engine.preflight.run matmul DTYPE SECONDS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


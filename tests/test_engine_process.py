"""The engine as the UI runs it: a subprocess speaking JSON lines."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from farense_core import protocol as P
from enginetools import EngineRun, adapter_arrays, assert_bit_identical, base_config

pytestmark = pytest.mark.slow  # engine subprocesses


def test_hello_first_and_stdout_is_only_protocol(tiny_model, tiny_data, tmp_path):
    cfg = base_config(tiny_model, tiny_data, iters=3)
    from farense_tui.engine_client import engine_command, engine_env

    commands = "\n".join([P.Train(config=cfg, run_dir=str(tmp_path / "run")).to_line(), "garbage",
                          P.Shutdown().to_line()]) + "\n"
    proc = subprocess.run(engine_command(), input=commands, capture_output=True, text=True, env=engine_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    events = [P.parse_event(line) for line in lines]  # every stdout line is protocol
    hello = events[0]
    assert isinstance(hello, P.Hello) and hello.protocol == P.PROTOCOL_VERSION
    assert hello.mlx_version and hello.mlx_lm_version and hello.device and hello.blas in ("openblas", "reference", "accelerate")
    # stdin closed (and shutdown sent) while training: the run stops with a checkpoint, never lost
    done = [e for e in events if isinstance(e, P.Done)]
    # (the reader has queued the shutdown long before the model has loaded)
    assert len(done) == 1 and done[0].status == "stopped"
    assert (tmp_path / "run" / "checkpoints").is_dir()
    assert any(isinstance(e, P.Error) and e.code == "protocol" for e in events)  # the garbage line
    # the run folder's stream says what produced it: this engine's hello comes first
    written = [P.parse_event(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert written[0] == hello and isinstance(written[1], P.Config)


HOSTILE_LINES = [
    b"[" * 100_000 + b"\n",  # nested deeper than the JSON reader goes
    b'{"type": "chat", "id": "x", "message": "hi", "max_tokens": ' + b"9" * 5000 + b"}\n",  # a 5000-digit number
    b'{"type": "pause"\xff\xfe}\n',  # not UTF-8
    b'{"type": "train", "config": "' + b"x" * (P.MAX_LINE_BYTES + 10) + b'"}\n',  # longer than any command
    b"\x00\x01\x02 binary\n",
    b'{"type": "train", "config": {}, "run_dir": 7}\n',  # a field of the wrong type
]


def test_the_reader_survives_any_line_and_says_why(tmp_path):
    eng = EngineRun()
    try:
        eng.until(lambda e: isinstance(e, P.State) and e.state == "idle")
        raw = eng.engine.proc.stdin.buffer
        for line in HOSTILE_LINES:
            raw.write(line)
        raw.flush()
        errors = []
        eng.until(lambda e: isinstance(e, P.Error) and errors.append(e) is None and len(errors) == len(HOSTILE_LINES),
                  timeout=60)
        assert all(e.code == "protocol" and e.message.startswith("Bad command:") for e in errors)
        assert "nests too deeply" in errors[0].message and "longer than" in errors[3].message
        assert "not UTF-8" in errors[2].message and "must be str" in errors[5].message
        # still listening: a command that makes no sense while idle gets a warning, a real one its answer
        eng.send(P.Pause())
        warning = eng.until(lambda e: isinstance(e, P.Warning))
        assert (warning.code, warning.message) == ("idle", "Nothing is running to pause: the engine is idle.")
        finished = eng.request(P.ChatReset())[-1]
        assert finished.command == "chat_reset"
    finally:
        eng.close(timeout=30)
    assert eng.engine.returncode == 0


def test_sigterm_while_idle_ends_the_engine():
    eng = EngineRun()
    try:
        eng.until(lambda e: isinstance(e, P.State) and e.state == "idle")
        os.kill(eng.engine.proc.pid, signal.SIGTERM)
        assert eng.engine.wait(30) == 0
    finally:
        eng.close(timeout=5)


def test_pause_resume_stop(tiny_model, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    eng = EngineRun()
    try:
        eng.send(P.Train(config=base_config(tiny_model, tiny_data, iters=400, save_every=1000), run_dir=str(run_dir)))
        eng.until(lambda e: isinstance(e, P.Step))
        eng.send(P.Pause())
        eng.until(lambda e: isinstance(e, P.State) and e.state == "paused")
        paused_at = max(e.step for e in eng.events if isinstance(e, P.Step))
        time.sleep(0.5)  # nothing moves while paused
        assert eng.engine.proc.poll() is None
        eng.send(P.Resume())
        eng.until(lambda e: isinstance(e, P.Step) and e.step > paused_at + 1)
        eng.send(P.Stop())
        done = eng.until(lambda e: isinstance(e, P.Done))
        assert done.status == "stopped"
        ckpt = [e for e in eng.events if isinstance(e, P.Checkpoint)][-1]
        assert ckpt.reason == "stop" and ckpt.step == done.summary["updates"] < 400
        steps_after_pause = [e for e in eng.events if isinstance(e, P.Step) and e.step > paused_at]
        assert steps_after_pause  # it really resumed
    finally:
        eng.close()


def test_every_job_ends_with_one_finished_event(tiny_model, tiny_data, tmp_path):
    """A job's end is explicit: ok, failed with the error's sentence, or busy when another job runs."""
    eng = EngineRun()
    try:
        failed = eng.request(P.ChatReset())  # no chat model loaded
        errors = [e for e in failed if isinstance(e, P.Error)]
        assert [e.type for e in failed].count("finished") == 1 and failed[-1].command == "chat_reset"
        assert failed[-1].status == "failed" and failed[-1].message == errors[0].message
        eng.send(P.Train(config=base_config(tiny_model, tiny_data, iters=400, save_every=1000), run_dir=str(tmp_path / "run")))
        eng.until(lambda e: isinstance(e, P.Step))
        busy = eng.request(P.Preflight(config={}))  # refused at once: training runs
        assert busy[-1].status == "busy" and "training" in busy[-1].message
        assert not any(isinstance(e, P.Check) for e in busy)
        eng.send(P.Stop())
        ended = eng.until(lambda e: isinstance(e, P.Finished))
        assert (ended.command, ended.status) == ("train", "ok")
        done = [e for e in eng.events if isinstance(e, P.Done)]
        assert len(done) == 1 and eng.events.index(done[0]) < eng.events.index(ended)  # the result, then the end
    finally:
        eng.close()


def test_sigterm_behaves_like_stop(tiny_model, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    eng = EngineRun()
    try:
        eng.send(P.Train(config=base_config(tiny_model, tiny_data, iters=400, save_every=1000), run_dir=str(run_dir)))
        eng.until(lambda e: isinstance(e, P.Step) and e.step >= 2)
        os.kill(eng.engine.proc.pid, signal.SIGTERM)
        done = eng.until(lambda e: isinstance(e, P.Done))
        assert done.status == "stopped"
        assert (run_dir / "checkpoints" / f"step_{done.summary['updates']:06d}").is_dir()
    finally:
        eng.close()


def test_sigkill_mid_run_then_resume_is_bit_identical(tiny_model, tiny_data, tmp_path):
    cfg = base_config(tiny_model, tiny_data, iters=40, save_every=5,
                      lora_parameters={"rank": 4, "scale": 10.0, "dropout": 0.1})
    # uninterrupted, through the engine process (same BLAS as the killed run)
    eng = EngineRun()
    try:
        eng.send(P.Train(config=cfg, run_dir=str(tmp_path / "full")))
        assert eng.until(lambda e: isinstance(e, P.Done)).status == "completed"
    finally:
        eng.close()

    killed = tmp_path / "killed"
    eng = EngineRun()
    eng.send(P.Train(config=cfg, run_dir=str(killed)))
    eng.until(lambda e: isinstance(e, P.Checkpoint) and e.step >= 10)
    eng.engine.proc.kill()  # SIGKILL: no chance to save anything
    eng.engine.proc.wait()
    eng.close()
    assert not (killed / "final").exists()
    lines = (killed / "events.jsonl").read_text().splitlines()
    assert not any(json.loads(line)["type"] == "done" for line in lines)

    r = subprocess.run([sys.executable, "-m", "farense_tui.cli", "train", "--run-dir", str(killed), "--resume"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "resuming from" in r.stdout
    assert_bit_identical(adapter_arrays(tmp_path / "full" / "final" / "adapters.safetensors"),
                         adapter_arrays(killed / "final" / "adapters.safetensors"))
    assert_bit_identical(adapter_arrays(tmp_path / "full" / "adapters" / "adapters.safetensors"),
                         adapter_arrays(killed / "adapters" / "adapters.safetensors"))


def test_headless_train_cli_plain_output_and_exit_codes(tiny_model, tiny_data, tmp_path):
    import yaml

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(base_config(tiny_model, tiny_data, iters=4, steps_per_report=2)))
    r = subprocess.run([sys.executable, "-m", "farense_tui.cli", "train", "--config", str(cfg_file),
                        "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "update 2/4" in r.stdout and "update 4/4" in r.stdout and "best adapter (by " in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nbatch_size: 0\n")
    r = subprocess.run([sys.executable, "-m", "farense_tui.cli", "train", "--config", str(bad),
                        "--run-dir", str(tmp_path / "run2")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "farense-tui: batch_size is 0, but it must be between 1 and 4096."
    assert not (tmp_path / "run2").exists()


def test_prints_from_libraries_never_reach_the_protocol_stream():
    """After take_protocol_stream, print() and raw writes to fd 1 land on stderr."""
    script = (
        "import os, sys\n"
        "from engine.server import take_protocol_stream\n"
        "out = take_protocol_stream()\n"
        "print('a print from mlx-lm')\n"
        "os.write(1, b'a write from C code\\n')\n"
        "out.write('{\"type\":\"log\",\"message\":\"ok\"}\\n'); out.flush()\n"
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.stdout == '{"type":"log","message":"ok"}\n'
    assert "a print from mlx-lm" in p.stderr and "a write from C code" in p.stderr


def test_launcher_preloads_openblas_when_installed(tmp_path, monkeypatch):
    from farense_core import blas
    from farense_tui import engine_client

    fake = tmp_path / "libblas.so.3"
    fake.write_bytes(b"")
    monkeypatch.setattr(blas.sys, "platform", "linux")
    monkeypatch.setenv("FARENSE_OPENBLAS", str(fake))
    env = engine_client.engine_env({"LD_PRELOAD": "/other.so"})
    assert env["LD_PRELOAD"].split(":") == [str(fake), "/other.so"]
    monkeypatch.setenv("FARENSE_OPENBLAS", str(tmp_path / "missing.so"))
    assert "LD_PRELOAD" not in engine_client.engine_env({})
    monkeypatch.setattr(blas.sys, "platform", "darwin")
    monkeypatch.delenv("FARENSE_OPENBLAS")
    assert "LD_PRELOAD" not in engine_client.engine_env({})


def test_engine_reports_openblas_when_debian_openblas_is_installed():
    import pytest

    from farense_core.blas import DEBIAN_OPENBLAS

    if not os.path.exists(DEBIAN_OPENBLAS) or not sys.platform.startswith("linux"):
        pytest.skip("Debian's libopenblas0-pthread is not installed")
    eng = EngineRun()
    try:
        assert eng.until(lambda e: e.type == "hello").blas == "openblas"
    finally:
        eng.close()

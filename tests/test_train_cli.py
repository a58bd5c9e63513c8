"""Headless train's command line: settings flags over the YAML, as mlx_lm.lora users expect."""

from __future__ import annotations

import pytest

from farense_core import config as C
from farense_core import protocol as P
from farense_tui.commands import train as cli


class RecordingEngine:
    """Takes the train command and answers it as a run that completed at once."""

    sent: list = []

    def start(self):
        return self

    def request(self, command, on_event=None):
        RecordingEngine.sent.append(command)
        on_event(P.Done(status="completed", summary={"updates": 1}))
        return P.Finished(command="train")

    def close(self, timeout: float = 0.0) -> None:
        pass


def train(*argv: str) -> int:
    RecordingEngine.sent = []
    return cli.run(cli.build_parser().parse_args(list(argv)), make_engine=RecordingEngine, tty=False)


def test_settings_flags_override_the_yaml(tmp_path):
    C.save_yaml({"data": "data", "iters": 1000, "batch_size": 4, "learning_rate": 1e-5}, tmp_path / "c.yaml")
    assert train("--config", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--iters", "20",
                 "--batch-size", "2", "--learning-rate", "2e-4", "--mask-prompt", "--num-layers", "-1",
                 "--lora-parameters", "{rank: 16, scale: 20.0}") == 0
    sent = RecordingEngine.sent[0].config
    assert (sent["iters"], sent["batch_size"], sent["learning_rate"], sent["mask_prompt"], sent["num_layers"]) == (
        20, 2, 2e-4, True, -1)
    assert sent["lora_parameters"] == {"rank": 16, "scale": 20.0} and sent["data"] == "data"  # the rest as in the YAML


def test_flags_alone_start_a_run_from_the_defaults(tmp_path):
    assert train("--run-dir", str(tmp_path / "run"), "--data", "mine", "--iters", "5") == 0
    assert RecordingEngine.sent[0].config == {"data": "mine", "iters": 5}


def test_a_resume_takes_the_run_s_config_with_the_flags_over_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    C.save_yaml({"data": "data", "iters": 100, "batch_size": 4}, run / "config.yaml")
    (run / "events.jsonl").write_text("")
    assert train("--run-dir", str(run), "--resume", "--iters", "200") == 0
    command = RecordingEngine.sent[0]
    assert command.resume and command.config == {"data": "data", "iters": 200, "batch_size": 4}


@pytest.mark.parametrize("argv, said", [
    (["--batch-size", "0"], "farense-tui: batch_size is 0, but it must be between 1 and 4096.\n"),
    (["--learning-rate", "fast"], "farense-tui: learning_rate is 'fast', but it must be a number"),
    (["--lora-parameters", "{rank: 8"], "farense-tui: --lora-parameters {rank: 8 cannot be read; give a value as "
                                        "the config file would"),
    ([], "farense-tui: --config (or settings flags, e.g. --data DIR --iters 100) is needed to start a run"),
])
def test_a_bad_flag_is_one_sentence(tmp_path, capsys, argv, said):
    assert train("--run-dir", str(tmp_path / "run"), *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1 and not RecordingEngine.sent


def test_on_a_terminal_the_reports_stay_in_the_scrollback_above_the_bar(capsys):
    from pathlib import Path

    from farense_tui.runs import read_events

    events, _ = read_events(Path(__file__).resolve().parent / "ui" / "fixtures" / "run_events.jsonl")
    steps = [e for e in events if isinstance(e, P.Step)]
    progress = cli.Progress(tty=True)
    progress.report_every = 10
    progress.start(steps[-1].total_steps)
    for step in steps:
        progress.step(step)
    progress.stop()
    out = capsys.readouterr().out
    reported = [line.split()[1] for line in out.splitlines() if line.startswith("update ")]
    assert reported == ["1/40", "10/40", "20/40", "30/40", "40/40"]

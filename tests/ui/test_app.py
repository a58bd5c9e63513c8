"""Pilot tests of every tab against a fake engine that replays recorded event streams (no mlx)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml
from fake_engine import FakeEngine, FakeFactory, recorded
from rich.text import Text
from ui_helpers import SIZE, wait_for
from textual.widgets import Checkbox, DataTable, Input, Label, ProgressBar, Select, Static, TabbedContent, TabPane

from farense_core import protocol as P
from farense_tui.engine_client import EngineProcess
from farense_core.format import size
from farense_tui.messages import EngineEvent, ReplyProgress, TrainingProgress
from farense_tui.tabs.chat import ChatTab
from farense_tui.tabs.monitor import available_level
from farense_tui.widgets.chat_log import ChatLog, ChatMessage, CompareRow
from farense_tui.widgets.event_log import EventLog
from farense_tui.widgets.gauge import Gauge
from farense_tui.widgets.help_screen import HelpScreen
from farense_tui.widgets.key_footer import KeyFooter
from farense_tui.widgets.metric_plot import MetricPlot
import pytest

pytestmark = pytest.mark.slow  # the app with a fake engine: a Textual app per test, a few seconds each


def text_of(app, selector: str) -> str:
    return str(app.query_one(selector, Static).render())


def log_text(app) -> str:
    """The event log's text, its wrapped lines joined (where a line wraps depends on the log's width)."""
    return re.sub(r"\s+", " ", " ".join(line.text for line in app.query_one(EventLog).lines))


async def start_training(app, pilot, factory) -> FakeEngine:
    await pilot.press("f3", "s")
    await wait_for(pilot, lambda: any(e.role == "train" for e in factory.engines), "the train engine to start")
    return factory.last("train")


async def ask_to_quit(pilot) -> None:
    """ctrl+q while a run trains, until the app asks what to do with the run."""
    await pilot.press("ctrl+q")
    await wait_for(pilot, lambda: getattr(pilot.app.screen, "title_text", "") == "A run is training.", "the question")


# ---------------------------------------------------------------- keys


async def test_function_keys_switch_tabs_even_from_an_input(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        tabs = app.query_one(TabbedContent)
        assert tabs.active == "preflight"
        for key, tab in zip(("f2", "f3", "f4", "f5", "f1"), ("config", "train", "monitor", "chat", "preflight")):
            await pilot.press(key)
            assert tabs.active == tab
        await pilot.press("f5")
        prompt = app.query_one("#prompt", Input)
        prompt.focus()
        await pilot.press("h", "i", "f3")
        assert tabs.active == "train"
        assert prompt.value == "hi"  # the function key did not type into the input


async def test_a_key_s_tab_and_focus_stand_against_an_older_report_of_focus(app_factory):
    """A widget focused from code shows its tab (Textual's), but a report of it that comes after a key has
    moved on (F2 as the app starts, before the first tab reported its button's focus) changes nothing."""
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        tabs = app.query_one(TabbedContent)
        await pilot.press("f2")
        await pilot.pause()
        focused = app.screen.focused
        assert tabs.active == "config" and focused is not None
        tabs.post_message(TabPane.Focused(app.query_one("#preflight", TabPane)))  # the older report
        await pilot.pause(0.1)
        assert tabs.active == "config" and app.screen.focused is focused
        app.query_one("#run").focus()  # a widget of another tab, focused from code, brings its tab
        await pilot.pause(0.1)
        assert tabs.active == "preflight"


async def test_the_tab_labels_show_their_keys_and_the_footer_fits_80_columns(app_factory):
    from textual.widgets import Tab

    app = app_factory()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        labels = [str(t.label) for t in app.query(Tab)]
        assert labels == ["F1 Preflight", "F2 Config", "F3 Train", "F4 Monitor", "F5 Chat"]
        shown = {b.key for _, b, enabled, _ in app.screen.active_bindings.values() if b.show}
        assert "ctrl+q" in shown and not {"f1", "f2", "f3", "f4", "f5"} & shown  # in the labels instead
        for key in ("f1", "f2", "f3", "f4", "f5"):  # the footer's keys all fit, none beneath the palette's
            await pilot.press(key)
            await pilot.pause()
            footer = app.screen.query_one(KeyFooter)
            drawn = [k for _, _, k in footer.spans]
            palette_start = next(start for start, _, k in footer.spans if k.palette)
            assert drawn == list(footer.keys) and footer.scrolled == 0, key
            assert max(end for _, end, k in footer.spans if not k.palette) < palette_start - 1, key


async def test_help_screen_lists_every_key(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3", "question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "the help screen")
        table = app.screen.query_one(DataTable)
        rows = [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
        keys = {r[0] for r in rows}
        assert {"f1", "f2", "f3", "f4", "f5", "^q", "?", "^p", "s", "esc", "⏎"} <= keys
        actions = {r[1] for r in rows}
        assert {"Start", "Pause", "Stop", "Run preflight", "Save YAML", "Open run", "Stop reply", "Compare"} <= actions
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), "the help screen to close")


async def test_command_palette_offers_the_main_actions(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Start training", "Stop training", "Pause training", "Run preflight", "Apply recommended config",
                "Open a run", "Resume a run", "Load config YAML", "Save config YAML", "Stop the reply",
                "Compare base and adapter", "Show keys"} <= titles
        await pilot.press("ctrl+p")
        await pilot.press(*"start training")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: any(e.role == "train" for e in factory.engines), "training from the palette")
        assert app.query_one(TabbedContent).active == "train"
        assert factory.last("train").sent_of(P.Train)


# ---------------------------------------------------------------- preflight


async def test_probe_rows_that_were_skipped_do_not_read_as_not_fitting(app_factory):
    rows = [P.ProbeResult(batch_size=2, max_seq_length=512, peak_memory=3 * 1024**3, tokens_per_second=120.0, ok=True,
                          note="uses 20% of 15.0 GB"),
            P.ProbeResult(batch_size=16, max_seq_length=512, peak_memory=0, tokens_per_second=0.0, ok=False,
                          note="skipped: predicted 14.0 GB, over the 12.8 GB limit", measured=False, over_memory=True),
            P.ProbeResult(batch_size=8, max_seq_length=512, peak_memory=0, tokens_per_second=0.0, ok=False,
                          note="skipped: about 300 s at the measured rate, past the probe's 60 s budget",
                          measured=False)]
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        for row in rows:
            app.preflight_tab.post_message(EngineEvent("preflight", row))
        table = app.query_one("#probes", DataTable)
        await wait_for(pilot, lambda: table.row_count == 3, "the probe rows")
        cells = [[str(c) for c in table.get_row_at(i)] for i in range(3)]
        assert [c[4] for c in cells] == ["yes", "no (predicted)", "not run"]
        assert cells[2][2:4] == ["-", "-"]  # no figures for what was not measured


async def test_preflight_fills_the_tables_and_applies_the_recommendation(app_factory, factory):
    stream = recorded("preflight_events.jsonl")
    checks_sent = [e for e in stream if isinstance(e, P.Check)]
    report = next(e for e in stream if isinstance(e, P.PreflightDone)).report
    recommended = report["recommendation"]["config"]
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1", "r")
        checks = app.query_one("#checks", DataTable)
        await wait_for(pilot, lambda: app.preflight_tab.recommended is not None, "preflight_done")
        sent = factory.last("preflight").sent_of(P.Preflight)
        assert sent and sent[0].out == "checkpoints" and sent[0].probe is False
        assert sent[0].config["model"] == "models/tiny-llama"  # the Config tab's model
        assert checks.row_count == len(checks_sent)
        statuses = [checks.get_row_at(i)[0] for i in range(checks.row_count)]
        assert [s.plain for s in statuses] == [{"pass": "✔ pass", "warn": "! warn"}[c.status] for c in checks_sent]
        assert all(isinstance(s, Text) and s.style for s in statuses)  # coloured
        assert app.query_one("#probes", DataTable).row_count == len([e for e in stream if isinstance(e, P.ProbeResult)])
        summary = report["summary"]
        assert f"{summary['pass']} passed, {summary['warn']} warnings, 0 failed" in text_of(app, "#preflight-status")
        # the recommendation lists what differs from the Config tab: here the probe's batch and the length that
        # keeps the longest example whole
        shown = text_of(app, "#recommended")
        assert (recommended["batch_size"], recommended["grad_accumulation_steps"], recommended["max_seq_length"]) == (
            4, 1, 192)
        changes, rest = shown.split("How long:")
        assert "batch_size: 4" in changes and "max_seq_length: 192" in changes and "learning_rate" not in changes
        # preflight's estimate of the run's length and its reasons, not only the changes
        assert rest.startswith(" About 0 s per epoch") and "\nWhy:\n• 23.0 GB of memory available" in rest
        await wait_for(pilot, lambda: not app.links["preflight"].running, "the preflight engine to close")

        await pilot.press("a")
        await wait_for(pilot, lambda: app.config_tab.texts["batch_size"] == "4", "the recommendation in Config")
        cfg, error = app.config_tab.resolved()
        assert error is None and (cfg["grad_accumulation_steps"], cfg["max_seq_length"]) == (1, 192)
        assert cfg["memory_guard_gb"] == recommended["memory_guard_gb"]


async def test_preflight_shows_a_failed_check_in_red(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        tab = app.preflight_tab
        tab.on_engine_event(EngineEvent("preflight", P.Check(category="model", name="found", status="fail",
                                                           detail="models/missing does not exist.",
                                                           fix="Check the path.")))
        await pilot.pause()
        row = app.query_one("#checks", DataTable).get_row_at(0)
        assert row[0].plain == "✘ fail" and row[0].style
        assert "Check the path." in " ".join(str(c) for c in row)


async def test_preflight_with_probe(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1", "p")
        await wait_for(pilot, lambda: app.preflight_tab.recommended is not None, "preflight_done")
        assert factory.last("preflight").sent_of(P.Preflight)[0].probe is True


# ---------------------------------------------------------------- config


async def test_config_validates_as_you_type(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        tab = app.config_tab
        await wait_for(pilot, lambda: tab.fields_mounted, "the settings to mount")
        assert text_of(app, "#config-status") == "The config is valid."
        assert "2 × 2 = 4 samples per update" in text_of(app, "#effective-batch")
        assert "farense-tui train --config config.yaml --run-dir checkpoints/run-20250501-120000" in text_of(
            app, "#command-preview")

        field = tab.fields["batch_size"]
        field.editor.focus()
        await pilot.press("ctrl+u", "0")
        await wait_for(pilot, lambda: field.has_class("-invalid"), "the batch_size message")
        assert str(field.note.render()) == "batch_size is 0, but it must be between 1 and 4096."
        assert "batch_size is 0" in text_of(app, "#config-status")
        await pilot.press("backspace", "8")
        await wait_for(pilot, lambda: not field.has_class("-invalid"), "batch_size to be valid again")
        assert "8 × 2 = 16 samples per update" in text_of(app, "#effective-batch")

        epochs = tab.fields["epochs"]
        epochs.editor.focus()
        await pilot.press("2")
        await wait_for(pilot, lambda: epochs.has_class("-invalid"), "the epochs/iters message")
        assert str(epochs.note.render()) == "epochs and iters are both set; set only one of them."
        assert tab.resolved()[1] == "epochs and iters are both set; set only one of them."


async def test_config_saves_and_loads_yaml(app_factory, workdir):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        tab = app.config_tab
        await wait_for(pilot, lambda: tab.fields_mounted, "the settings to mount")
        tab.fields["learning_rate"].set_text("3e-5")
        path = app.query_one("#config-path", Input)
        path.value = "saved.yaml"
        path.focus()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: (workdir / "saved.yaml").exists(), "saved.yaml")
        saved = yaml.safe_load((workdir / "saved.yaml").read_text())
        assert saved["learning_rate"] == 3e-5 and saved["iters"] == 40

        (workdir / "mlx.yaml").write_text(
            "model: other/model\ntrain: true\nadapter_path: adapters\nbatch_size: 1\niters: 7\n"
            "lora_parameters: {rank: 4, scale: 10.0, dropout: 0.1}\n")
        path.value = "mlx.yaml"
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: tab.texts["model"] == "other/model", "mlx.yaml to load")
        cfg, error = tab.resolved()
        assert error is None and cfg["iters"] == 7 and cfg["lora_parameters"]["rank"] == 4
        assert cfg["learning_rate"] == 1e-4  # keys the file leaves out go back to their defaults
        notes = text_of(app, "#config-notes")
        assert "train is an mlx_lm.lora option, ignored here: farense-tui train always trains." in notes
        assert "adapter_path is an mlx_lm.lora option, ignored here: the run folder takes the adapters" in notes

        path.value = "missing.yaml"
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: "does not exist" in text_of(app, "#config-status"), "the load error")
        assert tab.texts["model"] == "other/model"  # a failed load changes nothing


async def test_config_recommended_from_the_checkpoints_folder(app_factory, workdir):
    (workdir / "checkpoints" / "recommended_config.json").write_text('{"batch_size": 1, "max_seq_length": 256}')
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2", "ctrl+r")
        await wait_for(pilot, lambda: app.config_tab.texts["max_seq_length"] == "256", "the recommendation")
        assert app.config_tab.texts["batch_size"] == "1"


# ---------------------------------------------------------------- train


async def test_training_replays_into_progress_and_log(app_factory, factory):
    stream = recorded("run_events.jsonl")
    recalls = [e for e in stream if isinstance(e, P.Recall)]
    messages = []
    app = app_factory(factory)
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        engine = await start_training(app, pilot, factory)
        train = app.train_tab
        await wait_for(pilot, lambda: not train.busy and train.state == "completed", "the run to complete")
        command = engine.sent_of(P.Train)[0]
        assert command.run_dir == "checkpoints/run-20250501-120000" and command.resume is False
        assert command.config["iters"] == 40 and command.config["model"] == "models/tiny-llama"
        bar = app.query_one("#progress", ProgressBar)
        assert (bar.progress, bar.total) == (40, 40)
        progress = text_of(app, "#progress-text")
        assert "update 40/40" in progress and "epoch 10" in progress and "ETA 00:00" in progress
        log = log_text(app)
        best = max(r.recall for r in recalls)
        last = recalls[-1]
        for expected in ("validation loss", "checkpoint (periodic) at update 10", "checkpoint (epoch_end) at update 4",
                         "warning: 5 of 16 training examples",
                         "update 35/40", f"training completed, best recall {best:.1%}, best validation loss",
                         f"recall {last.recall:.1%} (trained {last.trained:.1%}, paraphrase {last.paraphrase:.1%})",
                         "memory: cleared cache"):
            assert expected in log, expected
        steps = [m for m in messages if isinstance(m, TrainingProgress)]
        assert steps and steps[-1].step.step == 40
        assert not any(isinstance(m, EngineEvent) and isinstance(m.event, P.Step) and m.event.step % 5
                       for m in messages)  # only report steps reach the log
        await wait_for(pilot, lambda: engine.returncode == 0, "the engine to be shut down after done")


async def test_pause_continue_and_stop(app_factory):
    factory = FakeFactory(delay=0.08)  # slow enough to pause and stop mid-run
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        engine = await start_training(app, pilot, factory)
        bar = app.query_one("#progress", ProgressBar)
        await wait_for(pilot, lambda: bar.progress >= 3, "some progress")
        await pilot.press("p")
        await wait_for(pilot, lambda: app.train_tab.state == "paused", "the paused state")
        assert engine.sent_of(P.Pause)
        assert not app.query_one("#continue").disabled and app.query_one("#pause").disabled
        paused_at = bar.progress
        await pilot.pause(0.2)
        assert bar.progress == paused_at
        await pilot.press("c")
        await wait_for(pilot, lambda: bar.progress > paused_at, "progress after continue")
        await pilot.press("x")
        await wait_for(pilot, lambda: app.train_tab.state == "stopped", "the stopped run")
        assert engine.sent_of(P.Stop)
        assert "checkpoint (stop)" in log_text(app) and "training stopped" in log_text(app)
        assert bar.progress < 40


async def test_resume_an_earlier_run(app_factory, factory, workdir):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        table = app.query_one("#runs", DataTable)
        assert [str(table.get_row_at(i)[0]) for i in range(table.row_count)] == [
            "run-20250430-180000", "run-20250430-090000"]
        assert [str(table.get_row_at(i)[1]) for i in range(table.row_count)] == ["completed", "unfinished"]
        table.focus()
        await pilot.press("r")  # the completed run cannot be resumed
        await pilot.pause()
        assert not factory.engines
        await pilot.press("down", "r")
        await wait_for(pilot, lambda: factory.engines, "the resumed run")
        command = factory.last("train").sent_of(P.Train)[0]
        assert command.resume is True
        assert Path(command.run_dir).resolve() == workdir / "checkpoints" / "run-20250430-090000"
        assert command.config["iters"] == 40
        await wait_for(pilot, lambda: not app.train_tab.busy, "the resumed run to finish")
        assert "resuming from" in log_text(app)


async def test_start_refuses_an_invalid_config(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        app.config_tab.set_values({"batch_size": 0}, replace=False)
        await pilot.press("f3", "s")
        await pilot.pause()
        assert not factory.engines
        assert text_of(app, "#train-error") == (
            "The config is not valid: batch_size is 0, but it must be between 1 and 4096. "
            "Fix it in the Config tab (F2).")
        assert app.query_one("#train-error").has_class("-visible")


async def test_start_on_several_processes_starts_a_shared_engine_or_says_why_not(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        app.query_one("#processes", Select).value = 3
        app.config_tab.set_values({"batch_size": 4}, replace=False)
        await pilot.press("s")
        await pilot.pause()
        assert not factory.engines  # 4 rows cannot be shared by 3 processes
        assert text_of(app, "#train-error").startswith("batch_size 4 does not divide among 3 processes")
        app.query_one("#processes", Select).value = 2
        await pilot.press("s")
        await wait_for(pilot, lambda: factory.engines, "the shared run")
        assert factory.last("train").processes == 2
        assert "on 2 processes" in log_text(app)
        await wait_for(pilot, lambda: not app.train_tab.busy, "the run to finish")


def crash_first(**kwargs):
    """A factory whose first train engine misbehaves (kwargs) and later ones replay normally."""
    plain = FakeFactory()

    def make(role):
        engine = FakeEngine(role, **(kwargs if not plain.engines else {}))
        plain.engines.append(engine)
        return engine

    make.engines = plain.engines
    make.last = plain.last
    return make


async def test_an_engine_that_dies_shows_its_stderr_and_the_app_goes_on(app_factory):
    factory = crash_first(crash_after=20)
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await start_training(app, pilot, factory)
        error = app.query_one("#train-error", Static)
        await wait_for(pilot, lambda: error.has_class("-visible"), "the crash report")
        report = text_of(app, "#train-error")
        assert report.startswith("The engine ran out of memory: the batch did not fit. Its last output:")
        assert "RuntimeError: [metal::malloc] Resource limit exceeded." in report
        assert app.train_tab.state == "exited" and not app.train_tab.busy
        # the app is still usable: switch tabs, then train again
        await pilot.press("f4", "f3", "s")
        await wait_for(pilot, lambda: app.train_tab.state == "completed", "a second run")
        assert not error.has_class("-visible")


async def test_the_event_log_keeps_what_comes_while_another_tab_shows_until_its_own_shows(app_factory):
    factory = FakeFactory(delay=0.05)
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await start_training(app, pilot, factory)
        await wait_for(pilot, lambda: app.train_tab.state == "training", "training")
        await pilot.press("f2")
        await pilot.pause()
        log = app.query_one(EventLog)
        lines = len(log.lines)
        asked = []  # the layouts the log asks for (each one of the whole screen)
        refresh = log.refresh
        log.refresh = lambda *a, layout=False, **k: (asked.append(layout), refresh(*a, layout=layout, **k))[1]
        await wait_for(pilot, lambda: app.train_tab.state == "completed", "the run to complete")
        waiting = [content.plain for content, _, _ in log.waiting]
        assert len(log.lines) == lines and waiting and not any(asked)
        await pilot.press("f3")
        await wait_for(pilot, lambda: not log.waiting and len(log.lines) >= lines + len(waiting), "the lines shown")
        squeezed = lambda text: re.sub(r"\s+", "", text)  # where the log wraps a line depends on its width
        assert squeezed(log_text(app)).endswith(squeezed("".join(waiting)))


async def test_garbage_from_the_engine_shows_as_an_error(app_factory):
    factory = crash_first(garbage_after=8)
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await start_training(app, pilot, factory)
        await wait_for(pilot, lambda: app.train_tab.state == "completed", "the run to go on")
        report = text_of(app, "#train-error")
        assert "not protocol" in report and "Loading weights 100%" in report


async def test_a_real_subprocess_that_prints_garbage_and_dies(app_factory, tmp_path):
    script = tmp_path / "bad_engine.py"
    script.write_text(
        "import sys\n"
        "print('not json at all', flush=True)\n"
        "sys.stdin.readline()\n"
        "sys.stderr.write('Traceback (most recent call last):\\nImportError: no module named mlx_lm\\n')\n"
        "sys.exit(3)\n"
    )
    app = app_factory(lambda role: EngineProcess(argv=[sys.executable, str(script)]).start())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3", "s")
        await wait_for(pilot, lambda: "exit code 3" in text_of(app, "#train-error"), "the crash report", 20)
        assert "ImportError: no module named mlx_lm" in text_of(app, "#train-error")
        assert "not protocol" in log_text(app)
        await pilot.press("f1", "f3")
        assert app.query_one(TabbedContent).active == "train"


# ---------------------------------------------------------------- monitor


async def test_monitor_draws_the_live_run_on_its_timer(app_factory, factory):
    stream = recorded("run_events.jsonl")
    recalls = [e for e in stream if isinstance(e, P.Recall)]
    best_val = min(e.val_loss for e in stream if isinstance(e, P.Eval))
    memory = [e for e in stream if isinstance(e, (P.Step, P.MemoryEvent))][-1].memory
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await start_training(app, pilot, factory)
        await wait_for(pilot, lambda: app.train_tab.state == "completed", "the run to complete")
        await pilot.press("f4")
        monitor = app.monitor_tab
        history = monitor.history
        assert history is not None and history is monitor.live
        await wait_for(pilot, lambda: monitor._drawn_version == history.version, "the timer's redraw")
        await wait_for(pilot, lambda: all(p._has_data for p in app.query(MetricPlot)), "the plots")
        figures = text_of(app, "#figures")
        assert "update 40/40" in figures and f"best val loss {best_val:.4f}" in figures and "tokens/s" in figures
        assert "steps/s" in figures and "ETA" in figures
        assert "live: checkpoints/run-20250501-120000 · completed" in text_of(app, "#monitor-source")
        available = app.query_one("#g-available", Gauge)
        assert available.text == f"{size(memory.system_available)} of {size(memory.system_total)}"
        assert app.query_one("#g-active", Gauge).text.endswith(("MB", "GB"))
        snapshot = history.snapshot()
        assert len(snapshot.series["loss"][0]) == 40 and len(snapshot.series["val_loss"][0]) == 4
        # recall beside the loss: its plot, and the latest figures
        assert snapshot.series["recall_trained"] == ([r.step for r in recalls], [r.trained for r in recalls])
        assert app.query_one("#plot-recall", MetricPlot)._has_data
        last = recalls[-1]
        assert (f"recall {last.recall:.0%} · trained {last.trained:.0%} · paraphrase {last.paraphrase:.0%} · "
                f"best {max(r.recall for r in recalls):.0%}") in figures
        assert not app.query_one("#advice", Static).has_class("-shown")  # no advice in this run


def test_available_memory_warns_near_the_guard_and_alarms_under_it():
    gb = 1024 ** 3
    assert available_level(int(0.5 * gb), 0.75) == "danger"
    assert available_level(int(1.5 * gb), 0.75) == "warn"  # within 1 GB of the guard
    assert available_level(int(1.8 * gb), 0.75) == "ok"
    assert available_level(int(3.5 * gb), 2.0) == "warn"  # within the guard's own size when that is larger
    assert available_level(int(0.1 * gb), 0.0) == "ok"  # no guard, no alarm


async def test_key_hints_come_from_the_apps_bindings(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        assert app.session.tab_keys == {"preflight": "F1", "config": "F2", "train": "F3", "monitor": "F4", "chat": "F5"}
        await pilot.press("f4")
        assert text_of(app, "#monitor-source") == (
            "No run yet: start one in the Train tab (F3), or open a past run below.")
        await pilot.press("ctrl+l")  # no live run yet
        await pilot.pause()
        assert any("Train tab (F3)" in n.message for n in app._notifications)


async def test_monitor_shows_the_latest_advice(app_factory):
    from farense_tui.runs import RunHistory

    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        history = RunHistory("test")
        for event in recorded("run_events.jsonl")[:20]:
            history.apply(event)
        history.apply(P.Advice(code="plateau", step=12, message="Recall has not improved for 3 validations."))
        history.apply(P.Advice(code="diverged", step=14, message="Training diverged: lower learning_rate."))
        app.monitor_tab.show(history)
        await pilot.pause()
        advice = app.query_one("#advice", Static)
        assert advice.has_class("-shown")
        assert str(advice.render()) == "advice at update 14 (diverged): Training diverged: lower learning_rate."


async def test_monitor_opens_a_past_run(app_factory, workdir):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        path = app.query_one("#run-path", Input)
        path.focus()
        await pilot.press(*"checkpoints/run-20250430-090000", "enter")
        monitor = app.monitor_tab
        await wait_for(pilot, lambda: monitor.history is not None, "the past run")
        await wait_for(pilot, lambda: "update 25/40" in text_of(app, "#figures"), "its figures")
        # the folder opened (not the one its events were written in), in its last state
        assert text_of(app, "#monitor-source") == "opened: checkpoints/run-20250430-090000 · training"

        path.value = "nowhere"
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert monitor.history.snapshot().last_step.step == 25  # a bad path keeps the open run


async def test_open_a_run_from_the_train_tab(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        app.query_one("#runs", DataTable).focus()
        await pilot.press("o")
        await wait_for(pilot, lambda: app.monitor_tab.history is not None, "the opened run")
        assert app.query_one(TabbedContent).active == "monitor"
        assert app.monitor_tab.history.snapshot().done.status == "completed"


# ---------------------------------------------------------------- chat


async def send_prompt(pilot, app, text: str) -> None:
    prompt = app.query_one("#prompt", Input)
    prompt.focus()
    await pilot.press(*text, "enter")


async def test_chat_streams_a_reply(app_factory, factory, workdir):
    messages = []
    app = app_factory(factory)
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        await pilot.press("f5")
        chat: ChatTab = app.chat_tab
        assert app.query_one("#chat-model", Input).value == "models/tiny-llama"  # the Config tab's model
        adapter = app.query_one("#chat-adapter", Select).value
        assert Path(adapter).resolve() == workdir / "checkpoints" / "run-20250430-180000" / "adapters"  # the newest
        app.query_one("#sampler-temperature", Input).value = "0.2"
        await send_prompt(pilot, app, "Quem fundou o Farense?")
        await wait_for(pilot, lambda: chat.current is None and not chat.pending, "the reply")
        engine = factory.last("chat")
        load, request = engine.sent_of(P.ChatLoad)[0], engine.sent_of(P.Chat)[0]
        assert (load.model, load.adapter) == ("models/tiny-llama", adapter)
        assert request.message == "Quem fundou o Farense?" and request.temperature == 0.2
        assert request.max_tokens == 256 and request.repetition_penalty == 1.1
        replies = [m for m in app.query(ChatMessage) if m.has_class("reply")]
        assert len(replies) == 1 and str(replies[0].render()) == FakeEngine.REPLY
        assert "tok/s" in replies[0].border_subtitle
        assert any(isinstance(m, ReplyProgress) for m in messages)
        words = len(FakeEngine.REPLY.split(" "))
        assert text_of(app, "#chat-status") == f"Reply done: {words} tokens · 42.0 tok/s · first token 0.12 s · stop."
        assert app.query_one("#prompt", Input).value == ""


async def test_the_adapter_chosen_stays_chosen_and_the_system_prompt_is_sent(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        select = app.query_one("#chat-adapter", Select)
        assert select.value != "none"  # at first, the newest run's adapter
        select.value = "none"  # the user picks the bare base model
        await pilot.pause()
        app.query_one("#chat-system", Input).value = "Responde em português."
        await send_prompt(pilot, app, "Olá")
        await wait_for(pilot, lambda: app.chat_tab.current is None and not app.chat_tab.pending, "the reply")
        await pilot.press("f3", "f4", "f5")  # visiting other tabs refreshes the choices
        assert select.value == "none"
        await send_prompt(pilot, app, "Quem fundou o Farense?")
        await wait_for(pilot, lambda: app.chat_tab.current is None and not app.chat_tab.pending, "the reply")
        engine = factory.last("chat")
        loads = engine.sent_of(P.ChatLoad) + engine.sent_of(P.ChatAdapter)
        assert loads[-1].adapter is None  # the base model answered
        assert [c.system for c in engine.sent_of(P.Chat)] == ["Responde em português."] * 2
        replies = [m for m in app.query(ChatMessage) if m.has_class("reply")]
        assert [r.border_title for r in replies] == ["assistant", "assistant"]  # never "base + adapter"


async def start_a_long_reply(pilot, app) -> ChatLog:
    """Ask in the Chat tab and wait for the reply's first token."""
    await pilot.press("f5")
    await send_prompt(pilot, app, "Conta-me tudo")
    log = app.query_one(ChatLog)
    await wait_for(pilot, lambda: any(m.has_class("-streaming") for m in log.query(ChatMessage)), "the first token")
    return log


async def test_chat_reply_can_be_stopped(app_factory):
    factory = FakeFactory(delay=0.05)
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        log = await start_a_long_reply(pilot, app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.chat_tab.current is None, "the stopped reply")
        assert factory.last("chat").sent_of(P.Cancel)
        reply = [m for m in log.query(ChatMessage) if m.has_class("reply")][0]
        assert reply.has_class("-failed") and "cancelled" in reply.border_subtitle


async def test_new_conversation_drops_the_reply_in_flight(app_factory):
    factory = FakeFactory(delay=0.05)
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        log = await start_a_long_reply(pilot, app)
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: app.chat_tab.current is None, "the stopped reply")
        engine = factory.last("chat")
        assert engine.sent_of(P.Cancel) and engine.sent_of(P.ChatReset)
        assert not log.query(ChatMessage)  # nothing of the old reply comes back


async def test_chat_compares_base_and_adapter(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5", "ctrl+t")
        assert app.query_one("#compare", Checkbox).value is True
        await send_prompt(pilot, app, "Quem é o Farense?")
        chat = app.chat_tab
        await wait_for(pilot, lambda: chat.current is None and not chat.pending, "both replies")
        engine = factory.last("chat")
        kinds = [(type(r).__name__, getattr(r, "adapter", None)) for r in engine.sent
                 if isinstance(r, (P.ChatAdapter, P.Chat))]
        adapter = str(app.query_one("#chat-adapter", Select).value)
        assert kinds == [("ChatAdapter", None), ("Chat", None), ("ChatAdapter", adapter), ("Chat", None)]
        assert all(not c.keep_history for c in engine.sent_of(P.Chat))
        row = app.query_one(CompareRow)
        boxes = list(row.query(ChatMessage))
        assert [b.border_title for b in boxes] == ["base", "base + adapter"]
        assert str(boxes[1].render()) == FakeEngine.REPLY


async def test_chat_asks_the_training_questions_and_lists_the_wrong_answers(app_factory, factory):
    from farense_tui.widgets.eval_report import EvalReportScreen

    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5", "ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, EvalReportScreen), "the report")
        engine = factory.last("chat")
        load, command = engine.sent_of(P.ChatLoad)[0], engine.sent_of(P.Evaluate)[0]
        assert load.adapter == str(app.query_one("#chat-adapter", Select).value)  # the loaded adapter is evaluated
        assert (command.probe, command.data, command.base) == ("recall", "data", False)
        screen = app.screen
        summary = str(screen.query_one("#eval-summary", Static).render())
        assert "75.0% with every fact right" in summary and "jogo 67% of 3" in summary
        wrong = str(screen.query_one("#eval-wrong", Static).render())
        assert FakeEngine.WRONG["question"] in wrong and FakeEngine.WRONG["got"] in wrong
        assert "missing: number 4-2, venue away" in wrong
        await pilot.press("escape")
        assert not isinstance(app.screen, EvalReportScreen)
        assert "75% of 4 training questions" in text_of(app, "#chat-status")
        assert not app.chat_tab.evaluating


async def test_an_evaluation_can_be_stopped_and_blocks_chat_meanwhile(app_factory):
    factory = FakeFactory(hold_evaluation=True)
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        app.query_one("#evaluate").press()
        await wait_for(pilot, lambda: "Evaluating: 2 of 4" in text_of(app, "#chat-status"), "the first batch")
        await send_prompt(pilot, app, "Olá")
        assert not factory.last("chat").sent_of(P.Chat)  # no chat while it answers the evaluation
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.chat_tab.evaluating, "the evaluation to stop")
        assert factory.last("chat").sent_of(P.Cancel)
        assert "Evaluation stopped" in text_of(app, "#chat-status")


async def test_chat_says_when_the_engine_cannot_chat(app_factory):
    factory = FakeFactory(chat="unsupported")
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await send_prompt(pilot, app, "Olá")
        await wait_for(pilot, lambda: "cannot handle" in text_of(app, "#chat-status"), "the engine's answer")
        assert re.fullmatch(r"The engine cannot handle '(chat_load|chat)' commands yet\.", text_of(app, "#chat-status"))
        assert app.query_one("#chat-status").has_class("-error")
        chat = app.chat_tab
        assert chat.current is None and not chat.pending and not chat.has_class("-replying")
        reply = [m for m in app.query(ChatMessage) if m.has_class("reply")][0]
        assert reply.has_class("-failed")


async def test_chat_sampler_values_are_checked(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        app.query_one("#sampler-temperature", Input).value = "hot"
        await send_prompt(pilot, app, "Olá")
        assert text_of(app, "#chat-status") == "temperature is 'hot', but it must be 0 (greedy) or more."
        assert not [e for e in factory.engines if e.sent_of(P.Chat)]  # nothing was sent (the model preloads)
        # the engine's own rules: 0 turns top-p off, a penalty under 1 is a weak one; both are sent as they are
        app.query_one("#sampler-temperature", Input).value = "0.7"
        app.query_one("#sampler-top_p", Input).value = "0"
        app.query_one("#sampler-repetition_penalty", Input).value = "0.8"
        await send_prompt(pilot, app, "Olá")
        await wait_for(pilot, lambda: factory.engines and factory.last("chat").sent_of(P.Chat), "the message")
        sent = factory.last("chat").sent_of(P.Chat)[0]
        assert (sent.top_p, sent.repetition_penalty) == (0.0, 0.8)


# ---------------------------------------------------------------- quitting


async def test_quit_shuts_the_engines_down(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f5")
        await send_prompt(pilot, app, "Olá")
        await wait_for(pilot, lambda: app.chat_tab.current is None, "the reply")
        engine = factory.last("chat")
        assert engine.returncode is None  # the chat engine stays up between replies
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: engine.returncode == 0, "the chat engine to shut down")
    assert app.return_code == 0



# ---------------------------------------------------------------- what the user keeps


async def test_saving_over_a_config_file_asks_and_keeps_its_comments(app_factory, workdir):
    path = workdir / "config.yaml"
    path.write_text("# my notes on this run\n" + path.read_text())
    original = path.read_text()
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        config = app.config_tab
        await wait_for(pilot, lambda: config.fields_mounted, "the settings")
        config.set_values({"batch_size": 3, "keep_checkpoints": 7}, replace=False)
        assert config.dirty
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: getattr(app.screen, "title_text", "") == "Overwrite config.yaml?", "the question")
        said = str(app.screen.query(Label)[1].render())
        assert said.startswith("2 settings change: batch_size 2 → 3; keep_checkpoints 3 → 7.")
        await pilot.press("escape")  # not now
        await pilot.pause()
        assert path.read_text() == original and config.dirty
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: getattr(app.screen, "title_text", "").startswith("Overwrite"), "the question")
        await pilot.press("o")
        await wait_for(pilot, lambda: not config.dirty, "the save")
    text = path.read_text()
    assert text.startswith("# my notes on this run\n")  # the user's comments survive
    assert "batch_size: 3\n" in text and "keep_checkpoints: 7\n" in text
    changed = [(a, b) for a, b in zip(original.splitlines(), text.splitlines()) if a != b]
    assert changed == [("batch_size: 2", "batch_size: 3"), ("keep_checkpoints: 3", "keep_checkpoints: 7")]
    assert len(text.splitlines()) == len(original.splitlines())  # every other line as it was


async def test_quitting_with_unsaved_settings_asks_to_save_them(app_factory, workdir):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await wait_for(pilot, lambda: app.config_tab.fields_mounted, "the settings")
        app.config_tab.set_values({"learning_rate": 3e-4}, replace=False)
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: getattr(app.screen, "title_text", "") == "The Config tab has unsaved changes.",
                       "the question")
        await pilot.press("s")
        await wait_for(pilot, lambda: not app.is_running, "the app to quit")
    assert "learning_rate: 0.0003" in (workdir / "config.yaml").read_text()


class RefusingEngine(FakeEngine):
    """An engine whose train job fails before the first update (as a run on bad data does)."""

    def _train(self, command: P.Train) -> None:
        self._emit(P.State(state="loading"))
        self._emit(P.Error(message="data/train.jsonl:3: the last message is from 'user', not the assistant.",
                           code="input"))
        self._emit(P.Done(status="failed", summary={"error": "bad data"}))
        self._emit(P.Finished(command="train", status="failed"))
        self._emit(P.State(state="idle"))


async def test_a_run_that_fails_before_its_first_update_does_not_stay_loading(app_factory):
    app = app_factory(lambda role: RefusingEngine(role))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3", "s")
        await wait_for(pilot, lambda: app.train_tab.state == "failed", "the failure")
        assert text_of(app, "#progress-text") == " did not start: see why above"
        assert "data/train.jsonl:3:" in text_of(app, "#train-error")


async def test_settings_with_a_few_values_are_pick_lists(app_factory):
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        tab = app.config_tab
        await wait_for(pilot, lambda: tab.fields_mounted, "the settings")
        picks = {key for key, field in tab.fields.items() if isinstance(field.editor, Select)}
        assert picks == {"fine_tune_type", "base_dtype", "optimizer", "lr_schedule", "best_by",
                         "frozen_cache", "dequant_matmul"}
        optimizer = tab.fields["optimizer"].editor
        assert [str(o[0]) for o in optimizer._options] == ["adam", "adamw", "sgd", "adafactor"]
        optimizer.value = "adamw"
        await wait_for(pilot, lambda: tab.resolved()[0]["optimizer"] == "adamw", "the choice to count")
        tab.set_values({"lr_schedule": {"name": "cosine_decay", "arguments": [1e-4, 100]}}, replace=False)
        await wait_for(pilot, lambda: isinstance(tab.fields["lr_schedule"].editor, Input), "a typed field")
        assert tab.fields["lr_schedule"].editor.is_mounted  # mlx-lm's form is typed, not picked
        assert tab.resolved()[0]["lr_schedule"]["name"] == "cosine_decay"


async def test_the_keys_screen_reaches_its_last_row_on_a_small_terminal(app_factory):
    app = app_factory()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f3", "question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), "the keys screen")
        table = app.screen.query_one(DataTable)
        assert table.has_focus and table.row_count > table.size.height  # more rows than fit
        await pilot.press("pagedown", "pagedown", "pagedown")
        await pilot.pause()
        assert table.scroll_y == table.max_scroll_y > 0  # the last rows are on screen
        assert table.cursor_row == table.row_count - 1


async def test_a_run_is_deleted_only_when_asked_and_never_while_it_trains(app_factory, workdir):
    checkpoints = workdir / "checkpoints"
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        tab = app.train_tab
        assert [r.name for r in tab.runs] == ["run-20250430-180000", "run-20250430-090000"]
        tab.query_one("#runs", DataTable).focus()
        await pilot.press("d")
        await wait_for(pilot, lambda: getattr(app.screen, "title_text", "") == "Delete run-20250430-180000?",
                       "the question")
        await pilot.press("escape")
        await pilot.pause()
        assert (checkpoints / "run-20250430-180000").is_dir()  # not asked twice, not deleted
        await pilot.press("d")
        await wait_for(pilot, lambda: getattr(app.screen, "title_text", "").startswith("Delete"), "the question")
        await pilot.press("d")
        await wait_for(pilot, lambda: not (checkpoints / "run-20250430-180000").exists(), "the deletion")
        assert [r.name for r in tab.runs] == ["run-20250430-090000"]
        # a folder some process trains is refused
        from farense_core.rundir import RunDir, RunLock

        with RunLock(RunDir(checkpoints / "run-20250430-090000")):
            await pilot.press("d")
            await pilot.pause()
            assert not hasattr(app.screen, "title_text")
        assert (checkpoints / "run-20250430-090000").is_dir()


async def test_quit_while_training_asks_and_stop_says_what_it_waits_for(app_factory):
    factory = FakeFactory(delay=0.05)
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        engine = await start_training(app, pilot, factory)
        await wait_for(pilot, lambda: app.train_tab.state == "training", "training")
        await ask_to_quit(pilot)
        await pilot.press("escape")  # cancel: nothing happens
        await pilot.pause()
        assert app.is_running and app.train_tab.busy and not engine.sent_of(P.Stop)
        await ask_to_quit(pilot)
        await pilot.press("s")
        said = "saving a checkpoint; the app quits once the run has stopped"
        await wait_for(pilot, lambda: engine.sent_of(P.Stop) and said in text_of(app, "#train-state"), "the stop")
        await wait_for(pilot, lambda: not app.is_running, "the app to quit once the run stopped")


async def test_a_run_that_ends_while_the_quit_question_is_open_lets_the_app_quit(app_factory):
    factory = FakeFactory(delay=0.05)  # some 5 s of training
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        engine = await start_training(app, pilot, factory)
        await wait_for(pilot, lambda: app.train_tab.state == "training", "training")
        await ask_to_quit(pilot)
        await wait_for(pilot, lambda: not app.is_running, "the app to quit once the run, left alone, completed",
                       timeout=60)
        assert not engine.sent_of(P.Stop) and app.train_tab.state == "completed"


async def test_a_run_that_dies_while_the_quit_question_is_open_keeps_the_app_open_on_its_report(app_factory):
    factory = crash_first(crash_after=20, delay=0.25)  # dies some 5 s in: time enough to ask
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await start_training(app, pilot, factory)
        await ask_to_quit(pilot)
        error = app.query_one("#train-error", Static)
        await wait_for(pilot, lambda: error.has_class("-visible"), "the crash report", timeout=60)
        await wait_for(pilot, lambda: not hasattr(app.screen, "title_text"), "the question gone")
        await pilot.pause(0.2)
        assert app.is_running and app.query_one(TabbedContent).active == "train"
        await pilot.press("ctrl+q")
        await wait_for(pilot, lambda: not app.is_running, "the app to quit at once: nothing trains")


async def test_function_keys_leave_the_tabs_beneath_a_question_alone(app_factory):
    factory = FakeFactory(delay=0.25)  # some 25 s of training: the question stays while the keys come
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        await start_training(app, pilot, factory)
        await ask_to_quit(pilot)
        tabs = app.query_one(TabbedContent)
        await pilot.press("f2", "f4")
        assert tabs.active == "train" and getattr(app.screen, "title_text", "") == "A run is training."
        await pilot.press("escape")
        await pilot.press("f2")
        assert tabs.active == "config"


async def test_the_chat_tab_loads_the_model_as_it_opens(app_factory, factory):
    app = app_factory(factory)
    async with app.run_test(size=SIZE) as pilot:
        assert not factory.engines
        await pilot.press("f5")
        await wait_for(pilot, lambda: factory.engines and factory.last("chat").sent_of(P.ChatLoad), "the preload")
        load = factory.last("chat").sent_of(P.ChatLoad)[0]
        assert (load.model, Path(load.adapter).name) == ("models/tiny-llama", "adapters")  # the newest run's
        await pilot.press("f1", "f5")  # coming back loads nothing again
        await pilot.pause()
        assert len(factory.last("chat").sent_of(P.ChatLoad)) == 1 and len(factory.engines) == 1


async def test_a_run_can_be_renamed_to_a_free_name(app_factory, workdir):
    checkpoints = workdir / "checkpoints"
    app = app_factory()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        tab = app.train_tab
        tab.query_one("#runs", DataTable).focus()
        await pilot.press("n")
        await wait_for(pilot, lambda: getattr(app.screen, "title_text", "") == "Rename run-20250430-180000 to:",
                       "the name question")
        app.screen.query_one(Input).value = "run-20250430-090000"  # taken
        await pilot.press("enter")
        await pilot.pause()
        assert (checkpoints / "run-20250430-180000").is_dir()
        await pilot.press("n")
        await wait_for(pilot, lambda: getattr(app.screen, "title_text", "").startswith("Rename"), "the question")
        app.screen.query_one(Input).value = "farense-full-12-epochs"
        await pilot.press("enter")
        await wait_for(pilot, lambda: (checkpoints / "farense-full-12-epochs").is_dir(), "the rename")
        assert not (checkpoints / "run-20250430-180000").exists()
        assert [r.name for r in tab.runs] == ["farense-full-12-epochs", "run-20250430-090000"]
        assert tab.selected_run().name == "farense-full-12-epochs"


async def test_replies_and_prompts_are_shown_as_written_not_as_markup():
    """A model's reply is any text: "[/" or "[b]" in it once crashed the chat log (MarkupError) in tmux."""
    from textual.app import App

    class One(App):
        def compose(self):
            yield ChatLog()

    app = One()
    async with app.run_test() as pilot:
        log = app.query_one(ChatLog)
        log.add_user("o que é [b] e [/x]?")
        log.update_reply("r1", "�\x1e [/] [bold")
        await pilot.pause()
        log.update_reply("r1", "�\x1e [/] [bold red] fim [/")
        await pilot.pause()
        texts = [str(m.render()) for m in app.query(ChatMessage)]
        assert texts == ["o que é [b] e [/x]?", "�\x1e [/] [bold red] fim [/"]

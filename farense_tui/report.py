"""A run's report (``farense-tui report``) and runs side by side (``farense-tui compare``).

A run is read through ``RunDir`` and the metrics files the engine writes: ``metrics.csv`` (appended
update by update, so a run still training or stopped early shows all it did), else
``training_metrics.json``; its config, summary and evaluation report where it has them. Plots are
drawn with matplotlib on the Agg canvas (figures of their own, never pyplot's global state) and the
page is rendered by Jinja2 with autoescaping: one HTML file with its CSS inline and its pictures as
base64 PNG data URIs, so it opens anywhere, offline.

A page we write names us in ``<meta name="generator">`` near its top (``PAGE_MARK``): that is how a
page of ours, which may be replaced, is told from a user's file, which is never overwritten unasked.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from farense_core.config import ConfigError, atomic_write_bytes, validate
from farense_core.format import duration, size
from farense_core.rundir import RUNS_FOLDER, RunDir, lock_holder

from .runs import GB, format_loss, read_json

PAGE_MARK = '<meta name="generator" content="farense-tui">'
MARK_WITHIN = 4096  # bytes from a page's start where the mark must be
MARKED_POINTS = 60  # a curve of this many points or fewer is drawn with its markers


class ReportError(ValueError):
    """A run folder that cannot be reported on, or a page that cannot be written (one sentence)."""


# ------------------------------------------------------------------ what is plotted


@dataclass(frozen=True)
class Curve:
    column: str  # a metrics column
    label: str
    style: str = "-"


@dataclass(frozen=True)
class PlotSpec:
    name: str  # the PNG's name in plots/ (without .png)
    title: str
    ylabel: str
    curves: tuple[Curve, ...]
    waiting_for: str  # what brings the plot's first point
    scale: float = 1.0  # the column is divided by it (bytes -> GB)


PLOTS = (
    PlotSpec("loss", "Loss", "loss", (Curve("loss", "training"), Curve("val_loss", "validation", "o--")),
             "the first update"),
    PlotSpec("recall", "Recall (teacher-forced)", "share of answers",
             (Curve("recall", "recall", "o-"), Curve("token_accuracy", "token accuracy", "s--")),
             "the first validation (steps_per_eval)"),
    PlotSpec("learning_rate", "Learning rate", "learning rate", (Curve("learning_rate", "learning rate"),),
             "the first update"),
    PlotSpec("tokens_per_second", "Speed", "tokens/s", (Curve("tokens_per_second", "tokens/s"),), "the first update"),
    PlotSpec("memory", "Memory", "GB", (Curve("mlx_active", "MLX active"), Curve("mlx_peak", "MLX peak"),
                                        Curve("rss", "process RSS")), "the first update", scale=GB),
)


# ------------------------------------------------------------------ a run's data


@dataclass
class RunData:
    path: Path
    config: dict
    summary: dict  # training_summary.json ({} while training or after a crash)
    rows: list[dict]  # the metrics, one row per update: "step" an int, the other columns floats or None
    eval_report: Optional[dict]
    status: str
    notes: list[str] = field(default_factory=list)  # what could not be read, as sentences

    @property
    def name(self) -> str:
        return self.path.name

    def series(self, column: str, scale: float = 1.0) -> tuple[list, list]:
        pts = [(r["step"], r[column] / scale) for r in self.rows
               if isinstance(r.get(column), float) and math.isfinite(r[column])]
        return [x for x, _ in pts], [y for _, y in pts]

    def best(self, column: str, pick: Callable = min) -> Optional[tuple[float, int]]:
        """The best value of a column and its update."""
        xs, ys = self.series(column)
        if not xs:
            return None
        y = pick(ys)
        return y, xs[ys.index(y)]

    def best_or_summary(self, column: str, pick: Callable) -> Optional[tuple[float, Optional[int]]]:
        """The best value of a column and its update; else the summary's best_<column> (update unknown)."""
        found = self.best(column, pick)
        if found is None and self.summary.get(f"best_{column}") is not None:
            found = (float(self.summary[f"best_{column}"]), None)
        return found

    @property
    def best_val_loss(self) -> Optional[tuple[float, Optional[int]]]:
        return self.best_or_summary("val_loss", min)

    @property
    def best_recall(self) -> Optional[tuple[float, Optional[int]]]:
        return self.best_or_summary("recall", max)

    @property
    def updates(self) -> int:
        return max(self.rows[-1]["step"] if self.rows else 0, int(self.summary.get("updates") or 0))

    @property
    def total_updates(self) -> Optional[int]:
        total = self.summary.get("total_updates") or self.config.get("iters")
        return int(total) if total else None

    @property
    def elapsed(self) -> Optional[float]:
        found = self.series("elapsed")[1]
        return found[-1] if found else self.summary.get("elapsed")

    @property
    def peak_memory(self) -> Optional[float]:
        peaks = self.series("mlx_peak")[1] + [float(self.summary.get("peak_memory") or 0)]
        return max(peaks) or None

    @property
    def final_loss(self) -> Optional[float]:
        losses = self.series("loss")[1]
        return losses[-1] if losses else self.summary.get("final_loss")


def _number(text) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_metrics(rd: RunDir) -> list[dict]:
    """The metrics by update: metrics.csv (a half-written last line is skipped), else training_metrics.json."""
    by_step: dict[int, dict] = {}
    if rd.metrics_csv.is_file():
        text = rd.metrics_csv.read_text(encoding="utf-8", errors="replace")
        text = text[:text.rfind("\n") + 1]  # a last line without its newline is still being written
        if text:
            for raw in csv.DictReader(io.StringIO(text, newline="")):
                step = _number(raw.get("step"))
                if step is None or step != int(step):
                    continue
                row = {k: _number(v) for k, v in raw.items() if k and k != "step"}
                by_step[int(step)] = {**by_step.get(int(step), {}), **row, "step": int(step)}
    elif (saved := read_json(rd.metrics_json)) is not None:
        for part in ("train", "eval", "recall"):
            for raw in saved.get(part) or []:
                step = raw.get("step") if isinstance(raw, dict) else None
                if isinstance(step, int):
                    row = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and k != "step"}
                    by_step[step] = {**by_step.get(step, {}), **row, "step": step}
    return [by_step[s] for s in sorted(by_step)]


def run_status(rd: RunDir, summary: dict, rows: list[dict]) -> str:
    """training while a process holds the run's lock; else how its summary says it ended, unless rows
    came after that summary (a resumed run that then died): unfinished, as a run that never wrote one."""
    if lock_holder(rd) is not None:
        return "training"
    last = rows[-1]["step"] if rows else 0
    if summary.get("status") and int(summary.get("updates") or 0) >= last:
        return str(summary["status"])
    return "unfinished"


def read_run(path: str | Path) -> RunData:
    """A run folder's data; ReportError (one sentence) for a folder that is not a run."""
    rd = RunDir(Path(path).expanduser())
    if not rd.path.exists():
        raise ReportError(f"{rd.path} does not exist; give a run folder, e.g. one in {RUNS_FOLDER}/.")
    if not rd.path.is_dir() or not rd.is_run():
        raise ReportError(f"{rd.path} is not a run folder (it has neither events.jsonl nor config.yaml); give a "
                          f"folder that 'farense-tui train' wrote.")
    notes = []
    try:
        config = rd.settings()
    except ConfigError as e:
        config, notes = {}, [str(e)]
    summary = read_json(rd.summary) or {}
    rows = read_metrics(rd)
    eval_report = read_json(rd.eval_report) if rd.eval_report.is_file() else None
    if rd.eval_report.is_file() and not isinstance((eval_report or {}).get("probes"), list):
        eval_report, notes = None, [*notes, f"{rd.eval_report} cannot be read; run 'farense-tui eval --run "
                                             f"{rd.path}' again to write it anew."]
    return RunData(rd.path, config, summary, rows, eval_report, run_status(rd, summary, rows), notes)


# ------------------------------------------------------------------ plots


@dataclass
class Line:
    xs: list
    ys: list
    label: str
    style: str = "-"
    color: Optional[str] = None


def figure_png(title: str, ylabel: str, lines: Sequence[Line], inches: tuple[float, float] = (6.4, 3.4)) -> bytes:
    """One plot over updates as PNG bytes."""
    from matplotlib.figure import Figure  # the figure draws on the Agg canvas: no display, no pyplot
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=inches, dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for line in lines:
        # sparse points (validations) keep their markers; a lone point needs one to be seen at all
        fmt = line.style if len(line.xs) <= MARKED_POINTS else line.style.strip("os") or "-"
        if len(line.xs) == 1 and fmt.strip("-:.") == "":
            fmt += "o"
        ax.plot(line.xs, line.ys, fmt, label=line.label, color=line.color, markersize=4, linewidth=1.6)
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.set_xlabel("update")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if len(lines) > 1:
        ax.legend(frameon=False, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def run_plots(run: RunData) -> dict[str, Optional[bytes]]:
    """Each plot of PLOTS as PNG bytes, or None while the run has no figures for it."""
    out = {}
    for spec in PLOTS:
        lines = []
        for curve in spec.curves:
            xs, ys = run.series(curve.column, spec.scale)
            if xs:
                lines.append(Line(xs, ys, curve.label, curve.style))
        out[spec.name] = figure_png(spec.title, spec.ylabel, lines) if lines else None
    return out


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# ------------------------------------------------------------------ figures as text


def _at(found: Optional[tuple[float, Optional[int]]], fmt: Callable[[float], str]) -> str:
    if found is None:
        return "-"
    value, step = found
    return fmt(value) + (f" (update {step})" if step is not None else "")


def _share(x: float) -> str:
    return f"{100 * x:.1f}%"


def figures(run: RunData) -> list[tuple[str, str]]:
    """The figures a report leads with, and compare's rows for each run, as (label, text)."""
    total = run.total_updates
    return [
        ("status", run.status),
        ("updates", f"{run.updates}" + (f" of {total}" if total else "")),
        ("best recall", _at(run.best_recall, _share)),
        ("best val loss", _at(run.best_val_loss, format_loss)),
        ("final loss", format_loss(run.final_loss)),
        ("training time", duration(run.elapsed) if run.elapsed is not None else "-"),
        ("peak memory", size(run.peak_memory) if run.peak_memory else "-"),
    ]


def flat_config(config: dict, prefix: str = "") -> dict[str, str]:
    """A config's settings as text, nested ones as ``lora_parameters.rank``."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def resolved(config: dict) -> dict:
    """A run's config with today's defaults for what it leaves out (a run of an older version lacks newer
    settings, which it trained at their defaults); as written when it is no longer valid."""
    try:
        return validate(config)[0]
    except ConfigError:
        return config


def config_differences(runs: Sequence[RunData]) -> list[tuple[str, list[str]]]:
    """The settings whose values are not the same in every run (in the first config's order), "-" where a
    run's config has no such key."""
    flats = [flat_config(resolved(r.config)) for r in runs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    return [(k, [flat.get(k, "-") for flat in flats]) for k in keys if len({flat.get(k) for flat in flats}) > 1]


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """Folder names, or the paths where two runs share a name."""
    names = [r.name for r in runs]
    return [r.name if names.count(r.name) == 1 else str(r.path) for r in runs]


COMPARED = ("best recall", "best val loss", "training time", "peak memory", "status", "updates")


def compare_rows(runs: Sequence[RunData]) -> list[tuple[str, list[str]]]:
    """compare's table: the config differences, then the figures, one column per run."""
    per_run = [dict(figures(r)) for r in runs]
    return config_differences(runs) + [(label, [f[label] for f in per_run]) for label in COMPARED]


# ------------------------------------------------------------------ pages


def check_page_target(path: Path, force: bool) -> None:
    """A page may be written at path: a new file, a page of ours, or anything with ``force``; ReportError else."""
    if path.is_dir():
        raise ReportError(f"{path} is a folder; give a file name for the page, e.g. {path / 'report.html'}.")
    existing = next((parent for parent in path.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ReportError(f"{existing} is a file, not a folder; give another place for the page.")
    if path.exists() and not force and not is_our_page(path):
        raise ReportError(f"{path} exists and was not written by farense-tui; give another file, or add --force "
                          f"to replace it.")


def is_our_page(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(MARK_WITHIN)
    except OSError:
        return False
    return PAGE_MARK.encode() in head


_CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d232b; margin: 0;
       background: #f4f6f8; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 28px 40px; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 16px; margin: 28px 0 10px; border-bottom: 1px solid #d5dbe1; padding-bottom: 4px; }
.sub { color: #5b6672; margin: 0 0 14px; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(130px, 1fr)); gap: 10px; }
.figure { background: #fff; border: 1px solid #dde3e9; border-radius: 6px; padding: 8px 12px; }
.figure .label { color: #5b6672; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
.figure .value { font-size: 18px; font-weight: 600; }
.status-completed, .status-early_stopped { color: #1a7f37; }
.status-training { color: #0969da; }
.status-stopped, .status-unfinished, .status-memory_guard { color: #9a6700; }
.status-diverged, .status-error, .status-disk_full, .status-oom { color: #cf222e; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(500px, 1fr)); gap: 12px; }
.plot { background: #fff; border: 1px solid #dde3e9; border-radius: 6px; padding: 6px; }
.plot img { width: 100%; display: block; }
.plot .waiting { color: #5b6672; padding: 20px 12px; }
.columns { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 16px; }
table { border-collapse: collapse; background: #fff; border: 1px solid #dde3e9; width: 100%; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #eef1f4; vertical-align: top; }
th { background: #f0f3f6; font-weight: 600; }
td.key { color: #3d4751; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
.wrong td { font-size: 13px; }
.expected { color: #1a7f37; }
.got { color: #cf222e; }
.note { color: #9a6700; }
footer { color: #8b949e; font-size: 12px; margin-top: 30px; }
"""

_BASE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
""" + PAGE_MARK + """
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %}</title>
<style>""" + _CSS + """</style>
</head>
<body><main>
{% block body %}{% endblock %}
<footer>Written by farense-tui on {{ created }}.</footer>
</main></body>
</html>
"""

_FIGURES = """<div class="figures">{% for label, value in figures %}
<div class="figure"><div class="label">{{ label }}</div>
<div class="value{% if label == 'status' %} status-{{ value }}{% endif %}">{{ value }}</div></div>{% endfor %}
</div>"""

_REPORT = """{% extends "base" %}
{% block title %}Run report: {{ run.name }}{% endblock %}
{% block body %}
<h1>Run report: {{ run.name }}</h1>
<p class="sub">{{ run.path }}{% if model %} · {{ model }}{% endif %}</p>
{% for note in run.notes %}<p class="note">{{ note }}</p>{% endfor %}
{% include "figures" %}
<h2>Training</h2>
<div class="plots">{% for spec, uri in plots %}
<div class="plot">{% if uri %}<img alt="{{ spec.title }}" src="{{ uri }}">{% else %}
<div class="waiting"><b>{{ spec.title }}</b>: nothing yet; it starts with {{ spec.waiting_for }}.</div>{% endif %}</div>
{% endfor %}</div>
{% if eval %}
<h2>What the model knows (farense-tui eval{% if eval.created %}, {{ eval.created }}{% endif %})</h2>
<table><tr><th>probe</th><th>questions</th>{% for s in eval_systems %}<th>{{ s }}: exact</th><th>{{ s }}: facts</th>{% endfor %}</tr>
{% for p in eval.probes %}<tr><td>{{ p.probe }}</td><td>{{ p.n }}</td>{% for s in eval_systems %}
{% set r = p.systems.get(s) %}<td>{{ share(r['all']['exact']) if r else '' }}</td><td>{{ share(r['all']['facts']) if r else '' }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% for p, system, wrong in wrong_answers %}
<h2>Wrong answers: {{ p.probe }}, {{ system }} ({{ wrong|length }} of {{ p.n }})</h2>
<table class="wrong"><tr><th>question</th><th>expected</th><th>got</th></tr>
{% for w in wrong %}<tr><td>{{ w.question }}</td><td class="expected">{{ w.expected }}</td><td class="got">{{ w.got }}</td></tr>
{% endfor %}</table>
{% endfor %}
{% endif %}
<div class="columns">
<div><h2>Config</h2>{% if config %}<table>{% for k, v in config.items() %}<tr><td class="key">{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
{% else %}<p>This run has no readable config.yaml.</p>{% endif %}</div>
<div><h2>Summary</h2>{% if summary %}<table>{% for k, v in summary.items() %}<tr><td class="key">{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
{% else %}<p>No training_summary.json yet: the run {{ 'is still training' if run.status == 'training' else 'ended without writing one' }}.</p>{% endif %}</div>
</div>
{% endblock %}
"""

_COMPARE = """{% extends "base" %}
{% block title %}Runs compared{% endblock %}
{% block body %}
<h1>Runs compared</h1>
<p class="sub">{{ labels|join(' · ') }}</p>
<table><tr><th>run</th>{% for label in labels %}<th>{{ label }}</th>{% endfor %}</tr>
{% for key, values in rows %}<tr><td class="key">{{ key }}</td>{% for v in values %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</table>
<h2>Loss</h2>
<div class="plot" style="max-width: 960px">{% if loss_uri %}<img alt="loss of the runs" src="{{ loss_uri }}">{% else %}
<div class="waiting">None of these runs has a loss yet.</div>{% endif %}</div>
{% endblock %}
"""


def _templates():
    from jinja2 import DictLoader, Environment, StrictUndefined

    env = Environment(loader=DictLoader({"base": _BASE, "figures": _FIGURES, "report": _REPORT,
                                         "compare": _COMPARE}), autoescape=True, undefined=StrictUndefined)
    env.globals.update(share=_share, created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
    return env


def _wrong_answers(report: dict) -> Iterable[tuple[dict, str, list]]:
    """Each probe's wrong answers, of the adapter where it was asked (else the base)."""
    for p in report["probes"]:
        systems = p.get("systems") or {}
        system = "adapter" if "adapter" in systems else next(iter(systems), None)
        if system is not None:
            yield p, system, systems[system].get("wrong", [])


def report_html(run: RunData, plots: dict[str, Optional[bytes]]) -> str:
    ev = run.eval_report
    systems = [s for s in ("base", "adapter") if ev and any(s in p.get("systems", {}) for p in ev["probes"])]
    return _templates().get_template("report").render(
        run=run, model=run.summary.get("model") or run.config.get("model"), figures=figures(run),
        plots=[(spec, data_uri(plots[spec.name]) if plots.get(spec.name) else None) for spec in PLOTS],
        eval=ev, eval_systems=systems, wrong_answers=list(_wrong_answers(ev)) if ev else [],
        config=flat_config(run.config), summary=flat_config(run.summary),
    )


def compare_loss_png(runs: Sequence[RunData]) -> Optional[bytes]:
    """The runs' training loss (lines) and validation loss (dashed, with points) on one plot."""
    from matplotlib import colormaps

    colors = colormaps["tab10"].colors
    lines = []
    for i, (run, label) in enumerate(zip(runs, run_labels(runs))):
        color = colors[i % len(colors)]
        for column, what, style in (("loss", "", "-"), ("val_loss", " (validation)", "o--")):
            xs, ys = run.series(column)
            if xs:
                lines.append(Line(xs, ys, label + what, style, color))
    return figure_png("Loss", "loss", lines, inches=(9.6, 4.4)) if lines else None


def compare_html(runs: Sequence[RunData]) -> str:
    png = compare_loss_png(runs)
    return _templates().get_template("compare").render(
        labels=run_labels(runs), rows=compare_rows(runs), loss_uri=data_uri(png) if png else None)


# ------------------------------------------------------------------ writing


@dataclass
class Written:
    page: Path
    plots: list[Path]


def write_report(run_dir: str | Path, out: Optional[str | Path] = None, force: bool = False) -> Written:
    """The run's page (``out``, else its report.html) and its plots as PNG files in its plots/ folder."""
    run = read_run(run_dir)
    rd = RunDir(run.path)
    page = Path(out).expanduser() if out else rd.report
    check_page_target(page, force)
    plots = run_plots(run)
    written = []
    for name, png in plots.items():
        if png is not None:
            _write(rd.plots / f"{name}.png", png)
            written.append(rd.plots / f"{name}.png")
    _write(page, report_html(run, plots).encode("utf-8"))
    return Written(page, written)


def write_compare(runs: Sequence[RunData], out: str | Path, force: bool = False) -> Path:
    page = Path(out).expanduser()
    check_page_target(page, force)
    _write(page, compare_html(runs).encode("utf-8"))
    return page


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise ReportError(f"{path} cannot be written ({e.strerror or e}); give a place you can write to, or free "
                          f"space there.") from None

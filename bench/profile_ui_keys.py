"""Where a tab switch's time goes in the UI process alone, while a run trains.

    python bench/profile_ui_keys.py [--switches 100] [--profile out.prof] [--top 40]

The app runs headless at 120x40 (``App.run_test``) against the UI tests' fake engine, which replays the
recorded training stream and then goes on sending a step event every ``--step-seconds`` (the run trains
for as long as the switches last). Once the run trains, F2 and F3 alternate: each key goes in as a
terminal's would (the driver's message queue), and its latency runs until the first frame that shows the new
tab has been rendered to terminal text (headless apps skip that last step; it is done here, so its cost
counts). Per switch it reports the wall time and the process's CPU time to that frame, and the CPU time
of the whole gap between keys (the key's work plus what the app does meanwhile: timers, events); before
the switches, the process's share of a core while the run trains and no key is pressed.
With ``--profile``, the switches run under cProfile and the top functions are printed by cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "ui")]

from fake_engine import FakeEngine, FakeFactory, recorded  # noqa: E402
from textual import events  # noqa: E402
from textual._compositor import CompositorUpdate  # noqa: E402

from farense_core import config as C  # noqa: E402
from farense_core import protocol as P  # noqa: E402
from farense_tui.app import make_app  # noqa: E402

MARKERS = {"f2": ("config", "Effective batch size"), "f3": ("train", "Runs in the checkpoints folder")}


class EndlessEngine(FakeEngine):
    """The fake engine whose run does not end: after the recording's last step, one more step event
    (and its memory) every ``step_seconds`` until stopped."""

    step_seconds = 1.0

    def _train(self, command: P.Train) -> None:
        events_ = recorded("run_events.jsonl")[1:]
        steps = [e for e in events_ if isinstance(e, P.Step)]
        memory = [e for e in events_ if isinstance(e, P.Memory)]
        last = steps[-1].step
        for event in events_:
            if isinstance(event, P.Done):
                break
            if isinstance(event, P.Config):
                event = P.Config(config=command.config, run_dir=command.run_dir)
            if not isinstance(event, P.Finished):
                self._emit(event)
        total = 10 ** 6
        while not self._stop.wait(self.step_seconds):
            last += 1
            step = steps[last % len(steps)]
            self._emit(P.Step(**{**vars(step), "step": last, "total_steps": total}))
            if memory:
                self._emit(memory[last % len(memory)])
        self._emit(P.Done(status="stopped", summary={"steps": last}))
        self._emit(P.Finished(command="train"))
        self._emit(P.State(state="idle"))


class Factory(FakeFactory):
    def __call__(self, role: str, processes: int = 1) -> FakeEngine:
        engine = EndlessEngine(role) if role == "train" else FakeEngine(role)
        self.engines.append(engine)
        return engine


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


async def measure(switches: int, gap: float, idle: float, profiler: cProfile.Profile | None) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="profile-ui-"))
    try:
        return await _measure(work, switches, gap, idle, profiler)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _measure(work: Path, switches: int, gap: float, idle: float,
                   profiler: cProfile.Profile | None) -> dict[str, list[float]]:
    (work / "checkpoints").mkdir()
    C.save_yaml(C.validate(dict(recorded("run_events.jsonl")[2].config))[0], work / "config.yaml")
    app = make_app(engine_factory=Factory(), config_path=work / "config.yaml", checkpoints_dir=work / "checkpoints")
    app.animation_level = "none"
    wanted: list[tuple[str, str]] = []  # the tab the last key asked for: (pane, caption)
    shown_at: list[tuple[float, float]] = []  # (wall, cpu) at the end of the first frame that shows it
    display = app._display

    def display_and_render(screen, renderable) -> None:
        display(screen, renderable)
        if isinstance(renderable, CompositorUpdate):
            renderable.render_segments(app.console)  # what a terminal app does before writing
        if wanted and not shown_at and shown(*wanted[0]):
            shown_at.append((time.perf_counter(), time.process_time()))

    app._display = display_and_render

    async def until(condition, what: str, timeout: float = 30.0) -> None:
        deadline = time.perf_counter() + timeout
        while not condition():
            if time.perf_counter() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            await asyncio.sleep(0.001)

    def shown(pane_id: str, caption: str) -> bool:
        """The pane's caption is on the frame just made (the map a frame is drawn from is the one its
        layout made, in the same call; the frames that follow, the footer's, are not waited for)."""
        visible = app.screen._compositor.visible_widgets
        return any(str(getattr(w, "content", "")) == caption and w in visible
                   for w in app.query_one(f"#{pane_id}").query("Label"))

    results: dict[str, list[float]] = {"wall": [], "cpu": [], "gap_cpu": []}
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f3")
        await pilot.press("s")
        await until(lambda: app.train_tab.history is not None and app.train_tab.history.last_step is not None
                    and app.train_tab.state == "training", "the run to train")
        await until(lambda: app.config_tab.fields_mounted and app.monitor_tab.query("MetricPlot"), "lazy mounts")
        await asyncio.sleep(1.0)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(idle)  # the app's own work while a run trains and nobody types
        results["idle_share"] = [(time.process_time() - cpu0) / (time.perf_counter() - wall0)]
        if profiler is not None:
            profiler.enable()
        for i in range(switches + 2):  # the first two (the first sight of each tab) are not counted
            key = "f2" if i % 2 == 0 else "f3"
            wanted[:], shown_at[:] = [MARKERS[key]], []
            wall0, cpu0 = time.perf_counter(), time.process_time()
            event = events.Key(key, None)
            event.set_sender(app)
            app._driver.send_message(event)
            await until(lambda: shown_at, f"{key}'s tab")
            wall1, cpu1 = shown_at[0]
            await asyncio.sleep(gap)
            if i >= 2:
                results["wall"].append(wall1 - wall0)
                results["cpu"].append(cpu1 - cpu0)
                results["gap_cpu"].append(time.process_time() - cpu0)
        if profiler is not None:
            profiler.disable()
        app.train_tab.action_stop()
        await until(lambda: not app.train_tab.busy, "the run to stop")
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--switches", type=int, default=100)
    ap.add_argument("--gap", type=float, default=0.2, help="seconds between one tab shown and the next key")
    ap.add_argument("--step-seconds", type=float, default=1.0, help="the fake run's seconds per update")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of training without keys, for the idle share")
    ap.add_argument("--profile", help="write cProfile's statistics here and print the top functions")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()
    EndlessEngine.step_seconds = args.step_seconds
    profiler = cProfile.Profile() if args.profile else None
    results = asyncio.run(measure(args.switches, args.gap, args.idle, profiler))
    idle_share = results.pop("idle_share")[0]
    ms = {k: [v * 1000 for v in vals] for k, vals in results.items()}
    print(f"{len(ms['wall'])} F2/F3 switches while training (headless 120x40, fake engine, an update every "
          f"{args.step_seconds:g} s{', under cProfile' if profiler else ''})")
    rows = [("wall", "key to frame, wall", ms["wall"]), ("cpu", "key to frame, CPU", ms["cpu"])]
    rows += [(None, f"  {key} ({tab}), CPU", ms["cpu"][first::2]) for first, key, tab in ((0, "F2", "Config"),
                                                                                          (1, "F3", "Train"))]
    rows.append(("gap_cpu", f"CPU per switch incl. {args.gap:g} s after", ms["gap_cpu"]))
    for _, label, values in rows:
        print(f"  {label:<34} median {statistics.median(values):6.1f} ms   p99 {percentile(values, 0.99):6.1f} ms"
              f"   max {max(values):6.1f} ms")
    print(f"  UI process while training, no keys ({args.idle:g} s): {idle_share:.1%} of a core")
    if profiler is not None:
        profiler.dump_stats(args.profile)
        pstats.Stats(args.profile).sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())

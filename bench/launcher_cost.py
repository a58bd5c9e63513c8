"""What the launcher of a shared run costs: the same 2-process run (the tiny llama, ring backend) started by
``mlx.launch`` as installed and by ``engine.launch`` (mlx.launch with a relay loop that waits), alternating.
Prints the launcher process's CPU seconds and the run's wall time for each.

    .venv/bin/python bench/launcher_cost.py [--iters 150] [--repeats 2]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from enginetools import base_config  # noqa: E402
from farense_tui.engine_client import engine_command, engine_env  # noqa: E402

RUN = """
import sys
from functools import partial
from farense_tui.commands import train
from farense_tui.engine_client import EngineProcess, engine_command
argv = {launcher!r} + ['-n', '2', '--'] + engine_command()
args = train.build_parser().parse_args(['--config', {config!r}, '--run-dir', {run_dir!r}])
sys.exit(train.run(args, make_engine=partial(EngineProcess, argv), tty=False))
"""


def one_run(launcher: list[str], config: Path, run_dir: Path) -> tuple[float, float]:
    """(the launcher's CPU seconds, the run's wall seconds), the launcher sampled until the run ends."""
    tic = time.perf_counter()
    cli = subprocess.Popen([sys.executable, "-c", RUN.format(launcher=launcher, config=str(config),
                                                              run_dir=str(run_dir))],
                           env=engine_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    parent, cpu = psutil.Process(cli.pid), 0.0
    while cli.poll() is None:
        for child in parent.children(recursive=True):
            try:
                if "launch" in " ".join(child.cmdline()):
                    times = child.cpu_times()
                    cpu = times.user + times.system
            except psutil.Error:
                pass
        time.sleep(0.2)
    if cli.returncode != 0:
        raise SystemExit(f"the run failed:\n{cli.stderr.read()[-2000:]}")
    return cpu, time.perf_counter() - tic


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from tiny_model import build_tiny_model, write_chat_data

    work = Path(tempfile.mkdtemp(prefix="bench-launcher-"))
    model, data = build_tiny_model(work / "model"), write_chat_data(work / "data", n_train=23)
    config = work / "c.yaml"
    config.write_text(yaml.safe_dump(base_config(model, data, iters=args.iters, batch_size=4, save_every=10 ** 6,
                                                 steps_per_eval=10 ** 6)))
    launchers = {"mlx.launch": [str(Path(sys.executable).with_name("mlx.launch"))],
                 "engine.launch": engine_command("engine.launch")}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in launchers}
    for rep in range(args.repeats):  # alternating: the machine's load hits both
        for name, launcher in launchers.items():
            results[name].append(one_run(launcher, config, work / f"{name}-{rep}"))
    print(f"{datetime.date.today()} {platform.machine()} {platform.system()} | tiny llama, 2 processes (ring), "
          f"{args.iters} updates, batch 4 | runs: {args.repeats} each, alternating")
    print(f"{'launcher':<16}{'launcher CPU (s)':>18}{'run wall (s)':>14}")
    for name, rows in results.items():
        for cpu, wall in rows:
            print(f"{name:<16}{cpu:>18.1f}{wall:>14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

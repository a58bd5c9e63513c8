"""The UI never imports mlx, and its first frame comes quickly. Each check runs in a fresh
interpreter, so other tests' imports cannot hide or fake a result."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # fresh interpreters

NO_MLX = r"""
import asyncio, sys
sys.path.insert(0, UI_TESTS)
import farense_tui.cli, farense_tui.engine_client
from farense_tui.app import make_app
from fake_engine import FakeEngine

async def main():
    app = make_app(engine_factory=FakeEngine)  # the replaying fake: the Chat tab starts an engine as it opens
    async with app.run_test(size=(120, 40)) as pilot:
        for key in ("f2", "f3", "f4", "f5", "question_mark"):
            await pilot.press(key)

asyncio.run(main())
print("MLX", sorted(m for m in sys.modules if m.split(".")[0] in ("mlx", "mlx_lm")))
"""

FIRST_FRAME = r"""
import time
wall0, cpu0 = time.perf_counter(), time.process_time()
import json
from farense_tui.app import FarenseApp, AppOptions

class Timed(FarenseApp):
    def on_ready(self):  # Ready: the DOM is up and the first frame has been written
        self.exit(json.dumps({"wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0}))

print(Timed(AppOptions()).run(headless=True, size=(120, 40)))
"""


def run_python(code: str, cwd) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_app_never_imports_mlx(tmp_path):
    from pathlib import Path

    ui_tests = repr(str(Path(__file__).resolve().parent))
    assert "MLX []" in run_python(NO_MLX.replace("UI_TESTS", ui_tests), tmp_path)


def test_first_frame_is_quick(tmp_path):
    """Imports plus the first frame, from a cold interpreter. The bound is loose because this
    machine's cores are shared; the figures are printed (pytest -s) for the record."""
    timing = json.loads(run_python(FIRST_FRAME, tmp_path).strip().splitlines()[-1])
    print(f"first frame: {timing['wall']:.3f} s wall, {timing['cpu']:.3f} s CPU")
    assert timing["cpu"] < 1.5

"""The import rules are contracts (``.importlinter``), checked here with import-linter: the core
imports neither MLX nor Textual, the UI never imports MLX or the engine, the engine never imports
Textual or the UI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("farense_core", "engine", "farense_tui")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(tool), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_a_forbidden_import_breaks_its_contract(tmp_path):
    """The contracts are real: the same packages with one UI module importing mlx, and one core module
    importing the engine, fail."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    (tmp_path / "farense_tui" / "sneaky.py").write_text("import mlx.core as mx\n")
    (tmp_path / "farense_core" / "sneaky.py").write_text("from engine import trainer\n")
    done = lint_imports(tmp_path)
    assert done.returncode == 1
    assert "2 broken" in done.stdout and "farense_tui.sneaky -> mlx" in done.stdout
    assert "farense_core.sneaky -> engine" in done.stdout


def test_the_app_starts_without_numpy():
    """numpy costs ~70 ms of the first frame's 0.3 s of imports, and the app needs none of it to start."""
    done = subprocess.run([sys.executable, "-c", "import sys, farense_tui.app; print('numpy' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"

"""What ``python -m engine`` sets up before MLX starts (engine/startup.py): the CUDA graph budget."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_engine_sets_smaller_cuda_graphs_on_linux_unless_the_user_did():
    from engine import startup

    env = {}
    startup.apply(env, "linux")
    assert env == {"MLX_MAX_MB_PER_BUFFER": "200"}
    mine = {"MLX_MAX_MB_PER_BUFFER": "50"}
    startup.apply(mine, "linux")
    assert mine == {"MLX_MAX_MB_PER_BUFFER": "50"}
    mac = {}
    startup.apply(mac, "darwin")  # Metal reads the same variable; not measured there
    assert mac == {}


def test_python_m_engine_applies_it_before_the_server_starts(tmp_path):
    # python -m engine, with its server replaced by one that reports what it runs with
    fake = tmp_path / "engine"
    fake.mkdir()
    for name in ("__init__.py", "__main__.py", "startup.py"):
        (fake / name).write_text((ROOT / "engine" / name).read_text())
    # the real server imports MLX as it is imported: the fake reads the variable then
    (fake / "server.py").write_text("import os\n\nSEEN = os.environ.get('MLX_MAX_MB_PER_BUFFER')\n\n\n"
                                    "def main():\n    print(SEEN)\n    return 0\n")
    env = {k: v for k, v in os.environ.items() if k != "MLX_MAX_MB_PER_BUFFER"}
    env["PYTHONPATH"] = os.pathsep.join((str(tmp_path), str(ROOT)))
    out = subprocess.run([sys.executable, "-m", "engine"], cwd=tmp_path, env=env, capture_output=True, text=True)
    budget = "200" if sys.platform.startswith("linux") else "None"
    assert out.stdout.split() == [budget], out.stderr


"""The real engine, made to die once: at update ``DIE_AT`` of its first run it prints ``DIE_SAYS``
on stderr and ends (exit code 1, or by ``DIE_SIGNAL``), as an engine does that runs out of memory or
is killed by the system. A marker file ``DIE_MARKER`` makes the death happen only once, so a
resumed engine trains on. Run as ``python tests/dying_engine.py``."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import server  # noqa: E402
from farense_core import protocol as P  # noqa: E402

AT, MARKER = int(os.environ["DIE_AT"]), Path(os.environ["DIE_MARKER"])
_emit = server.Context.emit


def emit(self, record):
    _emit(self, record)
    if isinstance(record, P.Step) and record.step == AT and not MARKER.exists():
        MARKER.write_text(str(os.getpid()))
        sys.stderr.write(os.environ.get("DIE_SAYS", "") + "\n")
        sys.stderr.flush()
        if os.environ.get("DIE_SIGNAL"):
            os.kill(os.getpid(), getattr(signal, os.environ["DIE_SIGNAL"]))
        os._exit(1)


server.Context.emit = emit
sys.exit(server.main())

"""``python -m engine.launch ARGS``: MLX's launcher (``mlx.launch``, same arguments), with its relay loop made
to wait.

mlx.launch relays every process's stdin with ``select`` on that process's stdin pipe, which is always
writable, so its relay threads never sleep: measured at 69% of a core on a 2-core machine while two processes
trained (a third of the machine, taken from the training). Here ``select`` waits for output (at most
``WAIT`` seconds) and reports the pipes writable, so commands still reach the processes within ``WAIT``.
"""

from __future__ import annotations

import select
import sys

from mlx._distributed_utils import launch

WAIT = 0.05  # seconds: the most a command waits before mlx.launch passes it on


def waiting_select(readable, writable, errors, timeout=None):
    wait = WAIT if timeout is None else min(timeout, WAIT)
    ready, _, failed = select.select(readable, [], errors, wait)
    return ready, list(writable), failed


if __name__ == "__main__":
    launch.select = waiting_select  # the name mlx.launch's loops call
    sys.argv[0] = "mlx.launch"
    sys.exit(launch.main())

"""A training engine yields the CPU to the programs a person uses, the app first (issue 13: keys waited on
the engine's threads). It runs at nice ``NICE``; that alone changed nothing measurable on Linux, where a
process that leads its own session (the app starts every engine so) is its own scheduling group
(autogroup) and nice weighs only within a group: the group's nice is set too. On an idle machine the
engine still gets every core; only when someone else wants a core does it wait.
"""

from __future__ import annotations

import os
import sys
import time

NICE = 10
AUTOGROUP = "/proc/self/autogroup"


def yield_cpu(platform: str = sys.platform) -> list[str]:
    """Lower the priority of an engine that leads its own session (as the app and the CLI start it; a
    process run from a shell, or a test's, is left as it is), never raise it; returns what changed."""
    if os.getsid(0) != os.getpid():
        return []
    changed = []
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < NICE:
            os.setpriority(os.PRIO_PROCESS, 0, NICE)
            changed.append(f"nice {NICE}")
    except OSError:
        pass
    group = group_nice()
    if platform.startswith("linux") and group is not None and group < NICE:
        for attempt in range(3):  # Linux refuses a second change within 0.1 s machine-wide (EAGAIN)
            try:
                with open(AUTOGROUP, "w") as f:
                    f.write(str(NICE))
                changed.append(f"its scheduling group's nice {NICE}")
                break
            except BlockingIOError:
                time.sleep(0.11)
            except OSError:
                break
    return changed


def group_nice(path: str = AUTOGROUP) -> int | None:
    """This process's scheduling group's nice ("/autogroup-35 nice 0"); None where the system has no
    groups or shows none (some sandboxed kernels keep the file and leave it empty)."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        return None
    if len(words) == 3 and words[1] == "nice" and words[2].lstrip("-").isdigit():
        return int(words[2])
    return None

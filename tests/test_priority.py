"""A training engine yields the CPU (engine/priority.py): in its own session it lowers its nice and, on
Linux, its scheduling group's; run from a shell (or a test) it changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import priority

ROOT = Path(__file__).resolve().parent.parent
PROBE = ("import json, os; from engine import priority; before = priority.group_nice(); "
         "changed = priority.yield_cpu(); "
         "print(json.dumps([before, changed, os.getpriority(os.PRIO_PROCESS, 0), priority.group_nice()]))")


def probe(new_session: bool) -> tuple[int | None, list[str], int, int | None]:
    """The child's scheduling group's nice before yield_cpu, what it changed, its nice and its group's nice
    after. The child's group is its own: a new session gets a new group even where the test's process is in
    none (CI's kernel leaves the file empty for the machine's first group and fills it for a new one)."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True,
                         start_new_session=new_session).stdout
    before, changed, nice, group = json.loads(out)
    return before, changed, nice, group


def test_an_engine_in_its_own_session_yields_the_cpu():
    before, changed, nice, group = probe(new_session=True)
    parent = os.getpriority(os.PRIO_PROCESS, 0)
    assert nice == max(priority.NICE, parent)
    assert (f"nice {priority.NICE}" in changed) == (parent < priority.NICE)
    if sys.platform.startswith("linux") and before is not None and before < priority.NICE:
        assert group == priority.NICE and f"its scheduling group's nice {priority.NICE}" in changed
    else:
        assert group == before and not any("scheduling group" in c for c in changed)


def autogroups_enabled() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


@pytest.mark.skipif(not autogroups_enabled(), reason="this kernel makes no scheduling group per session")
def test_a_new_session_gets_a_group_of_its_own():
    """Where the kernel makes a group per session, a new session's starts at nice 0: the case above then
    takes its first branch, so it tests the change rather than its absence."""
    before, _, _, _ = probe(new_session=True)
    assert before == 0


def test_a_process_in_someone_elses_session_is_left_as_it_is():
    parent_group = priority.group_nice()
    before, changed, nice, group = probe(new_session=False)
    assert changed == [] and nice == os.getpriority(os.PRIO_PROCESS, 0) and group == before == parent_group


@pytest.mark.parametrize("text, nice", [("/autogroup-35 nice 0\n", 0), ("/autogroup-7 nice 10\n", 10),
                                        ("/autogroup-7 nice -5\n", -5), ("", None), ("garbage\n", None)])
def test_the_group_nice_is_read_as_linux_writes_it(tmp_path, text, nice):
    path = tmp_path / "autogroup"
    path.write_text(text)
    assert priority.group_nice(str(path)) == nice


def test_no_group_file_means_no_group(tmp_path):
    assert priority.group_nice(str(tmp_path / "missing")) is None


@pytest.mark.skipif(priority.group_nice() is None, reason="this kernel shows no scheduling group")
def test_the_group_nice_is_read_from_proc():
    with open(priority.AUTOGROUP) as f:
        assert f.read().split()[-2:] == ["nice", str(priority.group_nice())]

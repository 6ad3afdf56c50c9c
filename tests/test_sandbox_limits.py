"""What an executor's process tree uses, read from /proc by the worker."""

from __future__ import annotations

import os
import subprocess
import time

from sandbox import limits
from sandbox.limits import process_tree, tree_usage, usage_of


def _family():
    """A shell with two children that burn no CPU."""
    proc = subprocess.Popen(["bash", "-c", "sleep 60 & sleep 60 & wait"])
    deadline = time.monotonic() + 10
    while len(process_tree(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def test_the_tree_holds_a_process_and_all_its_descendants():
    proc = _family()
    try:
        tree = process_tree(proc.pid)
        assert tree[0] == proc.pid and len(tree) == 3
        # The same answer as scanning every process's parent in /proc.
        children = limits._children_map()
        assert sorted(tree[1:]) == sorted(children[proc.pid])
        assert process_tree(os.getpid())[0] == os.getpid()
        assert proc.pid in process_tree(os.getpid())
    finally:
        proc.kill()
        proc.wait()


def test_the_tree_is_found_by_scanning_proc_where_the_kernel_lists_no_children(monkeypatch):
    proc = _family()
    try:
        expected = sorted(process_tree(proc.pid))
        monkeypatch.setattr(limits, "_children", lambda pid: None)
        assert sorted(process_tree(proc.pid)) == expected
    finally:
        proc.kill()
        proc.wait()


def test_usage_counts_cpu_and_memory_of_the_given_processes():
    burn = subprocess.Popen(["python3", "-c", "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.3: pass\ntime.sleep(60)"])
    try:
        deadline = time.monotonic() + 20
        while tree_usage(burn.pid).cpu_seconds < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        usage = usage_of([burn.pid])
        assert usage.cpu_seconds >= 0.25 and usage.rss_bytes > 1_000_000 and usage.processes == 1
        assert usage_of([burn.pid, 2**22 + 12345]).processes == 1  # a gone process is skipped
    finally:
        burn.kill()
        burn.wait()

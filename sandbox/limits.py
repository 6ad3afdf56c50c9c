"""Per-job limits, and what a process tree uses (read from /proc by the worker).

The worker watches each executor's whole process tree (Python and its JVM): wall clock,
CPU seconds and resident memory per job, sampled from /proc every 0.5 s. Memory is also a
hard limit where the OS allows: each executor runs in its own memory cgroup
(:mod:`sandbox.cgroup`, entered by :func:`hardened_command` before the executor execs), so the
kernel stops an allocation spike between two samples by killing the JVM, and the worker
reads the group's OOM-kill counter. Where the OS refuses a cgroup, the sampling is the only
memory limit (a warning in the worker log). Output rows and bytes are checked inside the
executor before anything is written. Each limit fails the job with its own error class.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from yushan.config import Config

if TYPE_CHECKING:
    from sandbox.cgroup import MemoryGroup

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Limits:
    wall_seconds: float
    cpu_seconds: float
    memory_bytes: int
    output_rows: int
    output_bytes: int

    @classmethod
    def from_config(cls, config: Config) -> Limits:
        # CPU time defaults to twice the wall clock: a job may use both cores all along.
        cpu = float(config.job_cpu_seconds or 2 * config.job_timeout_seconds)
        return cls(
            wall_seconds=float(config.job_timeout_seconds),
            cpu_seconds=cpu,
            memory_bytes=config.executor_memory_bytes,
            output_rows=config.max_output_rows,
            output_bytes=config.max_output_bytes,
        )

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


# Error classes of the limits, and the sentence each shows the submitter.
LIMIT_ERRORS: dict[str, str] = {
    "TimeLimitExceeded": "the job ran longer than the wall-clock limit of {limit:g} s",
    "CpuLimitExceeded": "the job used more than its CPU-time limit of {limit:g} s",
    "MemoryLimitExceeded": "the job used more than its memory limit of {limit:g} MiB",
    "OutputRowsExceeded": "the job's output has more than the limit of {limit:g} rows",
    "OutputBytesExceeded": "the job's output is larger than the limit of {limit:g} bytes",
}


def limit_message(error_class: str, limit: float) -> str:
    return LIMIT_ERRORS[error_class].format(limit=limit)


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    rss_bytes: int
    processes: int


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after it.
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _children(pid: int) -> list[int] | None:
    """``pid``'s children from its threads' ``children`` files; None where the kernel has none."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []  # gone
    for task in tasks:
        try:
            found.extend(int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except FileNotFoundError:
            if not Path(f"/proc/{pid}/task/{task}").exists():
                continue  # the thread ended
            return None  # no CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants. Reads only this tree's ``/proc`` entries where the
    kernel lists children (about 1 ms for an executor and its JVM), else scans all of
    ``/proc`` (about 6 ms on a machine with 130 processes)."""
    tree, stack = [], [pid]
    children_map: dict[int, list[int]] | None = None
    while stack:
        current = stack.pop()
        tree.append(current)
        kids = _children(current) if children_map is None else None
        if kids is None:
            if children_map is None:
                children_map = _children_map()
            kids = children_map.get(current, [])
        stack.extend(kids)
    return tree


def usage_of(members: list[int]) -> Usage:
    """CPU seconds (user + system) and resident bytes of the processes ``members``."""
    cpu_ticks = 0
    rss_pages = 0
    count = 0
    for member in members:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            statm = Path(f"/proc/{member}/statm").read_text().split()
        except OSError:
            continue
        cpu_ticks += int(fields[11]) + int(fields[12])  # utime, stime
        rss_pages += int(statm[1])
        count += 1
    return Usage(cpu_ticks / _TICKS, rss_pages * _PAGE, count)


def tree_usage(pid: int) -> Usage:
    """CPU seconds (user + system) and resident bytes of ``pid`` and its descendants."""
    return usage_of(process_tree(pid))


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def hardened_command(argv: list[str], memory_group: MemoryGroup | None = None) -> list[str]:
    """``argv`` started by a shell that first turns core dumps off (they would hold data)
    and moves itself into the memory cgroup, if any, then execs ``argv``: whatever it
    starts later, the JVM too, is inside.

    A shell, not ``preexec_fn``: Python code between fork and exec is not safe in a process
    with threads (a garbage-collected object's finaliser may wait for a lock another thread
    held at the fork, and the child never execs), and workers have several threads.
    (Not PR_SET_PDEATHSIG either: it fires when the *thread* that started the child ends,
    and executors are started by short-lived threads. The executor watches its parent.)
    """
    if memory_group is None:
        return ["/bin/sh", "-c", 'ulimit -c 0 && exec "$@"', "sh", *argv]
    return ["/bin/sh", "-c", 'ulimit -c 0 && echo $$ > "$1" && shift && exec "$@"', "sh",
            memory_group.procs_path, *argv]

"""A kernel-enforced memory limit for executors: one memory cgroup per executor process.

Each executor is moved into its own memory cgroup before it execs (by the shell that
starts it, :func:`sandbox.limits.hardened_command`), so everything it starts later, its JVM
included, is inside too. The
group is a child of this (the worker's) process's own memory cgroup, named
``yushan-executor-<worker pid>-<random>``, with the job's memory limit and no swap on top:
an allocation beyond it makes the kernel reclaim, then kill a process of the group (the
JVM, normally). The group's OOM-kill counter tells the worker that this is what happened.

Both hierarchies are supported: cgroup v2 (``memory.max``, ``memory.swap.max``,
``memory.events``, ``memory.peak``) where the memory controller is there, else the cgroup v1
memory controller (``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes``,
``memory.oom_control``/``memory.failcnt``, ``memory.max_usage_in_bytes``). Where the OS
refuses (not root, read-only cgroupfs, no memory controller, v2 without the controller
delegated), executors still start: the worker's sampling of ``/proc`` is then the only
memory limit, with a warning in the worker log. ``python -m sandbox.cgroup`` prints what
this host would do.
"""

from __future__ import annotations

import enum
import errno
import functools
import logging
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.limits import pid_alive

log = logging.getLogger(__name__)

PREFIX = "yushan-executor-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-")
PROBE_LIMIT = 64 * 2**20


class MemoryMode(enum.StrEnum):
    CGROUP_V2 = "cgroup2"  # kernel-enforced, cgroup v2 memory controller
    CGROUP_V1 = "cgroup1"  # kernel-enforced, cgroup v1 memory controller
    SAMPLING = "sampling"  # the OS refused a group: /proc sampling only


@dataclass(frozen=True)
class Hierarchy:
    """Where executors' groups are made: this process's own memory cgroup."""

    version: int
    parent: Path


@dataclass(frozen=True)
class MemoryPlan:
    mode: MemoryMode
    reason: str
    hierarchy: Hierarchy | None = None

    @property
    def enforced(self) -> bool:
        return self.hierarchy is not None

    def as_setting(self) -> dict[str, str]:
        return {"mode": self.mode.value, "reason": self.reason}


# --- where this process's memory cgroup is ------------------------------------------------


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cgroup_mounts() -> list[tuple[str, Path, str, set[str]]]:
    """(root, mount point, file system type, super options) of every cgroup mount."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append((_unescape(fields[3]), Path(_unescape(fields[4])), tail[0], set(tail[2].split(","))))
    return mounts


def _own_groups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under "" its v2 path."""
    groups: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            groups[controller] = parts[2]
    return groups


def _inside(point: Path, root: str, path: str) -> Path | None:
    """The directory of cgroup ``path`` in a mount of the hierarchy's ``root`` at ``point``."""
    if root != "/":
        if path != root and not path.startswith(root.rstrip("/") + "/"):
            return None  # this mount does not show our group
        path = path[len(root):]
    found = point / path.lstrip("/")
    return found if found.is_dir() else None


def locate() -> Hierarchy | str:
    """This process's own memory cgroup (cgroup v2 first), or why there is none."""
    try:
        groups, mounts = _own_groups(), _cgroup_mounts()
    except OSError as exc:
        return f"cannot read /proc/self/cgroup or mountinfo ({exc.strerror})"
    if "" in groups:
        for root, point, fstype, _ in mounts:
            if fstype != "cgroup2":
                continue
            here = _inside(point, root, groups[""])
            try:
                controllers = (here / "cgroup.controllers").read_text().split() if here else []
            except OSError:
                controllers = []
            if here and "memory" in controllers:
                return Hierarchy(2, here)
    if "memory" in groups:
        for root, point, fstype, options in mounts:
            if fstype == "cgroup" and "memory" in options:
                here = _inside(point, root, groups["memory"])
                if here:
                    return Hierarchy(1, here)
        return "the cgroup v1 memory controller is not mounted where this process can see its group"
    return "no cgroup memory controller for this process (neither cgroup v2 nor v1)"


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _delegate_v2(parent: Path) -> None:
    """cgroup v2 creates a child with the memory controller only where the parent passes it on."""
    control = parent / "cgroup.subtree_control"
    if "memory" not in control.read_text().split():
        _write(control, "+memory")  # EBUSY while the parent itself holds processes


# --- one executor's group -----------------------------------------------------------------


class MemoryGroup:
    """A memory cgroup holding one executor and everything it starts."""

    def __init__(self, hierarchy: Hierarchy, path: Path):
        self.hierarchy = hierarchy
        self.path = path
        self.limit = 0
        # Precomputed for :meth:`enter`, which runs in a forked child before exec.
        self._procs = str(path / "cgroup.procs")

    @property
    def version(self) -> int:
        return self.hierarchy.version

    @classmethod
    def create(cls, hierarchy: Hierarchy, limit_bytes: int, name: str | None = None) -> MemoryGroup:
        """Make a new group below ``hierarchy.parent`` with ``limit_bytes`` (OSError if refused)."""
        if hierarchy.version == 2:
            _delegate_v2(hierarchy.parent)
        path = hierarchy.parent / (name or f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        path.mkdir()
        group = cls(hierarchy, path)
        try:
            group.set_limit(limit_bytes)
        except OSError:
            group.remove(timeout=0)
            raise
        group.counts_kills  # noqa: B018 - asked while the group surely exists, then kept
        return group

    def set_limit(self, limit_bytes: int) -> None:
        """The group's memory limit, swap included (OSError if the kernel refuses it)."""
        limit = str(int(limit_bytes))
        if self.version == 2:
            _write(self.path / "memory.max", limit)
            if (self.path / "memory.swap.max").exists():
                _write(self.path / "memory.swap.max", "0")
        else:
            # v1 keeps memory.memsw.limit_in_bytes >= memory.limit_in_bytes: the order of the
            # two writes depends on the direction.
            memsw = self.path / "memory.memsw.limit_in_bytes"
            files = [self.path / "memory.limit_in_bytes"] + ([memsw] if memsw.exists() else [])
            if int(limit) > int(files[0].read_text()):
                files.reverse()
            for path in files:
                _write(path, limit)
        self.limit = int(limit_bytes)

    @property
    def procs_path(self) -> str:
        """The file a process writes its pid to in order to join the group."""
        return self._procs

    def _read(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text()
        except OSError:
            return None

    def _kill_count(self) -> int | None:
        text = self._read("memory.events" if self.version == 2 else "memory.oom_control")
        for line in (text or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return None

    @functools.cached_property
    def counts_kills(self) -> bool:
        """True where the kernel counts OOM kills (v2; v1 since Linux 4.13)."""
        return self._kill_count() is not None

    def oom_kills(self) -> int | None:
        """How many processes the kernel killed for the group's limit (None: the group is gone).

        Where the kernel does not count kills (v1 before Linux 4.13, ``counts_kills`` False),
        how often the group hit its limit (``memory.failcnt``): a kill among them, or a
        reclaim that sufficed.
        """
        if self.counts_kills or self.version == 2:
            return self._kill_count()
        failcnt = self._read("memory.failcnt")
        return int(failcnt) if failcnt is not None else None

    def peak_bytes(self) -> int | None:
        """Peak memory of the group: since :meth:`reset_peak` on v1, since creation on v2."""
        text = self._read("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")
        return int(text) if text and text.strip().isdigit() else None

    def reset_peak(self) -> None:
        if self.version == 1:
            try:
                _write(self.path / "memory.max_usage_in_bytes", "0")
            except OSError:
                pass

    def members(self) -> list[int]:
        text = self._read("cgroup.procs")
        return [int(pid) for pid in text.split()] if text else []

    def kill_members(self) -> None:
        for pid in self.members():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self, timeout: float = 5.0) -> bool:
        """Kill what is left inside and remove the group; False if it is still busy."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return True
            except FileNotFoundError:
                return True
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    log.warning("memory cgroup %s not removed yet (%s)", self.path.name, exc.strerror)
                    return False
            self.kill_members()  # exiting processes leave the group within milliseconds
            time.sleep(0.02)


# --- this host's answer, once -----------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _probe() -> Hierarchy | str:
    """Where executors' groups can be made here (create, limit, remove once); else why not."""
    found = locate()
    if isinstance(found, str):
        return found
    try:
        group = MemoryGroup.create(found, PROBE_LIMIT, name=f"{PREFIX}{os.getpid()}-probe-{secrets.token_hex(2)}")
    except OSError as exc:
        return f"the OS refused a memory cgroup under {found.parent} ({exc.strerror or exc})"
    if group.oom_kills() is None:
        group.remove(timeout=1)
        return f"the memory cgroup under {found.parent} counts no OOM kills"
    if not group.remove(timeout=1):
        return f"a memory cgroup under {found.parent} could not be removed"
    return found


def plan_memory() -> MemoryPlan:
    """Decide how executors' memory is limited on this host (probed once per process)."""
    found = _probe()
    if isinstance(found, str):
        return MemoryPlan(MemoryMode.SAMPLING, found)
    mode = MemoryMode.CGROUP_V2 if found.version == 2 else MemoryMode.CGROUP_V1
    return MemoryPlan(mode, f"one memory cgroup per executor under {found.parent}", found)


def announce(plan: MemoryPlan) -> None:
    """Log the plan; a missing kernel limit is a visible warning."""
    if plan.enforced:
        log.info("executors run under a kernel memory limit (%s): %s", plan.mode.value, plan.reason)
    else:
        log.warning(
            "WARNING: executors run WITHOUT a kernel memory limit (sampling /proc every 0.5 s "
            "only; a fast allocation spike is not caught): %s",
            plan.reason,
        )


def sweep_groups() -> list[str]:
    """Remove empty executor groups left by workers that are gone (cheap: one listing)."""
    found = _probe()
    if isinstance(found, str):
        return []
    removed = []
    try:
        entries = [e for e in os.scandir(found.parent) if e.name.startswith(PREFIX) and e.is_dir()]
    except OSError:
        return []
    for entry in entries:
        match = _NAME.match(entry.name)
        owner = int(match.group(1)) if match else None
        if owner is not None and pid_alive(owner):
            continue  # a live worker's group (this one's too): its executor may be starting
        group = MemoryGroup(found, Path(entry.path))
        if group.members():
            continue  # an executor of a dead worker that has not died yet: next time
        if group.remove(timeout=0):
            removed.append(entry.name)
    return removed


if __name__ == "__main__":
    found = plan_memory()
    print(f"{found.mode.value}: {found.reason}")

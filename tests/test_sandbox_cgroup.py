"""A kernel-enforced memory limit per executor (sandbox.cgroup), and its fallback.

The kernel-dependent tests run only where the probe finds a memory cgroup this process may
create children in (root, a writable cgroupfs, the memory controller); elsewhere they are
skipped with the probe's reason.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox import cgroup, pool
from sandbox.cgroup import PREFIX, Hierarchy, MemoryGroup, MemoryMode
from sandbox.limits import Limits, Usage, hardened_command, limit_message, pid_alive, process_tree
from sandbox.netns import NetworkMode, NetworkPlan
from sandbox.pool import Executor, ExecutorFault

MiB = 2**20
NO_NETWORK_PLAN = NetworkPlan(NetworkMode.DISABLED, "tests")


def _plan():
    return cgroup.plan_memory()


needs_cgroup = pytest.mark.skipif(
    not _plan().enforced, reason=f"no memory cgroup on this host: {_plan().reason}"
)


def _hierarchy() -> Hierarchy:
    hierarchy = _plan().hierarchy
    assert hierarchy is not None
    return hierarchy


# --- finding this process's memory cgroup ----------------------------------------------------


def test_mountinfo_escapes_and_mount_roots_are_understood(tmp_path):
    assert cgroup._unescape(r"/sys/fs/cgroup/my\040group") == "/sys/fs/cgroup/my group"
    (tmp_path / "process_api" / "abc").mkdir(parents=True)
    assert cgroup._inside(tmp_path, "/", "/process_api/abc") == tmp_path / "process_api" / "abc"
    # A mount of a sub-tree (a container's view): the path is relative to its root.
    assert cgroup._inside(tmp_path, "/host/slice", "/host/slice/process_api/abc") == tmp_path / "process_api" / "abc"
    assert cgroup._inside(tmp_path, "/host/slice", "/elsewhere") is None
    assert cgroup._inside(tmp_path, "/", "/missing") is None


def test_the_probe_answers_with_a_hierarchy_or_a_reason():
    plan = _plan()
    if plan.enforced:
        assert plan.mode in (MemoryMode.CGROUP_V1, MemoryMode.CGROUP_V2)
        assert plan.hierarchy.parent.is_dir()
        # No probe group is left behind.
        assert not [p for p in plan.hierarchy.parent.iterdir() if "-probe-" in p.name]
    else:
        assert plan.mode is MemoryMode.SAMPLING and plan.reason
    assert plan.as_setting() == {"mode": plan.mode.value, "reason": plan.reason}


# --- one group, the kernel and a child --------------------------------------------------------


def _allocating_child(group: MemoryGroup, mib: int) -> subprocess.Popen:
    """A Python child that enters ``group`` before exec (as an executor does) and then
    allocates and touches ``mib`` MiB."""
    code = f"import time\nblob = b'x' * ({mib} * 2**20)\nprint('survived', flush=True)\ntime.sleep(30)"
    return subprocess.Popen(hardened_command([sys.executable, "-c", code], group), stdout=subprocess.PIPE)


@needs_cgroup
def test_the_kernel_kills_a_child_over_its_groups_limit_and_counts_the_kill():
    group = MemoryGroup.create(_hierarchy(), 64 * MiB)
    try:
        assert group.path.name.startswith(f"{PREFIX}{os.getpid()}-") and group.limit == 64 * MiB
        assert group.oom_kills() == 0 and group.members() == []
        child = _allocating_child(group, 256)
        out, _ = child.communicate(timeout=60)
        assert child.returncode == -9, "the child was not killed by the kernel"
        assert b"survived" not in out
        assert group.oom_kills() >= 1
        assert 60 * MiB <= group.peak_bytes() <= 64 * MiB
    finally:
        assert group.remove()
    assert not group.path.exists()


@needs_cgroup
def test_a_child_within_its_limit_lives_in_its_group_and_the_group_goes_with_it():
    group = MemoryGroup.create(_hierarchy(), 256 * MiB)
    child = _allocating_child(group, 32)
    try:
        assert child.stdout.readline() == b"survived\n"
        assert group.members() == [child.pid]
        memory_line = next(
            line for line in Path(f"/proc/{child.pid}/cgroup").read_text().splitlines()
            if (":memory:" in line) or line.startswith("0::")
        )
        assert memory_line.endswith("/" + group.path.name)
        assert group.oom_kills() == 0 and group.peak_bytes() >= 32 * MiB
        group.set_limit(128 * MiB)  # lowering and raising again, swap limit included
        group.set_limit(512 * MiB)
        assert group.limit == 512 * MiB
    finally:
        assert group.remove(), "a group with a live process was not emptied and removed"
        child.wait(timeout=10)
    assert child.returncode == -9 and not group.path.exists()


@needs_cgroup
def test_the_sweep_removes_empty_groups_of_dead_workers_only():
    hierarchy = _hierarchy()
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = MemoryGroup.create(hierarchy, 64 * MiB, name=f"{PREFIX}{dead.pid}-dead")
    starting = MemoryGroup.create(hierarchy, 64 * MiB)  # ours: its executor may be starting
    busy = MemoryGroup.create(hierarchy, 64 * MiB, name=f"{PREFIX}{dead.pid}-busy")
    child = _allocating_child(busy, 1)
    try:
        assert child.stdout.readline() == b"survived\n"
        swept = cgroup.sweep_groups()
        assert orphan.path.name in swept and not orphan.path.exists()
        assert starting.path.exists() and busy.path.exists()
    finally:
        for group in (orphan, starting, busy):
            assert group.remove()
        child.wait(timeout=10)


# --- executors: the kernel's kill is a memory limit, not a crash -------------------------------

# A stand-in executor for the worker's side: speaks the pipe protocol, and on "run" allocates
# the number of MiB given as the job's SQL (or exits with 3 for "exit"), then answers late.
FAKE_EXECUTOR = """
import os, sys, time
from sandbox.protocol import Channel
channel = Channel(int(sys.argv[sys.argv.index('--read-fd') + 1]), int(sys.argv[sys.argv.index('--write-fd') + 1]))
channel.recv()
channel.send({"type": "ready", "pid": os.getpid()})
job = channel.recv()
while job.get("type") == "ping":  # the pool's check before each job
    channel.send({"type": "pong", "ok": True})
    job = channel.recv()
if job["sql"] == "exit":
    os._exit(3)
blob = b"x" * (int(job["sql"]) * 2**20)
time.sleep(20)
channel.send({"type": "result", "job_id": job["job_id"], "outcome": "released"})
"""


@pytest.fixture
def fake_executor(monkeypatch, make_config):
    """``start()`` -> an Executor running FAKE_EXECUTOR through the real start path."""
    def fake(plan, argv: list[str]) -> list[str]:
        # The hardening shell stays in front; `python -m sandbox.executor` becomes the fake.
        at = argv.index(sys.executable)
        return [*argv[:at], sys.executable, "-c", FAKE_EXECUTOR, *argv[at + 3:]]

    monkeypatch.setattr(pool, "wrap_command", fake)
    started: list[Executor] = []

    def start() -> Executor:
        config = make_config()
        config.home.mkdir(parents=True)
        executor = Executor(config, NO_NETWORK_PLAN).start()
        started.append(executor)
        return executor

    yield start
    for executor in started:
        executor.kill()


def _request(sql: str) -> dict:
    return {"job_id": 1, "merchant": "m", "kind": "aggregate", "sql": sql, "prepare": None, "datasets": {}}


def _limits(config, memory_bytes: int) -> Limits:
    return dataclasses.replace(Limits.from_config(config), memory_bytes=memory_bytes, wall_seconds=60)


@pytest.fixture
def no_sampling(monkeypatch):
    """The /proc sampler sees no memory: whatever stops a job here is the kernel."""
    real = pool.usage_of

    def blind(members):
        usage = real(members)
        return Usage(usage.cpu_seconds, 0, usage.processes)

    monkeypatch.setattr(pool, "usage_of", blind)


def _assert_memory_limit_exceeded(report, limit_bytes: int) -> None:
    assert report.faulted and report.stopped is None
    assert report.message["outcome"] == "failed"
    assert report.message["error"] == {
        "class": "MemoryLimitExceeded",
        "message": limit_message("MemoryLimitExceeded", limit_bytes / MiB),
    }


@needs_cgroup
def test_an_executor_killed_by_the_kernel_fails_its_job_as_memory_limit_exceeded(fake_executor, no_sampling):
    executor = fake_executor()
    group = executor.memory_group
    assert group is not None and executor.pid in group.members()
    assert group.limit == executor.config.executor_memory_bytes
    started = time.monotonic()
    report = executor.run(_request("512"), _limits(executor.config, 64 * MiB), lambda progress: None)
    assert time.monotonic() - started < 5  # the kernel, not the 20 s sleep or a sample
    _assert_memory_limit_exceeded(report, 64 * MiB)
    assert report.usage["memory_peak_bytes"] <= 64 * MiB
    assert not group.path.exists() and executor.memory_group is None  # removed with it
    assert not executor.alive()


@needs_cgroup
def test_a_job_whose_limit_is_below_what_the_executor_holds_fails_at_once(fake_executor, no_sampling):
    executor = fake_executor()
    group = executor.memory_group
    started = time.monotonic()
    # v1 refuses the lower limit (EBUSY), v2 takes it and kills: either way the job's limit.
    report = executor.run(_request("1"), _limits(executor.config, 4 * MiB), lambda progress: None)
    assert time.monotonic() - started < 5
    _assert_memory_limit_exceeded(report, 4 * MiB)
    assert not group.path.exists()


@needs_cgroup
def test_an_executor_that_crashes_for_another_reason_is_still_a_fault(fake_executor, no_sampling):
    executor = fake_executor()
    group = executor.memory_group
    with pytest.raises(ExecutorFault):
        executor.run(_request("exit"), _limits(executor.config, 64 * MiB), lambda progress: None)
    assert not group.path.exists()


@needs_cgroup
def test_an_executor_that_lost_a_process_to_its_limit_while_idle_is_not_handed_out(fake_executor):
    executor = fake_executor()
    executor_pool = pool.ExecutorPool(executor.config, NO_NETWORK_PLAN, size=0)
    respawned = []
    executor_pool._spawn_async = lambda: respawned.append(1)
    executor_pool._idle.put(executor)
    assert executor_pool.acquire(timeout=1) is executor  # healthy
    # While idle, a process of its group (say its JVM, warming up) is killed for memory.
    executor.memory_group.set_limit(48 * MiB)
    hog = _allocating_child(executor.memory_group, 128)
    hog.wait(timeout=30)
    assert hog.returncode == -9 and executor.alive() and not executor.healthy()
    executor_pool._idle.put(executor)
    assert executor_pool.acquire(timeout=1) is None  # replaced, not handed out
    assert respawned == [1]


# --- the fallback: no cgroup, sampling only ------------------------------------------------------


def test_without_cgroups_executors_start_and_the_sampler_still_limits_memory(fake_executor, monkeypatch, caplog):
    monkeypatch.setattr(cgroup, "_probe", lambda: "the OS refused (test)")
    plan = cgroup.plan_memory()
    assert plan.mode is MemoryMode.SAMPLING and not plan.enforced
    with caplog.at_level(logging.WARNING, logger="sandbox.cgroup"):
        cgroup.announce(plan)
    assert "WITHOUT a kernel memory limit" in caplog.text and "the OS refused (test)" in caplog.text
    assert cgroup.sweep_groups() == []

    executor = fake_executor()
    assert executor.memory_group is None
    memory_line = next(
        line for line in Path(f"/proc/{executor.pid}/cgroup").read_text().splitlines()
        if ":memory:" in line or line.startswith("0::")
    )
    assert PREFIX not in memory_line
    started = time.monotonic()
    report = executor.run(_request("256"), _limits(executor.config, 64 * MiB), lambda progress: None)
    assert time.monotonic() - started < 10  # a sample, not the 20 s sleep
    _assert_memory_limit_exceeded(report, 64 * MiB)
    assert "memory_peak_bytes" not in report.usage
    assert not executor.alive()


# --- a real executor and its JVM ----------------------------------------------------------------

# Allowed by the policy (no data read), and the JVM needs about 1.2 GB of heap for it.
HUNGRY_SQL = (
    "SELECT count(*) AS n, "
    "sum(length(concat(repeat('x', 300000000), repeat('y', 300000000)))) AS l"
)


@needs_cgroup
@pytest.mark.slow
def test_a_real_jvm_over_the_limit_fails_the_job_as_memory_limit_exceeded(make_config, no_sampling):
    from sandbox.crypto import load_or_create_key

    config = dataclasses.replace(make_config(), spark_driver_memory="2g")  # heap room: the kernel is first
    config.home.mkdir(parents=True)
    load_or_create_key(config.master_key_path)
    executor = Executor(config, NO_NETWORK_PLAN).start()
    try:
        group = executor.memory_group
        tree = process_tree(executor.pid)
        live = {pid for pid in tree if pid_alive(pid)}  # the JVM leaves a zombie child or two
        assert len(live) >= 2 and live <= set(group.members())  # the JVM is inside too
        # Room for the policy check and planning, not for the query's strings.
        limit = int((group.path / ("memory.current" if group.version == 2 else "memory.usage_in_bytes")).read_text())
        limit += 192 * MiB
        started = time.monotonic()
        report = executor.run(_request(HUNGRY_SQL), _limits(config, limit), lambda progress: None)
        elapsed = time.monotonic() - started
    finally:
        executor.kill()
    _assert_memory_limit_exceeded(report, limit)
    assert report.usage["memory_peak_bytes"] <= limit
    assert elapsed < 30
    assert not group.path.exists()
    deadline = time.monotonic() + 15
    while any(pid_alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(pid_alive(pid) for pid in tree)

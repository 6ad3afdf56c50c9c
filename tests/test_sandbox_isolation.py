"""Executors are cut off from the network (own namespace, loopback only), leave no
workspace behind, and die with everything they started."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from sandbox.limits import pid_alive, process_tree
from sandbox.netns import NetworkMode, announce, plan_network, wrap_command
from sandbox.pool import Executor
from sandbox.workspace import create_workspace, sweep_orphans

PROBE = r"""
import socket, sys
port = int(sys.argv[1])
results = {}
for name, addr in [("host_loopback", ("127.0.0.1", port)), ("internet", ("1.1.1.1", 53))]:
    try:
        socket.create_connection(addr, timeout=2).close()
        results[name] = "connected"
    except OSError as exc:
        results[name] = type(exc).__name__
own = socket.socket(); own.bind(("127.0.0.1", 0)); own.listen(1)
socket.create_connection(own.getsockname(), timeout=2).close()
results["own_loopback"] = "connected"
print(results)
"""


@pytest.fixture
def isolated(make_config):
    plan = plan_network(make_config())
    if plan.mode is not NetworkMode.ISOLATED:
        pytest.skip(f"network namespaces are refused here: {plan.reason}")
    return plan


def test_an_executor_cannot_open_an_outbound_socket(isolated):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    accepted: list[object] = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    port = server.getsockname()[1]
    done = subprocess.run(wrap_command(isolated, [sys.executable, "-c", PROBE, str(port)]),
                          capture_output=True, text=True, timeout=60)
    server.close()
    assert done.returncode == 0, done.stderr
    result = eval(done.stdout)  # noqa: S307 - our own probe's dict
    assert result["host_loopback"] != "connected"  # the host's 127.0.0.1 is another world
    assert result["internet"] != "connected"
    assert result["own_loopback"] == "connected"  # Spark and py4j still work inside
    assert not accepted


def test_an_executor_sees_no_network_interface_but_loopback(isolated):
    done = subprocess.run(wrap_command(isolated, ["ip", "-o", "link"]), capture_output=True, text=True)
    names = [line.split(":")[1].strip() for line in done.stdout.splitlines()]
    assert names == ["lo"]


def test_without_isolation_the_worker_says_so_loudly(make_config, caplog):
    import dataclasses

    base = make_config()
    for config, mode in [
        (dataclasses.replace(base, network_isolation=False), NetworkMode.DISABLED),
        (dataclasses.replace(base, spark_master="spark://127.0.0.1:7077"), NetworkMode.CLUSTER),
    ]:
        plan = plan_network(config)
        assert plan.mode is mode
        assert wrap_command(plan, ["x"]) == ["x"]
        with caplog.at_level(logging.WARNING, logger="sandbox.netns"):
            announce(plan)
        assert "WITHOUT network isolation" in caplog.text


def test_the_network_plan_is_recorded_for_the_admin_page(any_db_config):
    from jobs_support import small_world

    from jobs.worker import record_sandbox_setting
    from sandbox.netns import SETTING_KEY
    from yushan.db import session_scope
    from yushan.models import Setting

    small_world(any_db_config)
    import dataclasses

    plan = plan_network(dataclasses.replace(any_db_config, network_isolation=False))
    assert record_sandbox_setting(any_db_config, SETTING_KEY, plan.as_setting())
    # unchanged: no second audit entry
    assert not record_sandbox_setting(any_db_config, SETTING_KEY, plan.as_setting())
    with session_scope(any_db_config) as session:
        assert session.get(Setting, SETTING_KEY).value["mode"] == "disabled"
        import audit

        assert len(audit.query(session, action="admin.sandbox_network")) == 1


def test_orphaned_workspaces_are_swept_and_live_ones_kept(make_config):
    config = make_config()
    mine = create_workspace(config, 7)
    (mine / "data.parquet").write_bytes(b"secret")
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = config.workspaces_dir / f"job-8-{dead.pid}-abcd"
    orphan.mkdir()
    (orphan / "data.parquet").write_bytes(b"secret")
    scratch = config.workspaces_dir / f"executor-{dead.pid}-beef"
    scratch.mkdir()
    unrelated = config.workspaces_dir / "spark-warehouse"
    unrelated.mkdir()
    assert sorted(sweep_orphans(config)) == sorted([orphan.name, scratch.name])
    assert mine.exists() and unrelated.exists() and not orphan.exists()


@pytest.mark.slow
def test_a_real_executor_runs_in_its_namespace_and_dies_with_its_jvm(isolated, make_config):
    config = make_config()
    config.home.mkdir(parents=True)
    executor = Executor(config, isolated).start()
    try:
        tree = process_tree(executor.pid)
        assert len(tree) >= 2  # python and its JVM
        ours = os.readlink("/proc/self/ns/net")
        namespaces = {}
        for pid in tree:
            try:  # short-lived helpers (e.g. `ip`) may be gone by now
                namespaces[pid] = os.readlink(f"/proc/{pid}/ns/net")
            except FileNotFoundError:
                continue
        assert executor.pid in namespaces and len(namespaces) >= 2
        assert all(ns != ours for ns in namespaces.values())
        scratch = [p for p in config.workspaces_dir.iterdir() if p.name.startswith("executor-")]
        assert len(scratch) == 1
    finally:
        executor.kill()
    deadline = time.monotonic() + 15  # the JVM, reparented, is reaped by init
    while any(pid_alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(pid_alive(pid) for pid in tree)
    sweep_orphans(config)
    assert not any(p.name.startswith(("executor-", "job-")) for p in config.workspaces_dir.iterdir())

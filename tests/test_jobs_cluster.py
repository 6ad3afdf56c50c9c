"""Cluster mode: YUSHAN_SPARK_MASTER=spark://... works unchanged. A real Spark standalone
master and worker are started from the installed pyspark on 127.0.0.1 and a demo job is
run through them."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pyspark
import pytest
from jobs_support import user

from jobs import service
from jobs.worker import Worker
from sandbox.netns import NetworkMode
from yushan.db import session_scope
from yushan.models import Job

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.spark]

SPARK_HOME = Path(pyspark.__file__).parent
SQL = ("SELECT c.city, count(DISTINCT o.user_id) AS buyers FROM platform.orders o "
       "JOIN platform.consumers c ON o.user_id = c.user_id GROUP BY c.city")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """A standalone master and one small worker; stopped afterwards."""
    work = tmp_path_factory.mktemp("spark-standalone")
    port, ui, worker_ui = _free_port(), _free_port(), _free_port()
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(work), "SPARK_WORKER_DIR": str(work / "worker")}
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    master = subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", str(port), "--webui-port", str(ui)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    worker = subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
         "--host", "127.0.0.1", "--cores", "2", "--memory", "1g", "--webui-port", str(worker_ui),
         "--work-dir", str(work / "worker")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if _json(f"http://127.0.0.1:{ui}/json/").get("aliveworkers", 0) >= 1:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the standalone cluster did not come up")
        yield f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}/json/"
    finally:
        for proc in (worker, master):
            os.killpg(proc.pid, 15)
        for proc in (worker, master):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def test_a_demo_job_runs_on_a_standalone_cluster(demo_config, standalone):
    master_url, status_url = standalone
    config = dataclasses.replace(demo_config, spark_master=master_url)
    runner = Worker(config, concurrency=1)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        with session_scope(config) as session:
            job_id = service.submit(session, config, user(session, "insight_isv"), "hanfu_house",
                                    "aggregate", SQL).id
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            with session_scope(config) as session:
                job = session.get(Job, job_id)
                state, error = job.state, job.error
            if state not in ("queued", "running"):
                break
            time.sleep(0.5)
        assert state == "awaiting_approval", error
        status = _json(status_url)
        apps = status.get("activeapps", []) + status.get("completedapps", [])
        assert any(app.get("name") == "yushan-executor" for app in apps)
        assert runner.pool.network.mode is NetworkMode.CLUSTER  # the driver must reach the master
    finally:
        runner.stop()
        thread.join(timeout=60)

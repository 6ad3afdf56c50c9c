"""Job runner benchmark: what the sandbox and policy cost end to end.

Measures, in one run on one demo world:
- cold latency: a job is queued, then a worker starts with no executor: worker start ->
  awaiting_approval (and, within it, how long the executor took to be ready);
  workers run as ``yushan worker`` processes, as under ``yushan serve``, and the jobs are
  submitted from this process, which plays the web process (its own policy check and
  SparkSession);
- warm latency: submit -> awaiting_approval with a warm executor (median);
- plain Spark SQL on the same Parquet files, warm, in this process (median);
- the ratio of the two medians (goal <= 1.10 at scale 1);
- throughput: jobs per minute with two workers, 20 jobs submitted at once.

Usage: .venv/bin/python bench/bench_jobs.py [--scale 1] [--home /tmp/yushan-bench] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

SQL = (
    "SELECT c.city, c.gender, round(avg(o.amount), 2) AS avg_amount, count(DISTINCT o.user_id) AS buyers "
    "FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id "
    "WHERE o.amount >= {floor} GROUP BY c.city, c.gender"
)  # a new literal each run: no result cache helps


def build_world(home: Path, scale: float):
    from yushan.cli import initialise
    from yushan.config import Config, set_config

    config = Config.from_env(home=home, database_url=f"sqlite:///{home / 'yushan.db'}")
    set_config(config)
    marker = home / f".bench-demo-{scale}"
    if not marker.exists():
        from yushan.demo import build_demo

        t0 = time.time()
        initialise(config)
        build_demo(config, scale=scale, seed=7)
        marker.write_text("built")
        print(f"demo world at scale {scale} built in {time.time() - t0:.0f} s", flush=True)
    import audit

    audit.register_config(config)
    return config


def set_release(config, mode: str) -> None:
    """The consumer datasets' release mode, set as the platform admin would (audited)."""
    from sqlalchemy import select

    from audit import Actor
    from onboarding.platform_datasets import set_release_policy
    from yushan.db import session_scope
    from yushan.models import Dataset, User

    with session_scope(config) as session:
        admin = session.scalars(select(User).where(User.role == "admin")).first()
        names = [d.name for d in session.scalars(select(Dataset).where(Dataset.is_consumer_data))]
        for name in names:
            set_release_policy(session, admin, name, release=mode, actor=Actor.for_user(admin, "cli"))


def ensure_budget(config, merchant: str = "hanfu_house", epsilon: float = 1e6) -> None:
    """A budget that outlasts the run, set as the admin would (audited): this measures jobs,
    not the ledger; a home reused for many runs would otherwise spend its month's budget
    and block the rest (D5)."""
    from sqlalchemy import select

    from audit import Actor
    from jobs.budget import set_budget
    from yushan.db import session_scope
    from yushan.models import Tenant, User

    with session_scope(config) as session:
        admin = session.scalars(select(User).where(User.role == "admin")).first()
        tenant = session.scalars(select(Tenant).where(Tenant.slug == merchant)).one()
        set_budget(session, config, tenant, epsilon, 1e-3, actor=Actor.for_user(admin, "cli"))


def submit(config, sql: str) -> int:
    from jobs_support_bench import user

    from jobs import service
    from yushan.db import session_scope

    with session_scope(config) as session:
        return service.submit(session, config, user(session, "insight_isv"), "hanfu_house", "aggregate", sql).id


def wait_released(config, job_id: int, timeout: float = 900) -> float:
    """The wall-clock time (``time.time()``) at which the job's release was recorded.

    The moment comes from the job's own ``finished_at``, written in the transaction that
    releases it, so neither how often this polls nor the polling itself (which would
    compete with the executor for the CPU) is part of what is measured.
    """
    from datetime import UTC

    from yushan.db import session_scope
    from yushan.models import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(config) as session:
            job = session.get(Job, job_id)
            if job.state == "awaiting_approval":
                finished = job.finished_at
                return (finished if finished.tzinfo else finished.replace(tzinfo=UTC)).timestamp()
            if job.state in ("failed", "blocked", "cancelled"):
                raise RuntimeError(f"job {job_id} ended {job.state}: {job.error or job.violations}")
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} not released in {timeout} s")


class WorkerProcess:
    """``yushan worker`` in its own process, as ``yushan serve`` runs it: the submitting
    (web) process and the worker never share an interpreter."""

    READY = re.compile(r"executor (\d+) ready in ([0-9.]+) s")

    def __init__(self, config):
        env = {**os.environ, "YUSHAN_HOME": str(config.home), "YUSHAN_DATABASE_URL": config.database_url}
        self.proc = subprocess.Popen([sys.executable, "-m", "yushan", "worker"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ready: list[float] = []  # seconds each executor took to be ready
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            match = self.READY.search(line)
            if match:
                self.ready.append(float(match.group(2)))

    def wait_ready(self, executors: int = 1, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ready) < executors:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the worker's executor did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=6,
                        help="alternating job/plain pairs run first and not counted")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="idle seconds after the cold job, for the executor's warm-up")
    parser.add_argument("--release", choices=("dp", "threshold"), default=None,
                        help="set the consumer datasets' release mode first (default: as the "
                             "demo world has it, dp)")
    args = parser.parse_args()
    home = (args.home or Path(f"/tmp/yushan-bench-{args.scale:g}")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = build_world(home, args.scale)
    if args.release:
        set_release(config, args.release)
    ensure_budget(config)
    results: dict[str, object] = {"scale": args.scale, "release": args.release or "as built"}

    # Warm the submitting process's own session (the web process keeps one warm too).
    from sandbox.spark import get_spark

    spark = get_spark(config, "yushan-bench")
    # Cold: the job is queued before the worker starts, so it waits for an executor's JVM
    # and then runs on a JVM that has compiled nothing yet.
    first = submit(config, SQL.format(floor=0.001))
    wait_started = time.time()
    workers: list[WorkerProcess] = []
    try:
        return measure(args, config, spark, results, first, wait_started, workers)
    finally:
        for w in workers:  # never left running, whatever failed
            w.stop()


def measure(args, config, spark, results: dict, first: int, wait_started: float,
            workers: list) -> int:
    worker = WorkerProcess(config)
    workers.append(worker)
    cold = wait_released(config, first) - wait_started
    ready = max(worker.ready, default=0.0)
    results["cold_seconds"] = round(cold, 2)
    results["executor_ready_seconds"] = round(ready, 2)
    print(f"cold: worker start + first job released in {cold:.2f} s "
          f"(executor ready after {ready:.2f} s, then the job on a cold JVM)", flush=True)

    # A warm executor is one that has had idle time to finish its warm-up (the pool starts
    # them ahead of demand); right after a cold start it has compiled only what one job used.
    time.sleep(args.settle)

    # Warm jobs and plain Spark SQL on the same Parquet (same kind of session, warm),
    # alternating so that both see the same machine.
    plain_spark = spark.newSession()
    wh = config.platform_warehouse_dir
    for table in ("orders", "consumers"):
        plain_spark.read.parquet(str(wh / table)).createOrReplaceTempView(table)
    warm, plain = [], []
    for i in range(args.warmup + args.runs):
        t0 = time.time()
        job_id = submit(config, SQL.format(floor=(i + 2) / 1000))
        warm.append(wait_released(config, job_id) - t0)
        t0 = time.monotonic()
        plain_spark.sql(SQL.replace("platform.", "").format(floor=(i + 50) / 1000)).collect()
        plain.append(time.monotonic() - t0)
    print("warm runs:", " ".join(f"{w:.2f}" for w in warm), flush=True)
    print("plain runs:", " ".join(f"{p:.2f}" for p in plain), flush=True)
    # Both JVMs keep compiling for the first runs: those are shown, not counted.
    p, r = statistics.median(warm[args.warmup:]), statistics.median(plain[args.warmup:])
    results.update(warm_median_seconds=round(p, 3), plain_median_seconds=round(r, 3), ratio=round(p / r, 3))
    print(f"warm median {p:.2f} s, plain Spark median {r:.2f} s, ratio {p / r:.2f}", flush=True)

    # Throughput with two workers.
    second = WorkerProcess(config)
    workers.append(second)
    second.wait_ready()
    t0 = time.time()
    ids = [submit(config, SQL.format(floor=(i + 100) / 1000)) for i in range(args.burst)]
    elapsed = max(wait_released(config, job_id) for job_id in ids) - t0
    results["burst_jobs"] = args.burst
    results["burst_seconds"] = round(elapsed, 2)
    results["jobs_per_minute_two_workers"] = round(args.burst / elapsed * 60, 1)
    print(f"{args.burst} jobs on two workers in {elapsed:.1f} s: "
          f"{args.burst / elapsed * 60:.1f} jobs/min", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())

"""Jobs end to end on the demo world: submitted, checked, run by a worker in a warm,
isolated executor, released encrypted, approved, read back; and everything that can go
wrong along the way (limits, runtime errors, a killed worker, another merchant's data)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from jobs_support import ALLOW, audit_actions, job_state, user

import audit
from jobs import lifecycle, quarantine, service
from jobs.errors import NotAllowed, NotApproved
from jobs.queue import reap_expired
from jobs.worker import Worker
from yushan.db import session_scope
from yushan.models import Job, JobState

pytestmark = [pytest.mark.spark, pytest.mark.slow]

JOIN_SQL = (
    "SELECT c.city, c.gender, round(avg(o.amount), 2) AS avg_amount, count(DISTINCT o.user_id) AS buyers "
    "FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id "
    "WHERE o.amount >= {floor} GROUP BY c.city, c.gender"
)
OWN_SQL = "SELECT tier, count(*) AS n FROM hanfu_house.members GROUP BY tier"
FINAL = {"awaiting_approval", "blocked", "failed", "cancelled"}


def submit(config, sql: str, username: str = "insight_isv", merchant: str = "hanfu_house", kind: str = "aggregate") -> int:
    with session_scope(config) as session:
        return service.submit(session, config, user(session, username), merchant, kind, sql).id


def force_queue(config, sql: str, merchant: str, username: str) -> int:
    """Queue a job directly, past the service's request validation and access check
    (defence-in-depth tests)."""
    with session_scope(config) as session:
        submitter = user(session, username)
        from yushan.accounts import get_tenant

        job = lifecycle.create(
            session, merchant_id=get_tenant(session, merchant).id, submitter_id=submitter.id,
            kind="aggregate", sql=sql, name="forced", decision=ALLOW,
            actor=service.actor_for(submitter, "pytest"),
        )
        return job.id


def wait(config, job_id: int, timeout: float = 240, states=FINAL) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = job_state(config, job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} still {job_state(config, job_id).state} after {timeout} s")


def no_job_workspaces(config, within: float = 0.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        if not any(p.name.startswith("job-") for p in config.workspaces_dir.iterdir()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def direct_buyers(spark, config, floor: float) -> list[int]:
    """JOIN_SQL's distinct buyers per (city, gender), by plain Spark on the same files."""
    from pyspark.sql import functions as F

    orders = spark.read.parquet(str(config.platform_warehouse_dir / "orders"))
    consumers = spark.read.parquet(str(config.platform_warehouse_dir / "consumers"))
    groups = (orders.where(F.col("amount") >= floor).join(consumers, "user_id")
              .groupBy("city", "gender").agg(F.countDistinct("user_id").alias("n")))
    return [row.n for row in groups.collect()]


def test_a_demo_job_is_released_encrypted_and_readable_only_after_approval(demo_config, worker, spark):
    job_id = submit(demo_config, JOIN_SQL.format(floor=0))
    job = wait(demo_config, job_id)
    assert job.state == "awaiting_approval", job.error
    # dp mode (the demo's default): groups pass DP partition selection, never more than exist.
    buyers = direct_buyers(spark, demo_config, 0)
    assert job.progress == 1.0
    assert job.release == "dp" and job.epsilon == pytest.approx(1.0)
    assert 0 < job.released_rows <= len(buyers)
    with session_scope(demo_config) as session:
        row = session.get(Job, job_id)
        doc = service.job_json(row, user(session, "insight_isv"))
        assert doc["summary"] is None  # part of the release: nobody sees it before approval
        assert set(doc["accuracy"]) == {"avg_amount", "buyers"}
        output = row.output
        cipher = (demo_config.home / output.storage_path).read_bytes()
        assert b"PAR1" not in cipher and len(output.content_hash) == 64
        with pytest.raises(NotApproved):
            quarantine.read_result(session, demo_config, user(session, "hanfu_owner"), row)
        with pytest.raises(NotAllowed):
            quarantine.approve(session, user(session, "insight_isv"), row)
        quarantine.approve(session, user(session, "hanfu_owner"), row)
    with session_scope(demo_config) as session:
        row = session.get(Job, job_id)
        table = quarantine.read_result(session, demo_config, user(session, "insight_isv"), row)
        assert table.num_rows == job.released_rows
        assert table.column_names == ["city", "gender", "avg_amount", "buyers"]
        with pytest.raises(NotAllowed):
            quarantine.read_result(session, demo_config, user(session, "auditor"), row)
    actions = audit_actions(demo_config, job_id)
    assert actions[:2] == ["job.submit", "job.start"] and actions[-2:] == ["job.approve", "job.download"]
    assert actions.index("budget.charge") < actions.index("job.execute")  # charged before it ran
    assert no_job_workspaces(demo_config)


def test_merchant_data_is_decrypted_only_for_its_own_jobs(demo_config, worker):
    own = wait(demo_config, submit(demo_config, OWN_SQL, username="hanfu_owner"))
    assert own.state == "awaiting_approval" and own.released_rows == 3
    # Even queued past the service's access check, the executor cannot see another merchant's data.
    foreign = force_queue(demo_config, OWN_SQL, merchant="tea_garden", username="tea_owner")
    missing = force_queue(demo_config, OWN_SQL.replace("members", "no_such_table"),
                          merchant="tea_garden", username="tea_owner")
    job, absent = wait(demo_config, foreign), wait(demo_config, missing)
    # Blocked by the executor's own check, with the answer a table that does not exist gets.
    assert (job.state, absent.state) == ("blocked", "blocked")
    assert job.error["class"] == absent.error["class"] == "TABLE_OR_VIEW_NOT_FOUND"
    assert job.error["message"].replace("members", "no_such_table") == absent.error["message"]
    assert not (demo_config.outputs_dir / str(foreign)).exists()
    assert no_job_workspaces(demo_config)


def test_no_merchant_value_is_left_in_the_clear_after_a_shuffling_job(demo_config, worker):
    # A job that shuffles member ids: Spark's shuffle files outlive the job in a warm
    # executor, so they must be encrypted (spark.io.encryption.enabled).
    sql = "SELECT home_store, count(DISTINCT member_id) AS n FROM hanfu_house.members GROUP BY home_store"
    job = wait(demo_config, submit(demo_config, sql, username="hanfu_owner"))
    assert job.state == "awaiting_approval"
    found = subprocess.run(
        ["grep", "-rl", "--binary-files=text", "HF000000", str(demo_config.home)],
        capture_output=True, text=True,
    ).stdout.split()
    assert found == [], f"member ids in the clear under YUSHAN_HOME: {found[:3]}"


@pytest.mark.parametrize("sql", [
    "SELECT * FROM parquet.`{home}/warehouse/platform/consumers`",
    "SELECT TRANSFORM(tier) USING 'cat /etc/passwd' AS (x) FROM hanfu_house.members",
    "SELECT reflect('java.lang.System', 'getenv', 'HOME') AS h",
    "DROP TABLE hanfu_house.members",
    "SELEC tier FROM hanfu_house.members",
])
def test_file_reads_escapes_and_non_queries_are_blocked_inside_the_executor(demo_config, worker, sql):
    # Queued as they are: the executor's check blocks each one, and runs nothing: with an
    # explanation (P7), or, for what Spark cannot parse or resolve, the error as such (P9).
    job = wait(demo_config, force_queue(demo_config, sql.format(home=demo_config.home), "hanfu_house", "hanfu_owner"))
    assert job.state == "blocked", job.error
    if job.violations:
        assert [v["rule"] for v in job.violations] == ["P7"]
        assert job.violations[0]["message"] and job.violations[0]["suggestion"]
    else:
        assert job.error["class"] and job.error["message"]
    assert not (demo_config.outputs_dir / str(job.id)).exists()


DENIED_SQL = "SELECT nick, phone FROM platform.consumers"


def test_a_denied_submission_answers_queued_and_the_executor_blocks_it(demo_config, worker, monkeypatch):
    # Submitting runs no check in the submitting process: the answer is "queued" at once,
    # and the executor's check blocks the job with its reasons before anything runs.
    def web_check(*args, **kwargs):
        raise AssertionError("the submitting process checked the query")

    monkeypatch.setattr(service, "evaluate", web_check)
    with session_scope(demo_config) as session:
        job = service.submit(session, demo_config, user(session, "insight_isv"), "hanfu_house",
                             "aggregate", DENIED_SQL)
        assert job.state == "queued" and not job.violations
        assert service.job_json(job)["state"] == "queued"
        job_id = job.id
    job = wait(demo_config, job_id)
    assert job.state == "blocked"
    assert {v["rule"] for v in job.violations} & {"P1", "P5"}
    assert all(v["message"] and v["suggestion"] for v in job.violations)
    assert audit_actions(demo_config, job_id) == ["job.submit", "job.start", "job.decision"]
    with session_scope(demo_config) as session:
        (entry,) = audit.query(session, job=job_id, action="job.decision")
        assert entry["details"]["stage"] == "executor" and entry["details"]["to"] == "blocked"
        assert entry["details"]["violations"] == job.violations
    assert not (demo_config.outputs_dir / str(job_id)).exists()


# Before the tests that kill executors and workers: it needs a worker in its ordinary state.
def test_a_dp_job_is_charged_at_start_once_or_blocked_before_it_runs(demo_config, worker):
    from sqlalchemy import func, select

    from jobs import budget
    from yushan.accounts import get_tenant
    from yushan.models import BudgetCharge

    with session_scope(demo_config) as session:
        checked = service.check(session, demo_config, user(session, "insight_isv"), "hanfu_house",
                                "aggregate", DP_SQL)
    assert checked.get("release") == "dp"  # the demo's consumer data is in dp mode
    assert checked["decision"] == "allow" and checked["epsilon"] > 0 and checked["budget"]["epsilon_left"] > 0
    cost = checked["epsilon"]
    admin = audit.Actor.system("pytest")

    def set_left(epsilon_left: float) -> None:
        with session_scope(demo_config) as session:
            hanfu = get_tenant(session, "hanfu_house")
            spent = budget.budget_json(session, demo_config, hanfu)["epsilon_spent"]
            budget.set_budget(session, demo_config, hanfu, spent + epsilon_left, 1e-4, admin)

    def charges(job_id: int) -> int:
        with session_scope(demo_config) as session:
            return session.scalar(select(func.count()).select_from(BudgetCharge)
                                  .where(BudgetCharge.job_id == job_id))

    try:
        set_left(cost / 2)
        over = wait(demo_config, submit(demo_config, DP_SQL))
        assert over.state == "blocked" and [v["rule"] for v in over.violations] == ["D5"]
        assert f"epsilon {cost / 2:.6g}" in over.violations[0]["message"]
        assert charges(over.id) == 0 and "job.execute" not in audit_actions(demo_config, over.id)
        set_left(cost * 3)
        ran = wait(demo_config, submit(demo_config, DP_SQL))
        assert ran.state == "awaiting_approval", ran.error
        assert charges(ran.id) == 1
        with session_scope(demo_config) as session:
            doc = service.job_json(session.get(Job, ran.id))
        assert doc["release"] == "dp" and doc["epsilon"] == pytest.approx(cost)
        assert set(doc["accuracy"]) >= {"buyers"}
        actions = audit_actions(demo_config, ran.id)
        assert actions.index("budget.charge") < actions.index("job.execute")
    finally:
        set_left(1000.0)


def test_a_runtime_error_shows_its_class_and_the_audit_trail_keeps_the_rest(demo_config, worker):
    # Casts give NULL (P8: try_ semantics); a function that still fails on a value fails the
    # job. On the merchant's own data its class is shown; the value never is.
    sql = "SELECT tier, sum(to_number(member_id, '9999')) AS s FROM hanfu_house.members GROUP BY tier"
    job = wait(demo_config, submit(demo_config, sql, username="hanfu_owner"))
    assert job.state == "failed"
    assert job.error["class"] not in ("JobFailed", None)
    assert "HF" not in job.error["message"]
    with session_scope(demo_config) as session:
        (entry,) = audit.query(session, job=job.id, action="job.fail")
    assert "HF" in entry["details"]["detail"]  # the full text, value included, for auditors


def test_output_row_limit_fails_the_job_clearly(demo_config, worker):
    normal = worker.limits
    worker.limits = dataclasses.replace(normal, output_rows=2)
    try:
        job = wait(demo_config, submit(demo_config, OWN_SQL, username="hanfu_owner"))
    finally:
        worker.limits = normal
    assert job.state == "failed" and job.error["class"] == "OutputRowsExceeded"
    assert "2 rows" in job.error["message"]


@pytest.mark.parametrize("limit, error_class", [
    ({"memory_bytes": 64 * 2**20}, "MemoryLimitExceeded"),
    ({"wall_seconds": 0.05}, "TimeLimitExceeded"),
])
def test_memory_and_wall_clock_limits_stop_the_job_and_recycle_the_executor(demo_config, worker, limit, error_class):
    normal = worker.limits
    worker.limits = dataclasses.replace(normal, **limit)
    try:
        job = wait(demo_config, submit(demo_config, JOIN_SQL.format(floor=1)))
    finally:
        worker.limits = normal
    # A job that read consumer data fails with the one generic class (P8); the limit it
    # hit is in the audit trail.
    assert job.state == "failed" and job.error == {"class": "JobFailed", "message": "The job could not be completed."}
    with session_scope(demo_config) as session:
        (entry,) = audit.query(session, job=job.id, action="job.fail")
    assert entry["details"]["error"]["class"] == error_class
    after = wait(demo_config, submit(demo_config, JOIN_SQL.format(floor=2)))
    assert after.state == "awaiting_approval"  # a fresh executor took over
    assert no_job_workspaces(demo_config)


def test_ten_submissions_at_once_each_run_exactly_once_with_two_workers(demo_config, worker):
    second = Worker(demo_config, concurrency=1)
    thread = threading.Thread(target=second.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while (second.pool is None or second.pool.started < 1) and time.monotonic() < deadline:
        time.sleep(0.2)  # its executor warm, so that both workers compete for the jobs
    try:
        ids: list[int] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            job_id = submit(demo_config, JOIN_SQL.format(floor=i / 100))
            with lock:
                ids.append(job_id)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(ids)) == 10
        for job_id in ids:
            assert wait(demo_config, job_id, timeout=600).state == "awaiting_approval"
            actions = audit_actions(demo_config, job_id)
            assert actions.count("job.start") == 1 and actions.count("job.execute") == 1
    finally:
        second.stop()
        thread.join(timeout=60)
    assert second.jobs_done >= 1 and worker.jobs_done >= 1  # both took a share


def test_a_worker_killed_mid_job_loses_nothing(demo_config, worker):
    worker.stop()  # only the doomed worker may take the job
    time.sleep(1)
    env = {**os.environ, "YUSHAN_HOME": str(demo_config.home), "YUSHAN_SPARK_MASTER": "local[2]",
           "YUSHAN_SHUFFLE_PARTITIONS": "4", "YUSHAN_SPARK_DRIVER_MEMORY": "1g"}
    doomed = subprocess.Popen([sys.executable, "-c", "from jobs.cli import worker_command; worker_command()"],
                              env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    try:
        job_id = submit(demo_config, JOIN_SQL.format(floor=3))
        wait(demo_config, job_id, states={"running"} | FINAL)
        os.killpg(doomed.pid, signal.SIGKILL)
    finally:
        doomed.wait(timeout=30)
    assert job_state(demo_config, job_id).state == "running"  # until someone notices
    assert reap_expired(demo_config) == {job_id: JobState.QUEUED}  # noticed at once: pid gone
    rescuer = Worker(demo_config, concurrency=1)
    thread = threading.Thread(target=rescuer.run, daemon=True)
    thread.start()
    try:
        job = wait(demo_config, job_id)
        assert job.state == "awaiting_approval" and job.attempts == 2
        assert audit_actions(demo_config, job_id).count("job.retry") == 1
        assert no_job_workspaces(demo_config, within=15)  # the killed executor's workspace was swept
    finally:
        rescuer.stop()
        thread.join(timeout=60)



DP_SQL = ("SELECT c.city, count(DISTINCT o.user_id) AS buyers FROM platform.orders o "
          "JOIN platform.consumers c ON o.user_id = c.user_id GROUP BY c.city")

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
    """Queue a job as if the submit-time check had allowed it (defence-in-depth tests)."""
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
    # Every group with at least k = 50 buyers is released; each smaller one is suppressed.
    buyers = direct_buyers(spark, demo_config, 0)
    assert job.progress == 1.0
    assert job.released_rows == sum(n >= 50 for n in buyers) > 0
    assert job.suppressed_rows == sum(n < 50 for n in buyers)
    with session_scope(demo_config) as session:
        row = session.get(Job, job_id)
        doc = service.job_json(row, user(session, "insight_isv"))
        assert doc["summary"] == {"released_rows": job.released_rows, "suppressed_rows": job.suppressed_rows}
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
        assert min(table.column("buyers").to_pylist()) >= 50  # k held
        with pytest.raises(NotAllowed):
            quarantine.read_result(session, demo_config, user(session, "auditor"), row)
    actions = audit_actions(demo_config, job_id)
    # The submission-time decision runs beside the worker: it may come after job.start.
    assert actions.index("job.decision") > actions.index("job.submit")
    assert [a for a in actions if a != "job.decision"] == [
        "job.submit", "job.start", "job.execute", "job.approve", "job.download",
    ]
    assert no_job_workspaces(demo_config)


def test_merchant_data_is_decrypted_only_for_its_own_jobs(demo_config, worker):
    own = wait(demo_config, submit(demo_config, OWN_SQL, username="hanfu_owner"))
    assert own.state == "awaiting_approval" and own.released_rows == 3
    # Even with the submit-time check skipped, the executor cannot see another merchant's data.
    foreign = force_queue(demo_config, OWN_SQL, merchant="tea_garden", username="tea_owner")
    missing = force_queue(demo_config, OWN_SQL.replace("members", "no_such_table"),
                          merchant="tea_garden", username="tea_owner")
    job, absent = wait(demo_config, foreign), wait(demo_config, missing)
    # Blocked by the executor's own check, with the answer a table that does not exist gets.
    assert (job.state, absent.state) == ("blocked", "blocked")
    [violation], [expected] = job.violations, absent.violations
    assert violation["rule"] == expected["rule"] == "P7"
    assert violation["message"].replace("members", "no_such_table") == expected["message"]
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
    # Queued without the submission-time check: the executor's own check blocks each one
    # with an explanation, as the submission would have (P7), and runs nothing.
    job = wait(demo_config, force_queue(demo_config, sql.format(home=demo_config.home), "hanfu_house", "hanfu_owner"))
    assert job.state == "blocked", job.error
    assert [v["rule"] for v in job.violations] == ["P7"]
    assert job.violations[0]["message"] and job.violations[0]["suggestion"]
    assert not (demo_config.outputs_dir / str(job.id)).exists()


DENIED_SQL = "SELECT nick, phone FROM platform.consumers"


def test_a_denied_submission_comes_back_blocked_while_a_worker_is_waiting(demo_config, worker):
    # The job is queued before the submission-time check, so the idle worker may take it
    # first; the submitter still gets "blocked" and the reasons, and nothing runs.
    for _ in range(3):
        with session_scope(demo_config) as session:
            job = service.submit(session, demo_config, user(session, "insight_isv"), "hanfu_house",
                                 "aggregate", DENIED_SQL)
            assert job.state == "blocked"
            assert {v["rule"] for v in job.violations} & {"P1", "P5"}
            job_id = job.id
        assert wait(demo_config, job_id).state == "blocked"
        actions = audit_actions(demo_config, job_id)
        assert actions[0] == "job.submit" and "job.decision" in actions
        assert "job.execute" not in actions
        assert not (demo_config.outputs_dir / str(job_id)).exists()


def test_a_submission_time_deny_after_the_release_blocks_the_job_and_shreds_the_output(demo_config, worker):
    # Both checks are the same policy, so they disagree only if something changed in
    # between; then the deny wins, even over a job already released.
    job_id = force_queue(demo_config, JOIN_SQL.format(floor=3), "hanfu_house", "insight_isv")
    assert wait(demo_config, job_id).state == "awaiting_approval"
    deny = {"decision": "deny", "columns_read": [], "violations": [{
        "rule": "P1", "column": "buyers", "sources": [], "message": "m", "suggestion": "s"}]}
    with session_scope(demo_config) as session:
        submitter = user(session, "insight_isv")
        job = service.record_submission_decision(session, session.get(Job, job_id), deny,
                                                 service.actor_for(submitter, "pytest"))
        assert job.state == "blocked" and job.violations == deny["violations"]
        assert job.output is not None and job.output.wrapped_key is None  # shredded
    with session_scope(demo_config) as session:
        entry = audit.query(session, job=job_id, action="job.decision")[0]  # the newest
        assert entry["details"]["from"] == "awaiting_approval" and entry["details"]["to"] == "blocked"
        assert entry["details"]["stage"] == "submission"
        with pytest.raises(NotApproved):
            quarantine.read_result(session, demo_config, user(session, "hanfu_owner"), session.get(Job, job_id))


def test_when_the_submission_time_check_fails_the_executor_decides(demo_config, worker, monkeypatch):
    def lost_session(*args, **kwargs):
        raise RuntimeError("the web process lost its Spark session")

    monkeypatch.setattr(service, "evaluate", lost_session)
    monkeypatch.setattr(service, "open_watch", lambda config, job_id: None)  # no relay either
    job_id = submit(demo_config, JOIN_SQL.format(floor=4))
    assert job_state(demo_config, job_id).state in ("queued", "running", "awaiting_approval")
    assert wait(demo_config, job_id).state == "awaiting_approval"
    denied = wait(demo_config, submit(demo_config, DENIED_SQL))
    assert denied.state == "blocked" and denied.violations


def test_a_free_worker_answers_the_submitter_with_its_executors_check(demo_config, worker, monkeypatch):
    # A worker takes the job at once: the submitter is answered with the executor's own
    # decision, relayed by the worker, and this process does not check the query again.
    def second_check(*args, **kwargs):
        raise AssertionError("the submitting process checked the query itself")

    assert wait(demo_config, submit(demo_config, OWN_SQL)).state == "awaiting_approval"  # warm, free
    monkeypatch.setattr(service, "evaluate", second_check)
    allowed = submit(demo_config, JOIN_SQL.format(floor=5))
    assert wait(demo_config, allowed).state == "awaiting_approval"  # the worker is free again
    with session_scope(demo_config) as session:
        submitter = user(session, "insight_isv")
        denied = service.submit(session, demo_config, submitter, "hanfu_house", "aggregate", DENIED_SQL)
        # The answer comes back with the submission, blocked with its violations.
        assert denied.state == "blocked" and "P1" in {v["rule"] for v in denied.violations}
        denied_id = denied.id
    with session_scope(demo_config) as session:
        for job_id, answer in ((allowed, "allow"), (denied_id, "deny")):
            decisions = audit.query(session, job=job_id, action="job.decision")
            submission = [e["details"] for e in decisions if e["details"].get("stage") == "submission"]
            assert [(d["decision"], d["checked_in"]) for d in submission] == [(answer, "executor")]
        assert audit.query(session, job=allowed, action="job.decision")[0]["details"]["columns_read"]


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


def test_twenty_submissions_at_once_each_run_exactly_once_with_two_workers(demo_config, worker):
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

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(ids)) == 20
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


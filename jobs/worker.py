"""The worker: takes jobs from the queue and runs them on warm, isolated executors.

One worker process holds an :class:`~sandbox.pool.ExecutorPool` and ``concurrency`` slot
threads. A slot first waits for a warm executor, then claims a job (so a job is never
claimed by a worker that cannot start it at once), runs it under its lease with heartbeats,
and records the outcome in one transaction with its audit entry. The main thread recovers
jobs of dead workers and sweeps orphaned workspaces.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import select

from audit import record, register_config
from jobs.budget import OverBudget, charge
from jobs.errors import InvalidState, StateConflict
from jobs.health import forget_beat, record_beat
from jobs.lifecycle import transition
from jobs.quarantine import sweep_shredded_outputs
from jobs.queue import (
    Claimed,
    LeaseStatus,
    claim,
    give_back,
    heartbeat,
    reap_expired,
    unclaim,
    worker_actor,
    worker_identity,
)
from jobs.templates.registry import preparation_of
from jobs.wakeup import WakeListener
from sandbox import cgroup
from sandbox.executor import JobOutcome, dataset_to_message
from sandbox.limits import Limits
from sandbox.netns import announce, plan_network
from sandbox.output import StoredOutput, remove_output
from sandbox.pool import Executor, ExecutorFault, ExecutorPool, RunReport, StopReason
from sandbox.protection import BY_KEY, MEMORY_KEY, NETWORK_KEY
from sandbox.workspace import remove_workspace, sweep_orphans
from yushan import logs, metrics
from yushan.catalog import readable_datasets
from yushan.config import Config
from yushan.db import session_scope
from yushan.models import Job, JobOutput, JobState, Setting

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # queue poll while idle, when this host cannot wake the worker
WOKEN_POLL_SECONDS = 0.5  # with wake-ups, polling only catches jobs queued on other hosts
REAP_SECONDS = 5.0
HEARTBEAT_SECONDS = 2.0  # also how soon a cancel reaches a running job


def record_sandbox_setting(config: Config, key: str, value: dict) -> bool:
    """Keep one of the executors' protections where the admin page reads it (audited on change).

    ``key`` is one of :data:`sandbox.protection.PROTECTIONS`; ``value`` the plan's
    ``as_setting()``. True when the recorded value changed.
    """
    protection = BY_KEY[key]
    with session_scope(config) as session:
        setting = session.get(Setting, key)
        if setting is not None and setting.value == value:
            return False
        if setting is None:
            session.add(Setting(key=key, value=value))
        else:
            setting.value = value
        record(
            session, protection.action, actor=worker_actor(),
            objects={"setting": key}, details=value,
        )
    return True


class Worker:
    def __init__(
        self,
        config: Config,
        *,
        concurrency: int = 1,
        pool_size: int | None = None,
        max_jobs_per_executor: int = 50,
        once: bool = False,
    ):
        self.config = config
        self.concurrency = max(1, concurrency)
        self.pool_size = pool_size or max(self.concurrency, config.executor_pool)
        self.max_jobs_per_executor = max_jobs_per_executor
        self.once = once
        self.identity = worker_identity()
        self.limits = Limits.from_config(config)
        self.stopping = threading.Event()
        self.pool: ExecutorPool | None = None
        self.jobs_done = 0
        self._busy_slots = 0
        self._lock = threading.Lock()
        self.wake: WakeListener | None = None

    # -- main loop -----------------------------------------------------------------------

    def run(self) -> None:
        register_config(self.config)  # the audit writer signs checkpoints with this home's key
        swept = sweep_orphans(self.config)
        if swept:
            log.info("removed %d workspaces left by stopped executors", len(swept))
        memory = cgroup.plan_memory()
        cgroup.announce(memory)  # a kernel memory limit, or sampling only
        record_sandbox_setting(self.config, MEMORY_KEY, memory.as_setting())
        swept_groups = cgroup.sweep_groups()  # memory cgroups of executors of dead workers
        if swept_groups:
            log.info("removed %d memory cgroups left by stopped executors", len(swept_groups))
        plan = plan_network(self.config)
        announce(plan)
        record_sandbox_setting(self.config, NETWORK_KEY, plan.as_setting())
        try:
            self.wake = WakeListener(self.config)
        except OSError as exc:
            log.warning("no wake-up socket (%s): polling the queue every %.1f s", exc, POLL_SECONDS)
        self.pool = ExecutorPool(self.config, plan, self.pool_size, self.max_jobs_per_executor)
        self.pool.start()
        slots = [
            threading.Thread(target=self._slot, name=f"slot-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in slots:
            thread.start()
        log.info("worker %s running (%d slots)", self.identity, self.concurrency)
        try:
            next_reap = 0.0
            while not self.stopping.is_set():
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + REAP_SECONDS
                    for job_id, state in reap_expired(self.config).items():
                        log.warning("job %s: its worker stopped; now %s", job_id, state.value)
                    with session_scope(self.config) as session:
                        sweep_shredded_outputs(session, self.config)
                    sweep_orphans(self.config)  # executors that died with another worker
                    cgroup.sweep_groups()  # and their memory cgroups, once they are empty
                    record_beat(self.config, self.identity, self.pool.health())  # /readyz
                if not any(t.is_alive() for t in slots):
                    break
                self.stopping.wait(0.5)
        finally:
            self.stopping.set()
            for thread in slots:
                thread.join(timeout=30)
            self.pool.close()
            forget_beat(self.config, self.identity)
            if self.wake is not None:
                self.wake.close()

    def stop(self) -> None:
        self.stopping.set()

    def _slot(self) -> None:
        if self.pool is None:
            raise RuntimeError("the worker's slots start after its pool (Worker.run)")
        while not self.stopping.is_set():
            executor = self.pool.acquire(timeout=0.5)
            if executor is None:
                continue
            job = claim(self.config, self.identity)
            if job is None:
                self.pool.release(executor)
                if self.once and self._all_idle():
                    self.stopping.set()
                    return
                self._idle()
                continue
            if not executor.ping():
                # Its JVM died between the pool's check and this claim (killed while the
                # slot waited for work): the job goes back untouched, not as a retry.
                log.warning("job %s: executor %s lost its engine before the job started; "
                            "the job goes back to the queue", job.id, executor.pid)
                unclaim(self.config, job, self.identity, "ExecutorLostBeforeStart")
                self.pool.note_fault()
                self.pool.release(executor, faulted=True)
                continue
            self._mark_busy()
            # Every log line about this job names it and the request that submitted it.
            with logs.bind(request_id=job.request_id, job_id=job.id):
                log.info("job %s: claimed (attempt %d)", job.id, job.attempt)
                try:
                    faulted = self.execute(job, executor)
                except Exception:  # a slot outlives any one job; the lease's expiry retries it
                    log.exception("job %s: the worker could not finish it", job.id)
                    faulted = True
                finally:
                    self._mark_idle()
            if faulted:
                executor.kill()
                sweep_orphans(self.config)  # what the killed executor could not remove
            self.pool.release(executor, faulted=faulted)
            self.jobs_done += 1

    def _idle(self) -> None:
        """Wait for a job to be queued: woken at once on this host, else by polling."""
        if self.wake is None:
            self.stopping.wait(POLL_SECONDS)
        elif not self.stopping.is_set():
            self.wake.wait(WOKEN_POLL_SECONDS)

    def _mark_busy(self) -> None:
        with self._lock:
            self._busy_slots += 1

    def _mark_idle(self) -> None:
        with self._lock:
            self._busy_slots -= 1

    def _all_idle(self) -> bool:
        with self._lock:
            return self._busy_slots == 0

    # -- one job -------------------------------------------------------------------------

    def _request(self, job: Claimed) -> dict:
        with session_scope(self.config) as session:
            datasets = readable_datasets(session, self.config, job.merchant)
            row = session.get(Job, job.id)
            # Template jobs: the preparation step the executor runs, rendered here.
            prepare = preparation_of(row.template, row.params, job.merchant) if row else None
        return {
            "job_id": job.id,
            "attempt": job.attempt,  # its output goes to this attempt's own directory
            "merchant": job.merchant,
            "kind": job.kind,
            "sql": job.sql,
            "prepare": prepare,
            "datasets": {name: dataset_to_message(info) for name, info in datasets.items()},
        }

    def execute(self, job: Claimed, executor: Executor) -> bool:
        """Run one claimed job; record its outcome. Returns True when the executor faulted."""
        state = {"last_beat": time.monotonic(), "progress": None, "written": None, "decision": None}

        def tick(progress: float | None) -> StopReason | None:
            if progress is not None:
                state["progress"] = progress
            due = time.monotonic() - state["last_beat"] >= HEARTBEAT_SECONDS
            fresh = state["progress"] is not None and state["progress"] != state["written"]
            if not due and not (fresh and time.monotonic() - state["last_beat"] >= 0.5):
                return None
            state["last_beat"] = time.monotonic()
            state["written"] = state["progress"]
            status = heartbeat(self.config, job.id, self.identity, state["progress"], job.attempt)
            if status is LeaseStatus.CANCELLED:
                return StopReason.CANCELLED
            if status is LeaseStatus.LOST:
                return StopReason.LEASE_LOST
            if self.stopping.is_set() and not self.once:
                return StopReason.SHUTDOWN
            return None

        started = time.monotonic()
        try:
            request = self._request(job)

            def on_start(decision: dict) -> dict | None:
                state["decision"] = decision  # what a failure is judged by (P8)
                return self._charge(job, decision)

            report = executor.run(request, self.limits, tick, on_start)
        except ExecutorFault as exc:
            log.error("job %s: executor fault (%s)", job.id, exc)
            self._give_back(job, "ExecutorLost",
                            "the sandbox running this job died or hung (not the job's error)")
            metrics.job_finished("lost", time.monotonic() - started)
            return True
        checked = ((report.message or {}).get("timings") or {}).get("check")
        if isinstance(checked, (int, float)):
            metrics.policy_check("executor", float(checked))
        if report.stopped is not None:
            self._abandoned(job, report)
            metrics.job_finished("stopped", time.monotonic() - started)
            return True
        outcome = self._record(job, report, state["decision"], _versions(request))
        metrics.job_finished(outcome, time.monotonic() - started)
        return report.faulted

    def _charge(self, job: Claimed, decision: dict) -> dict | None:
        """Go/no-go for a dp job about to run: charge this attempt's privacy cost (in one
        transaction with its audit entry) and answer None, or answer the decision that
        blocks it (D5: over budget; nothing is charged)."""
        with session_scope(self.config) as session:
            row = session.get(Job, job.id)
            if row is None or row.state != JobState.RUNNING.value or row.lease_owner != self.identity:
                # Cancelled or taken over meanwhile: nothing is charged, nothing runs (the
                # outcome is then discarded by _record).
                return {**decision, "decision": "deny", "violations": []}
            try:
                charge(session, self.config, job.id, job.attempt, decision["epsilon"],
                       decision.get("delta") or 0.0, worker_actor())
            except OverBudget as over:
                session.rollback()
                return {**decision, "decision": "deny", "violations": [over.violation()]}
        return None

    def _abandoned(self, job: Claimed, report: RunReport) -> None:
        remove_output(self.config, job.id, job.attempt)
        if report.stopped is StopReason.SHUTDOWN:
            self._give_back(job, "WorkerStopped", "the worker running this job was stopped")
        else:
            log.info("job %s: stopped (%s)", job.id, report.stopped.value)

    def _give_back(self, job: Claimed, error_class: str, message: str) -> None:
        with session_scope(self.config) as session:
            row = session.get(Job, job.id)
            try:
                give_back(
                    session, row, reason=error_class, error_class=error_class,
                    message=message, owner=self.identity,
                )
            except StateConflict:
                pass

    def _record(self, job: Claimed, report: RunReport, heard: dict | None = None,
                versions: dict[str, int] | None = None) -> str:
        """Record the run's outcome; ``heard`` is the executor's decision relayed before it
        ran (a time or memory limit's outcome carries none of its own); ``versions`` the
        platform dataset versions the executor was given. Returns what was recorded:
        ``released``, ``blocked``, ``failed``, or ``discarded`` (the job moved on)."""
        message = report.message or {}
        outcome = message.get("outcome")
        if message.get("workspace"):
            remove_workspace(message["workspace"])  # normally gone already; belt and braces
        recorded = "failed"
        try:
            with session_scope(self.config) as session:
                row = session.get(Job, job.id)
                if outcome == JobOutcome.RELEASED:
                    recorded = "released"
                    self._released(session, row, message, report, self._fence(job), versions or {})
                elif outcome == JobOutcome.BLOCKED:
                    recorded = "blocked"
                    decision = message.get("decision") or {}
                    transition(
                        session, row, JobState.BLOCKED, actor=worker_actor(), lease_owner=self.identity,
                        where=self._fence(job),
                        details={"decision": decision.get("decision"), "stage": "executor",
                                 "violations": decision.get("violations", []),
                                 **({"error": decision["error"]} if decision.get("error") else {})},
                        values={"decision": decision, "violations": decision.get("violations", []),
                                "release": decision.get("release"),
                                # a syntax or name error is reported as such (P9), not as a rule
                                **({"error": decision["error"]} if decision.get("error") else {})},
                    )
                else:
                    error = message.get("error") or {"class": "InternalError", "message": "the job failed"}
                    decision = message.get("decision") or heard
                    # The full text (it may quote data) and the specific error go to the audit
                    # entry only; transition() gives a consumer-data job the generic error (P8).
                    transition(
                        session, row, JobState.FAILED, actor=worker_actor(), lease_owner=self.identity,
                        where=self._fence(job),
                        details={"error": error, "detail": message.get("detail", ""), "usage": report.usage},
                        values={"error": error, **({"decision": decision} if decision else {})},
                    )
        except (StateConflict, InvalidState):
            # Cancelled, blocked at submission or taken over meanwhile: what the run
            # produced is not kept.
            log.info("job %s changed while it ran; its output is discarded", job.id)
            remove_output(self.config, job.id, job.attempt)  # never another attempt's
            return "discarded"
        return recorded

    @staticmethod
    def _fence(job: Claimed) -> tuple:
        """The attempt fence of a recording: the job must still be in this attempt (its
        lease owner is checked too). Checked by the same conditional update that records
        the outcome, so a worker whose lease was lost, say while it was stopped, cannot
        record anything once the job was taken over, even by another slot of this worker."""
        return (Job.attempts == job.attempt,)

    def _released(self, session, row: Job, message: dict, report: RunReport, fence: tuple,
                  versions: dict[str, int]) -> None:
        stored = StoredOutput.from_message(message["output"])
        decision = message.get("decision") or {}
        released, suppressed = int(message["released_rows"]), int(message["suppressed_rows"])
        existing = session.scalar(select(JobOutput).where(JobOutput.job_id == row.id))
        if existing is not None:  # a previous attempt's leftovers
            session.delete(existing)
            session.flush()
        session.add(
            JobOutput(
                job_id=row.id,
                storage_path=stored.storage_path,
                wrapped_key=stored.wrapped_key,
                content_hash=stored.content_hash,
                columns=message.get("columns", []),
                row_count=released,
                suppressed_rows=suppressed,
                byte_size=stored.byte_size,
                summary={"released_rows": released, "suppressed_rows": suppressed},
                created_at=datetime.now(UTC),
            )
        )
        transition(
            session, row, JobState.AWAITING_APPROVAL, actor=worker_actor(), lease_owner=self.identity,
            where=fence,
            details={
                "released_rows": released,
                "suppressed_rows": suppressed,
                "content_hash": stored.content_hash,
                "columns_read": decision.get("columns_read"),
                "datasets_read": decision.get("datasets_read"),
                # The platform data versions the job read (a refresh adds versions).
                "dataset_versions": {name: versions[name.lower()]
                                     for name in decision.get("datasets_read") or ()
                                     if name.lower() in versions},
                "usage": report.usage,
                "timings": message.get("timings"),
                # A template's final query (e.g. lookalike weights): kept in the audit trail.
                **({"prepared_sql": decision["prepared_sql"]} if decision.get("prepared_sql") else {}),
            },
            values={
                "progress": 1.0,
                "released_rows": released,
                "suppressed_rows": suppressed,
                "decision": decision or row.decision,
                "release": decision.get("release"),
                "accuracy": message.get("accuracy") or None,
            },
        )


def _versions(request: dict) -> dict[str, int]:
    """Platform dataset versions the executor was given, by lower-case full name."""
    return {name: info["version"] for name, info in request["datasets"].items()
            if info.get("version") is not None}

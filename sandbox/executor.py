"""An executor: a long-lived process that runs one job at a time, started by a worker.

Started as ``python -m sandbox.executor --read-fd R --write-fd W`` (inside its own network
namespace when the OS allows), it keeps one warm SparkSession and talks to its worker over
two pipes (:mod:`sandbox.protocol`). It never touches the metadata database: it gets what a
job may read from the worker, and answers with an outcome the worker records.

Per job: a private workspace; the job's catalog (only what it may read); the policy check
on this catalog (its gate refuses anything but one plain query before Spark analyses it) (the job's decision: a deny blocks it); merchant
data decrypted into the workspace only when the query reads it; for a ``dp`` job, the
worker's go (it charges the merchant's budget) or no-go; the enforced run; output limits; the
released rows encrypted into ``outputs/<job id>/``; the workspace removed in any case.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sandbox.protocol import Channel, ChannelClosed
from sandbox.warmup import WarmUp
from yushan.catalog import ColumnInfo, DatasetInfo
from yushan.config import Config

log = logging.getLogger("sandbox.executor")


class JobOutcome:
    RELEASED = "released"
    BLOCKED = "blocked"
    FAILED = "failed"


# --- plain data across the pipe ------------------------------------------------------------


def config_to_message(config: Config) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["home"] = str(config.home)
    return data


def config_from_message(data: dict[str, Any]) -> Config:
    return Config(**{**data, "home": Path(data["home"])})


def dataset_to_message(info: DatasetInfo) -> dict[str, Any]:
    return {
        **dataclasses.asdict(info),
        "columns": [dataclasses.asdict(c) for c in info.columns],
        "storage_path": str(info.storage_path),
        "wrapped_key": base64.b64encode(info.wrapped_key).decode() if info.wrapped_key else None,
    }


def dataset_from_message(data: dict[str, Any]) -> DatasetInfo:
    return DatasetInfo(
        **{
            **data,
            "columns": tuple(ColumnInfo(**c) for c in data["columns"]),
            "storage_path": Path(data["storage_path"]),
            "wrapped_key": base64.b64decode(data["wrapped_key"]) if data["wrapped_key"] else None,
        }
    )


# --- one job ---------------------------------------------------------------------------------


class _Progress(threading.Thread):
    """Reports the share of finished tasks of the job's Spark jobs (status tracker)."""

    def __init__(self, spark, group: str, channel: Channel, job_id: int):
        super().__init__(daemon=True, name=f"progress-{job_id}")
        self.spark, self.group, self.channel, self.job_id = spark, group, channel, job_id
        self.stopped = threading.Event()
        self.last = -1.0

    def run(self) -> None:
        tracker = self.spark.sparkContext.statusTracker()
        while not self.stopped.wait(0.3):
            try:
                total = done = 0
                for spark_job in tracker.getJobIdsForGroup(self.group):
                    info = tracker.getJobInfo(spark_job)
                    for stage_id in info.stageIds if info else ():
                        stage = tracker.getStageInfo(stage_id)
                        if stage:
                            total += stage.numTasks
                            done += stage.numCompletedTasks
                if total:
                    # Never 1.0 before the output is stored: later stages may still appear.
                    value = round(min(0.95, done / total), 3)
                    if value > self.last:
                        self.last = value
                        self.channel.send({"type": "progress", "job_id": self.job_id, "progress": value})
            except ChannelClosed:
                return
            except Exception:  # noqa: BLE001, S112 - progress is best effort, never fatal
                continue


def _datasets_read(decision_doc: dict[str, Any], datasets: dict[str, DatasetInfo]) -> set[str]:
    """Encrypted datasets the query reads; all of them if the decision does not say."""
    encrypted = {name for name, info in datasets.items() if info.encrypted}
    named = decision_doc.get("datasets_read")
    if named is None:
        return encrypted
    return encrypted & {str(name).lower() for name in named}


def _policy_check(spark, keystore, sql: str, kind: str, merchant: str, datasets: dict[str, DatasetInfo]):
    from policies import check
    from policies.segment import register_segment_token

    # The merchant's own pseudonym key: tokens differ between merchants.
    register_segment_token(spark, keystore.segment_token_key(merchant), merchant)
    return check(spark, sql, kind=kind, merchant=merchant, datasets=datasets)


def _template_sql(spark, request: dict[str, Any]) -> str | None:
    """The final SQL of a template job with a preparation step, else None.

    A trusted template (jobs/templates) may compute part of its final query here, inside
    the sandbox, with the job's catalog installed (e.g. the lookalike model's weights). The
    worker sends the step already rendered (``request["prepare"]``); the query it returns is
    guarded and policy-checked again before it runs.
    """
    spec = request.get("prepare")
    if not spec:
        return None
    from sandbox.prepare import prepared_sql

    return prepared_sql(spark, spec)


def _ask_to_start(channel: Channel, job_id: int, doc: dict[str, Any]) -> dict[str, Any]:
    """Send the allowed dp decision to the worker and wait for its verdict:
    ``{"go": true}``, or ``{"go": false, "decision": <the blocking decision>}``."""
    channel.send({"type": "charge", "job_id": job_id, "decision": doc})
    while True:
        message = channel.recv()
        if message is not None and message.get("type") == "verdict" and message.get("job_id") == job_id:
            return message


def _forget_job_state(spark, group: str) -> None:
    """Nothing of one job stays in the warm session for the next one."""
    try:
        spark.sparkContext.cancelJobGroup(group)
        spark.catalog.clearCache()
        persistent = spark.sparkContext._jsc.getPersistentRDDs()
        # By key array: iterating the py4j map itself ends in a converted Java exception
        # (25 ms per job).
        for key in persistent.keySet().toArray():
            persistent[key].unpersist(True)  # checkpointed aggregates of the enforced run
    except Exception:  # noqa: BLE001 - best effort; the workspace removal still happens
        log.warning("could not release the cached state of %s", group)


def run_job(spark, config: Config, keystore, request: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """Run one job request; always answer with an outcome message."""
    from sandbox.catalog import CATALOG_LOCK, install_catalog
    from sandbox.collect import write_parquet
    from sandbox.limits import Limits, limit_message
    from sandbox.output import store_output
    from sandbox.redact import limit_error, redact
    from sandbox.storage import decrypt_dataset
    from sandbox.workspace import create_workspace, remove_workspace

    started = time.perf_counter()
    job_id = int(request["job_id"])
    limits = Limits(**request["limits"])
    datasets = {k: dataset_from_message(v) for k, v in request["datasets"].items()}
    sql, kind, merchant = request["sql"], request["kind"], request["merchant"]
    workspace = create_workspace(config, job_id)
    group = f"yushan-job-{job_id}"
    progress = _Progress(spark, group, channel, job_id)
    answer: dict[str, Any] = {"type": "result", "job_id": job_id, "workspace": str(workspace)}
    timings: dict[str, float] = {}
    answer["timings"] = timings
    clock = [started]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 4)
        clock[0] = now

    lap("prepare")
    doc: dict[str, Any] | None = None  # the latest decision: a failure reports it too
    try:
        with CATALOG_LOCK:
            install_catalog(spark, datasets)
            lap("catalog")
            decision = _policy_check(spark, keystore, sql, kind, merchant, datasets)
            doc = decision.to_dict()
            lap("check")
            if not decision.allowed:
                return {**answer, "outcome": JobOutcome.BLOCKED, "decision": doc}
            needed = _datasets_read(doc, datasets)
            if needed:
                # Merchant data exists in the clear only here, only for this job.
                locations = {
                    name: decrypt_dataset(keystore, datasets[name], workspace / "data" / str(datasets[name].id))
                    for name in sorted(needed)
                }
                install_catalog(spark, datasets, locations)
                decision = _policy_check(spark, keystore, sql, kind, merchant, datasets)
                doc = decision.to_dict()
                if not decision.allowed:
                    return {**answer, "outcome": JobOutcome.BLOCKED, "decision": doc}
            prepared = _template_sql(spark, request)
            if prepared is not None:  # a template's final query: checked like any job
                sql = prepared
                decision = _policy_check(spark, keystore, sql, kind, merchant, datasets)
                doc = {**decision.to_dict(), "prepared_sql": sql}
                if not decision.allowed:
                    return {**answer, "outcome": JobOutcome.BLOCKED, "decision": doc}
            if doc.get("release") == "dp":
                # Charged to the merchant's budget by the worker before anything runs, or
                # blocked there (over budget): nothing runs without the worker's go.
                verdict = _ask_to_start(channel, job_id, doc)
                lap("charge")
                if verdict.get("decision"):
                    return {**answer, "outcome": JobOutcome.BLOCKED, "decision": verdict["decision"]}
                if not verdict.get("go"):
                    error = {"class": "BudgetUnavailable", "message": "nothing could charge the job's privacy cost"}
                    return {**answer, "outcome": JobOutcome.FAILED, "error": error, "detail": error["message"]}
            spark.sparkContext.setJobGroup(group, f"job {job_id}", interruptOnCancel=True)
            progress.start()
            result = decision.execute(spark)
            lap("execute")
            frame = result.dataframe
            if getattr(decision, "final", None) is None:
                # Row-level output can be any size: one row beyond the limit is enough to
                # know it is exceeded. An aggregate's groups are few; a LIMIT on top of it
                # would only cost an extra shuffle to one partition.
                frame = frame.limit(limits.output_rows + 1)
            # Written while it arrives, under the output limits: never collected whole.
            plain = workspace / "result.parquet"
            written = write_parquet(frame, plain, limits.output_rows, limits.output_bytes)
            if written.exceeded is not None:
                limit = limits.output_rows if written.exceeded == "OutputRowsExceeded" else limits.output_bytes
                err = limit_error(written.exceeded, limit_message(written.exceeded, limit))
                return {**answer, "outcome": JobOutcome.FAILED, "error": err.public(), "detail": err.full_text,
                        "decision": doc}
            result.confirm()  # the enforced plan passed its re-check: the rows may be kept
            suppressed = int(result.suppressed_rows or 0)
            lap("collect")
        stored = store_output(config, keystore, job_id, plain, attempt=request.get("attempt"))
        lap("store")
        return {
            **answer,
            "outcome": JobOutcome.RELEASED,
            "decision": doc,
            "output": stored.to_message(),
            "columns": [{"name": f.name, "type": str(f.type)} for f in written.schema],
            "released_rows": written.num_rows,
            "suppressed_rows": suppressed,
            # dp jobs: what was spent and each released column's 95% half-width.
            "accuracy": dict(result.accuracy or {}),
            "epsilon": result.epsilon,
            "delta": result.delta,
        }
    except Exception as exc:  # noqa: BLE001 - every failure becomes a redacted outcome (P8)
        err = redact(exc)
        if RESULT_CAP_KEY in str(exc):  # the text names sizes only; it is not shown
            err = limit_error("OutputBytesExceeded", "the job's result is larger than the "
                              "engine's result-size cap (half its memory)")
        lost = engine_lost(spark, exc)
        if lost is not None:  # not the job's error: the engine under it died
            answer["engine_lost"] = lost
        # The worker shows the submitter of a consumer-data job a generic error instead.
        return {**answer, "outcome": JobOutcome.FAILED, "error": err.public(), "detail": err.full_text,
                "decision": doc}
    finally:
        progress.stopped.set()
        _forget_job_state(spark, group)
        remove_workspace(workspace)
        lap("cleanup")  # the answer (and its timings) is sent after this


# --- the engine's health ---------------------------------------------------------------------

# Spark's refusal to collect more than spark.driver.maxResultSize names the setting.
RESULT_CAP_KEY = "spark.driver.maxResultSize"
# The JVM's exit status under -XX:+ExitOnOutOfMemoryError.
JVM_OOM_EXIT = 3


def engine_exit_code(spark) -> int | None:
    """The JVM's exit status when it has died (-9 for a kill), else None."""
    proc = getattr(getattr(spark.sparkContext, "_gateway", None), "proc", None)
    if proc is None:
        return None
    return proc.poll()


def engine_lost(spark, exc: BaseException) -> dict[str, Any] | None:
    """After a job's error: ``{"exit_code"}`` when the JVM died or its gateway broke, else
    None (the job's own error). A JVM exiting on OutOfMemoryError may still be going when
    the gateway's error arrives: a broken connection waits a moment for its exit status."""
    from py4j.protocol import Py4JNetworkError

    broken = isinstance(exc, Py4JNetworkError | ConnectionError | EOFError)
    deadline = time.monotonic() + (3.0 if broken else 0.0)
    while True:
        code = engine_exit_code(spark)
        if code is not None:
            return {"exit_code": code}
        if time.monotonic() >= deadline:
            return {"exit_code": None} if broken else None
        time.sleep(0.05)


def ping_engine(spark) -> dict[str, Any]:
    """One round trip to the JVM: ``{"ok": True}``, or why not (its exit status)."""
    lost = engine_exit_code(spark)
    if lost is not None:
        return {"ok": False, "exit_code": lost}
    try:
        spark.sparkContext._jvm.java.lang.System.nanoTime()
    except Exception as exc:  # noqa: BLE001 - py4j's errors: the gateway is gone
        return {"ok": False, "error": type(exc).__name__, "exit_code": engine_exit_code(spark)}
    return {"ok": True}


# --- the process -----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """End this executor and its JVM as soon as the worker that started it is gone."""
    import signal
    import time

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os.killpg(0, signal.SIGKILL)  # our own process group: us and the JVM

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


IDLE_BEFORE_WARM_UP = 1.0  # seconds without a job before an executor (re)starts warming up


def _quiet_logs() -> None:
    # PySpark logs failed queries with their full text (values included): keep it out of logs.
    for name in ("py4j", "pyspark", "SQLQueryContextLogger"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandbox.executor")
    parser.add_argument("--read-fd", type=int, required=True)
    parser.add_argument("--write-fd", type=int, required=True)
    args = parser.parse_args(argv)
    channel = Channel(args.read_fd, args.write_fd)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="executor %(process)d %(levelname)s %(message)s")
    _quiet_logs()
    _die_with_parent()
    init = channel.recv()
    if not init or init.get("type") != "init":
        return 2
    config = config_from_message(init["config"])

    from sandbox.crypto import KeyStore
    from sandbox.spark import engine_conf, get_spark, stop_spark
    from sandbox.workspace import create_executor_dir, remove_workspace

    scratch = create_executor_dir(config)
    try:
        spark = get_spark(config, "yushan-executor",
                          extra={"spark.local.dir": str(scratch), **engine_conf(config)})
        # Task failures are logged by the JVM with the offending values: nothing is logged.
        spark.sparkContext.setLogLevel("OFF")
        warm_up = WarmUp(spark, scratch)  # JIT-compiles the hot paths while idle
        keystore = KeyStore(config.master_key_path)
        channel.send({"type": "ready", "pid": os.getpid()})
        while True:
            # A job already waiting is handed over at once; only an idle executor warms up.
            message = channel.recv(timeout=None if warm_up.done else IDLE_BEFORE_WARM_UP)
            if message is None:
                warm_up.start()
                message = channel.recv()
            if message is None or message.get("type") == "stop":
                break
            if message.get("type") == "ping":  # before each job: is the engine still there?
                channel.send({"type": "pong", **ping_engine(spark)})
                continue
            if message.get("type") == "run":
                warm_up.stop()  # a waiting job goes first
                channel.send(run_job(spark, config, keystore, message, channel))
    except ChannelClosed:
        pass  # the worker has gone; so do we
    finally:
        try:
            stop_spark()
        finally:
            remove_workspace(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())

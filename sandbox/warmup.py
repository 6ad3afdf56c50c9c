"""Warming up a fresh driver JVM: a synthetic scan, join and distinct aggregation.

Used by a warm executor while it is idle (:mod:`sandbox.executor`) and by the training run
of the class-data-sharing archive (:mod:`sandbox.class_archive` starts
``python -m sandbox.warmup --train-class-archive PATH`` in a child process).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
from pathlib import Path

from policies.planjson import plan_json
from sandbox.spark import get_spark, stop_spark
from yushan.config import Config

log = logging.getLogger("sandbox.executor")

WARM_UP_ROUNDS = 3
WARM_UP_GROUP = "yushan-warm-up"


class WarmUp:
    """Run a synthetic Parquet scan + join + distinct aggregation a few times, in the
    background, whenever the executor is idle, until it has completed once.

    A fresh JVM runs its first queries interpreted; a warm pool should hand out executors
    whose scan, join and aggregation code is already compiled. The executor says it is
    ready before warming up, so that a job arriving at a cold start waits only for the JVM:
    the warm-up is then cancelled, and resumed the next time the executor is idle. Uses
    generated data only.
    """

    def __init__(self, spark, scratch: Path):
        self.spark = spark
        self.path = scratch / "warm-up"
        self.done = False
        self.rounds_done = 0
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        """Start (or resume) warming up, unless it is done or running."""
        if self.done or (self.thread is not None and self.thread.is_alive()):
            return
        self.stopping.clear()
        self.thread = threading.Thread(target=self._run, daemon=True, name="warm-up")
        self.thread.start()

    def stop(self) -> None:
        """Cancel what is still running and wait until the warm-up thread has let go."""
        if self.thread is None or not self.thread.is_alive():
            return
        self.stopping.set()
        self.spark.sparkContext.cancelJobGroup(WARM_UP_GROUP)
        self.thread.join(timeout=30)

    def _run(self) -> None:
        import shutil

        try:
            self.spark.sparkContext.setJobGroup(WARM_UP_GROUP, "warm-up", interruptOnCancel=True)
            self._rounds()
        except Exception:  # noqa: BLE001 - cancelled by a job, or failed: the job runs anyway
            if not self.stopping.is_set():
                log.warning("warm-up did not finish")
        finally:
            if self.done:
                shutil.rmtree(self.path, ignore_errors=True)

    def _rounds(self) -> None:
        from pyspark.sql import functions as F

        spark = self.spark
        written = self.path / "_SUCCESS"
        if not written.exists():
            spark.range(0, 400_000, numPartitions=2).selectExpr(
                "id AS user_id", "CAST(id % 997 AS DECIMAL(12,2)) AS amount",
                "CAST(id % 30 AS STRING) AS city",
            ).write.mode("overwrite").parquet(str(self.path))
        people = spark.range(0, 100_000).selectExpr("id AS user_id", "CAST(id % 2 AS STRING) AS gender")
        while self.rounds_done < WARM_UP_ROUNDS:
            if self.stopping.is_set():
                return
            facts = spark.read.parquet(str(self.path)).where(F.col("amount") >= self.rounds_done)
            facts.join(people, "user_id").groupBy("city", "gender").agg(
                F.round(F.avg("amount"), 2).alias("a"),
                F.countDistinct("user_id").alias("n"),
                F.count(F.when(F.col("amount") != 0, F.col("user_id"))).alias("m"),
            ).toArrow()
            self.rounds_done += 1
        self.done = True
        log.info("warm-up done")


def train_class_archive(target: Path) -> None:
    """Load what a job loads (session, Parquet scan, join, aggregation, plan JSON), then
    let the JVM exit normally, which is when it writes the archive."""
    from pyspark import SparkContext


    with tempfile.TemporaryDirectory(prefix="yushan-class-archive-") as scratch:
        # Local, whatever YUSHAN_SPARK_MASTER says: only the driver's classes are archived.
        # (The training JVM's own options, below, replace any archive it would start from.)
        config = Config.from_env(home=Path(scratch) / "home", database_url="sqlite://",
                                 spark_master="local[2]", class_archive="off")
        options = f"-XX:ArchiveClassesAtExit={target} -Xlog:cds=off -Xlog:cds+dynamic=off"
        spark = get_spark(config, "yushan-class-archive",
                          extra={"spark.driver.extraJavaOptions": options})
        warm_up = WarmUp(spark, Path(scratch))
        warm_up._rounds()
        frame = spark.read.parquet(str(warm_up.path)).groupBy("city").count()
        plan_json(spark, frame._jdf.queryExecution().analyzed())  # Janino's classes too
        proc = SparkContext._gateway.proc
        stop_spark()
        # The JVM exits when its standard input closes; the archive is written then.
        proc.stdin.close()
        if proc.wait(timeout=300) != 0:
            raise SystemExit(f"the training JVM exited with status {proc.returncode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.warmup")
    parser.add_argument("--train-class-archive", type=Path, required=True,
                        help="write the class archive of a warmed-up driver JVM here")
    args = parser.parse_args(argv)
    train_class_archive(args.train_class_archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``yushan worker``: run jobs from the queue (the lead wires this into yushan/cli.py)."""

from __future__ import annotations

import logging
import signal

import click


@click.command("worker")
@click.option("--once", is_flag=True, help="Run the jobs queued now, then exit.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Jobs run at the same time (one warm executor each).")
@click.option("--max-jobs-per-executor", type=click.IntRange(1), default=50, show_default=True,
              help="Recycle an executor after this many jobs.")
def worker_command(once: bool, concurrency: int, max_jobs_per_executor: int) -> None:
    """Run queued jobs in isolated, warm executors until stopped (Ctrl-C / SIGTERM)."""
    from audit import register_config
    from jobs.worker import Worker
    from yushan.config import get_config

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("jobs", "sandbox"):  # operators want to see jobs come and go
        logging.getLogger(name).setLevel(logging.INFO)
    config = get_config()
    register_config(config)
    worker = Worker(config, concurrency=concurrency, once=once,
                    max_jobs_per_executor=max_jobs_per_executor)

    def _stop(signum, _frame):
        logging.getLogger(__name__).info("signal %s: stopping after the current jobs", signum)
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run()
    click.echo(f"worker stopped after {worker.jobs_done} job(s)")

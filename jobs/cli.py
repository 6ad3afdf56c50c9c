"""Job commands: ``yushan worker``, ``submit``, ``check``, ``jobs``, ``approve``, ``download``
(wired into the command line by yushan/cli.py).

``yushan check`` exit codes: 0 allowed, 3 denied by policy, 2 usage, 1 anything else.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from yushan import jsondoc


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


# --- operator commands: the same actions as the API, audited with origin "cli" ----------

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_DENIED = 0, 1, 2, 3
CLI_ORIGIN = "cli"


def _user(session, username: str):
    from sqlalchemy import select

    from yushan.models import User

    found = session.scalar(select(User).where(User.username == username, User.active.is_(True)))
    if found is None:
        raise click.ClickException(f"no active user named {username!r}")
    return found


def _emit(doc: dict, as_json: bool) -> None:
    if as_json:
        click.echo(jsondoc.dumps(doc))
        return
    click.echo(f"job {doc['id']}: {doc['state']}")
    for violation in doc.get("violations") or []:
        click.echo(f"  {violation.get('rule')} {violation.get('column') or ''}: {violation.get('message')}")
        if violation.get("suggestion"):
            click.echo(f"    suggestion: {violation['suggestion']}")
    if doc.get("error"):
        click.echo(f"  error {doc['error'].get('class')}: {doc['error'].get('message')}")
    # Present only once the merchant approved, for those who may see the rows (P8).
    summary = doc.get("summary") or {}
    if summary.get("released_rows") is not None:
        line = f"  released rows {summary['released_rows']}"
        if summary.get("suppressed_rows") is not None:  # never reported in dp mode
            line += f", suppressed rows {summary['suppressed_rows']}"
        click.echo(line)


def _job_error(exc) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_ERROR)


def _explain(doc: dict) -> str:
    """The decision as text for people: each violation with its rule, sources and fix."""
    lines = [f"decision: {doc['decision']}"]
    for v in doc.get("violations", []):
        sources = ", ".join(f"{s['dataset']}.{s['column']} ({s['class']})" for s in v["sources"])
        lines.append(f"- {v['rule']} [{v.get('column') or '(query)'}] {v['message']}")
        if sources:
            lines.append(f"    sources: {sources}")
        lines.append(f"    fix: {v['suggestion']}")
    if doc.get("error"):
        error = doc["error"]
        lines.append(f"error: {error.get('class')}: {error.get('message')}")
    if doc.get("release"):
        lines.append(f"release: {doc['release']}")
    if doc.get("release") == "dp" and doc.get("budget"):
        left = doc["budget"]
        lines.append(f"cost: epsilon {doc.get('epsilon')}; budget left: epsilon {left['epsilon_left']:.6g}, "
                     f"delta {left['delta_left']:.3g} until {left['period_end']}")
        for column, estimate in (doc.get("accuracy") or {}).items():
            lines.append(f"    {column}: ±{estimate.get('ci95')} (95%)")
    return "\n".join(lines)


@click.command("check")
@click.option("--as", "username", required=True, help="The user the check is made as.")
@click.option("--merchant", required=True, help="The merchant the job would run for.")
@click.option("--kind", type=click.Choice(["aggregate", "segment"]), required=True)
@click.option("--sql-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="File holding the job's SQL ('-' is not accepted).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
def check_command(username: str, merchant: str, kind: str, sql_file: Path, as_json: bool) -> None:
    """Dry-run the export policy on a query, as USER for MERCHANT (nothing is executed)."""

    from jobs import service
    from jobs.errors import JobError
    from yushan.config import get_config
    from yushan.db import session_scope

    config = get_config()
    sql = sql_file.read_text(encoding="utf-8")
    try:
        with session_scope(config) as session:
            user = _user(session, username)
            doc = service.check(session, config, user, merchant, kind, sql, origin=CLI_ORIGIN)
    except JobError as exc:
        raise click.ClickException(str(exc)) from None
    doc = {"decision": doc["decision"], "violations": doc.get("violations", []),
           **{k: v for k, v in doc.items() if k not in ("decision", "violations")}}
    click.echo(jsondoc.dumps(doc, indent=2) if as_json else _explain(doc))
    if doc["decision"] != "allow":
        sys.exit(EXIT_DENIED)


@click.command("submit")
@click.option("--as", "username", required=True, help="The user the job is submitted as.")
@click.option("--merchant", required=True)
@click.option("--kind", type=click.Choice(["aggregate", "segment"]), required=True)
@click.option("--sql-file", type=click.File("r"), required=True, help="The query ('-' for stdin).")
@click.option("--name", default=None)
@click.option("--wait", is_flag=True, help="Wait until the job has run.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
def submit_command(username, merchant, kind, sql_file, name, wait, as_json) -> None:
    """Queue a job; the executor's policy check decides (with --wait: exit 3 when denied)."""
    import time

    from jobs import service
    from jobs.errors import JobError
    from yushan.config import get_config
    from yushan.db import session_scope
    from yushan.models import Job

    config = get_config()
    sql = sql_file.read()
    try:
        with session_scope(config) as session:
            user = _user(session, username)
            job = service.submit(session, config, user, merchant, kind, sql, name=name, origin=CLI_ORIGIN)
            job_id = job.id
            doc = service.job_json(job, user)
    except JobError as exc:
        _job_error(exc)
    while wait and doc["state"] in ("queued", "running"):
        time.sleep(0.25)
        with session_scope(config) as session:
            doc = service.job_json(session.get(Job, job_id), _user(session, username))
    _emit(doc, as_json)
    if doc["state"] == "blocked":
        sys.exit(EXIT_DENIED)
    if doc["state"] in ("failed", "cancelled"):
        sys.exit(EXIT_ERROR)


def _visible(session, user, job_id: int):
    from jobs import service

    job = service.get_visible_job(session, user, job_id)
    if job is None:
        raise click.ClickException(f"no job {job_id}")
    return job


@click.command("jobs")
@click.option("--as", "username", required=True, help="The user whose jobs are listed.")
@click.option("--state", default=None, help="Only jobs in this state (queued, running, ...).")
@click.option("--merchant", default=None, help="Only jobs run for this merchant.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the API's JSON list ({\"jobs\": [...], \"next_cursor\": null}), every page.")
def jobs_command(username: str, state: str | None, merchant: str | None, as_json: bool) -> None:
    """List every job USER may see, newest first (all pages, like the API's cursor)."""

    from jobs import service
    from yushan.config import get_config
    from yushan.db import session_scope
    from yushan.models import JobState

    states = [s.value for s in JobState]
    if state is not None and state not in states:
        raise click.BadParameter(f"must be one of: {', '.join(states)}", param_hint="--state")
    config = get_config()
    with session_scope(config) as session:
        user = _user(session, username)
        jobs = service.iter_visible_jobs(session, user, states=(state,) if state else None,
                                         merchant=merchant)
        if as_json:
            docs = [service.job_json(job, user) for job in jobs]
            click.echo(jsondoc.dumps({"jobs": docs, "next_cursor": None}))
            return
        for job in jobs:
            created = job.created_at.strftime("%Y-%m-%d %H:%M") if job.created_at else ""
            click.echo(f"{job.id}  {job.state:<18} {job.merchant.slug:<16} {created}  {job.name}")


@click.command("approve")
@click.argument("job_id", type=int)
@click.option("--as", "username", required=True)
@click.option("--json", "as_json", is_flag=True)
def approve_command(job_id: int, username: str, as_json: bool) -> None:
    """Approve a job's output for release (the job's merchant only)."""
    from jobs import quarantine, service
    from jobs.errors import JobError
    from yushan.config import get_config
    from yushan.db import session_scope

    config = get_config()
    try:
        with session_scope(config) as session:
            user = _user(session, username)
            job = quarantine.approve(session, user, _visible(session, user, job_id), origin=CLI_ORIGIN)
            doc = service.job_json(job, user)
    except JobError as exc:
        _job_error(exc)
    _emit(doc, as_json)


@click.command("download")
@click.argument("job_id", type=int)
@click.option("--as", "username", required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "parquet"]), default="csv",
              show_default=True)
@click.option("--excel", is_flag=True,
              help="CSV for Excel: UTF-8 with a byte-order mark and CRLF line ends.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
              help="File to write (default: standard output; required for parquet).")
def download_command(job_id: int, username: str, fmt: str, excel: bool, output: str | None) -> None:
    """Download an approved job's released rows (the same file as the API's download:
    CSV text cells that could run as spreadsheet formulas get a leading apostrophe)."""
    from jobs import quarantine
    from jobs.errors import JobError
    from jobs.results import stream_result
    from yushan.config import get_config
    from yushan.db import session_scope

    config = get_config()
    if fmt == "parquet" and not output:
        raise click.UsageError("--format parquet needs --output FILE")
    if excel and fmt != "csv":
        raise click.UsageError("--excel applies to --format csv only")
    try:
        with session_scope(config) as session:
            user = _user(session, username)
            opened = quarantine.open_result(session, config, user, _visible(session, user, job_id),
                                            origin=CLI_ORIGIN)
    except JobError as exc:
        _job_error(exc)
    # Written piece by piece, as the API streams it: never the whole result in memory.
    if output:
        with open(output, "wb") as fh:
            for piece in stream_result(opened, fmt, excel=excel):
                fh.write(piece)
    else:
        stdout = click.get_binary_stream("stdout")
        for piece in stream_result(opened, fmt, excel=excel):
            stdout.write(piece)
        stdout.flush()


@click.group("budget")
def budget_cli() -> None:
    """Merchants' differential privacy budgets (epsilon, delta per calendar month)."""


def _budget_merchant(session, slug: str):
    from yushan.accounts import get_tenant
    from yushan.models import TenantKind

    merchant = get_tenant(session, slug)
    if merchant is None or merchant.kind != TenantKind.MERCHANT.value:
        raise click.ClickException(f"no merchant {slug!r}")
    return merchant


def _emit_budget(doc: dict, as_json: bool) -> None:
    if as_json:
        click.echo(jsondoc.dumps(doc))
        return
    click.echo(f"{doc['merchant']}: {doc['period_start']} to {doc['period_end']}")
    click.echo(f"  epsilon {doc['epsilon_spent']:.6g} spent of {doc['epsilon']:.6g}")
    click.echo(f"  delta   {doc['delta_spent']:.3g} spent of {doc['delta']:.3g}")


@budget_cli.command("show")
@click.argument("merchant")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
def budget_show(merchant: str, as_json: bool) -> None:
    """Show MERCHANT's budget for the current period and what it has spent."""
    from jobs import budget
    from yushan.config import get_config
    from yushan.db import session_scope

    config = get_config()
    with session_scope(config) as session:
        doc = budget.budget_json(session, config, _budget_merchant(session, merchant))
    _emit_budget(doc, as_json)


@budget_cli.command("set")
@click.argument("merchant")
@click.option("--epsilon", type=float, required=True, help="The period's epsilon (a positive number).")
@click.option("--delta", type=float, required=True, help="The period's delta (positive, below 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON document.")
def budget_set(merchant: str, epsilon: float, delta: float, as_json: bool) -> None:
    """Raise or lower MERCHANT's budget for the current period (audited); later periods
    open with it."""
    from audit import Actor
    from jobs import budget
    from jobs.errors import JobError
    from yushan.config import get_config
    from yushan.db import session_scope

    config = get_config()
    try:
        with session_scope(config) as session:
            doc = budget.set_budget(session, config, _budget_merchant(session, merchant),
                                    epsilon, delta, Actor.system(CLI_ORIGIN))
    except JobError as exc:
        _job_error(exc)
    _emit_budget(doc, as_json)

"""``yushan upload`` and ``yushan withdraw``: the same actions as the web, audited alike.

Exit codes: 0 ok, 1 refused or failed (the report is printed), 2 usage.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from sqlalchemy import select

from onboarding.errors import OnboardingError
from yushan.config import get_config
from yushan.models import User


def _user(session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username, User.active.is_(True)))
    if user is None:
        raise click.UsageError(f"no active user {username!r}")
    return user


def _actor(user: User):
    from audit import Actor

    return Actor.for_user(user, "cli")


def _fail(exc: OnboardingError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(exc.to_dict(), indent=2))
    else:
        click.echo(f"error ({exc.status} {exc.code}): {exc.message}", err=True)
        for check in (exc.report or {}).get("checks", []):
            if not check["passed"]:
                rows = ", ".join(str(r) for r in check["first_rows"])
                click.echo(f"  {check['check']:<20} {check['column'] or '(file)':<20} "
                           f"{check['failed_rows'] if check['failed_rows'] is not None else '-':>8} "
                           f"rows  first: {rows or '-'}  {check['message']}", err=True)
    sys.exit(1)


@click.command("upload")
@click.option("--as", "username", required=True, help="The merchant user uploading.")
@click.option("--name", required=True, help="Dataset name: a lowercase identifier.")
@click.option("--schema", "schema_file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file: {\"member_key\": ..., \"columns\": [...]}.")
@click.option("--encoding", default="auto", show_default=True,
              help="auto, utf-8, gbk or gb18030.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def upload_command(username: str, name: str, schema_file: Path, encoding: str, as_json: bool,
                   file: Path) -> None:
    """Upload FILE (CSV or Parquet) as <merchant>.NAME after validation."""
    from onboarding.ingest import upload_dataset
    from yushan.db import session_factory

    config = get_config()
    session = session_factory(config)()
    size = file.stat().st_size

    def progress(stage: str, fraction: float) -> None:
        if not as_json:
            click.echo(f"\r{stage:<10} {fraction:6.1%}", err=True, nl=False)
            if fraction >= 1.0 or stage in ("parse", "store"):
                click.echo("", err=True)

    try:
        user = _user(session, username)
        with open(file, "rb") as source:
            result = upload_dataset(
                session, config, user, name=name, schema=schema_file.read_text("utf-8"),
                source=source, filename=file.name, actor=_actor(user), encoding=encoding,
                progress=progress, expected_size=size,
            )
    except OnboardingError as exc:
        _fail(exc, as_json)
    finally:
        session.close()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"accepted: {result.dataset.full_name} ({result.dataset.row_count} rows, "
                   "encrypted at rest)")


@click.command("withdraw")
@click.option("--as", "username", required=True, help="The owning merchant's user.")
@click.option("--json", "as_json", is_flag=True)
@click.argument("name")
def withdraw_command(username: str, as_json: bool, name: str) -> None:
    """Withdraw dataset NAME: its key and files are destroyed (unrecoverable)."""
    from onboarding.withdraw import withdraw
    from yushan.db import session_factory

    config = get_config()
    session = session_factory(config)()
    try:
        user = _user(session, username)
        outcome = withdraw(session, config, user, name, _actor(user))
    except OnboardingError as exc:
        _fail(exc, as_json)
    finally:
        session.close()
    click.echo(json.dumps(outcome) if as_json else f"withdrawn: {outcome['dataset']}")

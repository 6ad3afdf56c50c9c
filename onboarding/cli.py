"""``yushan upload`` and ``yushan withdraw``: the same actions as the web, audited alike.

Exit codes: 0 ok, 1 refused or failed (the report is printed), 2 usage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from sqlalchemy import select

from onboarding.errors import OnboardingError
from yushan import jsondoc
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
        click.echo(jsondoc.dumps(exc.to_dict(), indent=2))
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
        click.echo(jsondoc.dumps(result.to_dict(), indent=2))
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
    click.echo(jsondoc.dumps(outcome) if as_json else f"withdrawn: {outcome['dataset']}")


# ---------------------------------------------------------------- platform datasets (admin)


@click.group("dataset")
def dataset_cli() -> None:
    """Platform datasets: register, refresh, show, list, set-policy, prune (platform admins)."""


def _admin(session, username: str | None) -> User:
    """The acting admin: ``--as``, or the one active admin when there is exactly one."""
    from yushan.models import Role

    if username:
        return _user(session, username)
    admins = list(session.scalars(select(User).where(User.role == Role.ADMIN.value,
                                                     User.active.is_(True))))
    if len(admins) != 1:
        raise click.UsageError("name the acting admin with --as USER")
    return admins[0]


def _pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise click.UsageError(f"{what} {item!r} must read column=value")
        pairs[key] = value
    return pairs


def _platform_call(as_json: bool, username: str | None, fn) -> None:
    """Open a session, resolve the admin, run ``fn(session, config, user, actor)`` and print
    its JSON document (a dataset's, or any document) or a refusal."""
    from yushan.db import session_factory

    config = get_config()
    session = session_factory(config)()
    try:
        user = _admin(session, username)
        document = fn(session, config, user, _actor(user))
    except OnboardingError as exc:
        session.rollback()
        _fail(exc, as_json)
    finally:
        session.close()
    if as_json:
        click.echo(jsondoc.dumps(document, indent=2))
    else:
        _print_dataset(document) if "versions" in document else click.echo(
            jsondoc.dumps(document))


def _print_dataset(doc: dict) -> None:
    click.echo(f"{doc['name']}  version {doc['version']}  {doc['rows']} rows")
    if doc["consumer_data"]:
        click.echo(f"  entity {doc['entity_column']}  release {doc['release']}  k {doc['k']}  "
                   f"max_groups {doc['max_groups']}  max_rows {doc['max_rows']}")
        if doc["release"] == "threshold":
            from onboarding.platform_datasets import DIFFERENCING_WARNING

            click.echo(f"  warning (threshold): {DIFFERENCING_WARNING}")
    for c in doc["columns"]:
        bounds = f"  bounds [{c['bounds'][0]:g}, {c['bounds'][1]:g}]" if c["bounds"] else ""
        click.echo(f"  {c['name']:<24} {c['type']:<16} {c['class']}{bounds}")
    for v in doc["versions"]:
        state = "current" if v["version"] == doc["version"] else (
            "files kept" if v["files_kept"] else "files removed")
        click.echo(f"  v{v['version']:<4} {v['rows']} rows  {v['created_at']}  {state}")


_as = click.option("--as", "username", help="The acting platform admin (default: the only one).")
_json = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")


def _policy_options(fn):
    for option in reversed((
        click.option("--release", type=click.Choice(["dp", "threshold"]),
                     help="dp (noisy, budgeted) or threshold (exact, k consumers per row; "
                          "cannot stop differencing between jobs)."),
        click.option("--k", "k", type=int, help="Minimum distinct consumers per row (threshold)."),
        click.option("--max-groups", type=int, help="Groups one consumer may reach (dp)."),
        click.option("--max-rows", type=int, help="Rows one consumer may contribute per group (dp)."),
        click.option("--bounds", "bounds", multiple=True, metavar="COL=LO:HI",
                     help="Per-consumer bounds of a numeric column (COL= clears them)."),
    )):
        fn = option(fn)
    return fn


@dataset_cli.command("register")
@_as
@_json
@click.option("--class", "classes", multiple=True, required=True, metavar="COL=CLASS",
              help="Every column's class: identifier, private, quasi or public.")
@click.option("--entity", help="Entity column (the consumer id) when the rows describe consumers.")
@click.option("--one-row-per-unit", is_flag=True, help="The entity column is unique (checked).")
@click.option("--description", default="")
@click.option("--not-shared", is_flag=True, help="Not readable by merchants' jobs.")
@_policy_options
@click.argument("name")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
def register_command(username, as_json, classes, entity, one_row_per_unit, description, not_shared,
                     release, k, max_groups, max_rows, bounds, name, source) -> None:
    """Register SOURCE (Parquet or CSV, file or directory) as platform.NAME, version 1."""
    from onboarding.platform_datasets import (
        DEFAULT_K,
        parse_bounds,
        platform_dataset_json,
        register_platform_dataset,
    )

    def run(session, config, user, actor):
        ds = register_platform_dataset(
            session, config, user, name=name, source=source, classes=_pairs(classes, "--class"),
            entity_column=entity, k=DEFAULT_K if k is None else k, shared=not not_shared,
            description=description, actor=actor, release=release, max_groups=max_groups,
            max_rows=max_rows, bounds=parse_bounds(bounds) or None, one_row_per_unit=one_row_per_unit)
        return platform_dataset_json(session, ds)

    _platform_call(as_json, username, run)


@dataset_cli.command("refresh")
@_as
@_json
@click.argument("name")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
def refresh_command(username, as_json, name, source) -> None:
    """Bring SOURCE in as the next version of platform dataset NAME (same columns)."""
    from onboarding.platform_datasets import platform_dataset_json, refresh_platform_dataset

    def run(session, config, user, actor):
        ds = refresh_platform_dataset(session, config, user, name, source=source, actor=actor)
        return platform_dataset_json(session, ds)

    _platform_call(as_json, username, run)


@dataset_cli.command("show")
@_as
@_json
@click.argument("name")
def show_command(username, as_json, name) -> None:
    """Show platform dataset NAME: classes, release policy and versions."""
    from onboarding import errors
    from onboarding.platform_datasets import list_platform_datasets, platform_dataset_json

    def run(session, config, user, actor):
        wanted = name if "." in name else f"platform.{name}"
        found = [ds for ds in list_platform_datasets(session, user) if ds.full_name == wanted]
        if not found:
            raise errors.not_found()
        return platform_dataset_json(session, found[0])

    _platform_call(as_json, username, run)


@dataset_cli.command("list")
@_as
@_json
def list_command(username, as_json) -> None:
    """List platform datasets with their release mode and current version."""
    from onboarding.platform_datasets import list_platform_datasets, platform_dataset_json

    def run(session, config, user, actor):
        return {"datasets": [platform_dataset_json(session, ds)
                             for ds in list_platform_datasets(session, user)]}

    from yushan.db import session_factory

    if as_json:
        return _platform_call(True, username, run)
    config = get_config()
    session = session_factory(config)()
    try:
        docs = run(session, config, _admin(session, username), None)["datasets"]
    except OnboardingError as exc:
        _fail(exc, False)
    finally:
        session.close()
    for d in docs:
        click.echo(f"{d['name']:<32} v{d['version']:<4} {d['rows'] or 0:>12} rows  "
                   f"{d['release'] or '-':<10} k {d['k'] or '-'}")


@dataset_cli.command("set-policy")
@_as
@_json
@_policy_options
@click.argument("name")
def set_policy_command(username, as_json, release, k, max_groups, max_rows, bounds, name) -> None:
    """Set platform dataset NAME's release mode, k, per-unit limits and bounds (audited)."""
    from onboarding.platform_datasets import parse_bounds, platform_dataset_json, set_release_policy

    def run(session, config, user, actor):
        ds = set_release_policy(session, user, name, release=release, k=k, max_groups=max_groups,
                                max_rows=max_rows, bounds=parse_bounds(bounds), actor=actor)
        session.commit()
        return platform_dataset_json(session, ds)

    _platform_call(as_json, username, run)


@dataset_cli.command("prune")
@_as
@_json
def prune_command(username, as_json) -> None:
    """Remove the files of superseded versions that no pending job needs any more."""
    from onboarding.platform_datasets import prune_versions

    def run(session, config, user, actor):
        from onboarding import errors
        from yushan import access

        if not access.manage_platform_datasets(user):
            raise errors.forbidden("only a platform admin may do this")
        return {"removed": prune_versions(session, config, actor=actor)}

    _platform_call(as_json, username, run)

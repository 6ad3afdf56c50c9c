"""``yushan audit verify|export``: the operator's and auditor's command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from yushan import jsondoc
from yushan.config import Config, ConfigError, get_config


def _config() -> Config:
    try:
        return get_config()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.group("audit")
def audit_cli() -> None:
    """Verify and export the tamper-evident audit trail."""


@audit_cli.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the same JSON as the API.")
def verify_command(as_json: bool) -> None:
    """Check the whole trail; exit 0 when intact, 1 naming the first bad entry."""
    from audit.chain import key_id
    from audit.keys import load_public_key
    from audit.verifier import verify

    config = _config()
    result = verify(config)
    public_key = load_public_key(config)
    if as_json:
        click.echo(jsondoc.dumps(result.to_dict()))
    elif result.ok:
        fingerprint = key_id(public_key) if public_key else "none"
        others = [k for k in result.key_ids if k != fingerprint]
        earlier = f"; earlier keys {', '.join(others)}" if others else ""
        click.echo(f"audit trail intact: {result.entries} entries (signing key {fingerprint}"
                   f"{earlier})")
    else:
        where = f"first bad entry: {result.first_bad}; " if result.first_bad else ""
        click.echo(f"audit trail NOT intact: {where}{result.reason}", err=False)
    sys.exit(0 if result.ok else 1)


@audit_cli.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "bundle"]), default="jsonl",
              show_default=True)
@click.option("--output", "-o", required=True,
              help="File to write ('-' for standard output; not for bundles).")
@click.option("--actor", help="Only entries by this username.")
@click.option("--action", help="Only this action, or a category such as 'job.*'.")
@click.option("--tenant", help="Only entries of this tenant (slug).")
@click.option("--dataset", help="Only entries naming this dataset (full name).")
@click.option("--job", type=int, help="Only entries about this job id.")
@click.option("--since", help="ISO-8601 time, inclusive.")
@click.option("--until", help="ISO-8601 time, inclusive.")
def export_command(fmt: str, output: str, **filters) -> None:
    """Export entries (oldest first) as CSV, JSON lines, or a signed bundle."""
    from audit.keys import register_config
    from audit.review import Filters, export_bundle, export_csv, export_jsonl
    from audit.writer import CONFIG_INFO_KEY, Actor, record
    from yushan.db import session_scope

    config = _config()
    register_config(config)
    filters = {k: v for k, v in filters.items() if v not in (None, "")}
    try:
        Filters(**filters).to_dict()  # validates the time bounds before any output
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if fmt == "bundle" and output == "-":
        raise click.BadParameter("a bundle is a zip file: give --output FILE.zip")
    target = sys.stdout if output == "-" else Path(output)
    with session_scope(config) as session:
        session.info[CONFIG_INFO_KEY] = config
        if fmt == "csv":
            count = export_csv(session, target, **filters)
        elif fmt == "jsonl":
            count = export_jsonl(session, target, **filters)
        else:
            count = export_bundle(session, config, target, **filters)["entries"]
        # Reading the trail is itself an action auditors want to see.
        record(session, "audit.export", actor=Actor.system("cli"),
               objects={"format": fmt}, details={"filters": filters, "entries": count})
    if output != "-":
        click.echo(f"exported {count} entries to {output}", err=True)


if __name__ == "__main__":  # ``python -m audit.cli verify`` until ``yushan audit`` is wired
    audit_cli()

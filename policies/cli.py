"""``yushan check``: the policy's dry run from the command line (audited like the API's).

Exit codes: 0 allowed, 3 denied by policy, 2 usage, 1 anything else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

EXIT_DENIED = 3


def _explain(doc: dict) -> str:
    """The decision as text for people: each violation with its rule, sources and fix."""
    lines = [f"decision: {doc['decision']}"]
    for v in doc.get("violations", []):
        sources = ", ".join(f"{s['dataset']}.{s['column']} ({s['class']})" for s in v["sources"])
        lines.append(f"- {v['rule']} [{v.get('column') or '(query)'}] {v['message']}")
        if sources:
            lines.append(f"    sources: {sources}")
        lines.append(f"    fix: {v['suggestion']}")
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
    from sqlalchemy import select

    from jobs import service
    from jobs.errors import JobError
    from yushan.config import get_config
    from yushan.db import session_scope
    from yushan.models import User

    config = get_config()
    sql = sql_file.read_text(encoding="utf-8")
    try:
        with session_scope(config) as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None or not user.active:
                raise click.ClickException(f"no such user: {username}")
            doc = service.check(session, config, user, merchant, kind, sql, origin="cli")
    except JobError as exc:
        raise click.ClickException(str(exc)) from None
    doc = {"decision": doc["decision"], "violations": doc.get("violations", []),
           **{k: v for k, v in doc.items() if k not in ("decision", "violations")}}
    click.echo(json.dumps(doc, ensure_ascii=False, indent=2) if as_json else _explain(doc))
    if doc["decision"] != "allow":
        sys.exit(EXIT_DENIED)

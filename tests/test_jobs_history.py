"""A person's recent queries for a merchant: their SQL jobs and their checks (job.check
entries of the audit trail), newest first, once per query, nobody else's and no other
merchant's; a merchant they may not act for looks missing."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select
from web_support import populate

SQL_A = "SELECT tier, count(*) AS n FROM hanfu_house.members GROUP BY tier"
SQL_B = "SELECT c.city, count(*) AS n FROM platform.consumers c GROUP BY c.city"


@pytest.fixture
def world(any_db_config):
    import audit

    populate(any_db_config)
    audit.register_config(any_db_config)
    return any_db_config


def user(session, username):
    from yushan.models import User

    return session.scalar(select(User).where(User.username == username))


def checked(session, username: str, merchant: str, sql: str, decision: str = "deny",
            kind: str = "aggregate") -> None:
    """A check as jobs.service.check records it (no Spark needed to read it back)."""
    from audit import record
    from jobs.service import actor_for

    record(session, "job.check", actor=actor_for(user(session, username)),
           objects={"merchant": merchant},
           details={"kind": kind, "sql": sql, "decision": decision, "violations": [],
                    "release": "dp"})
    time.sleep(0.002)  # entries a few ms apart: their order is their time order


def submitted(session, username: str, merchant: str, sql: str, name: str = "",
              template: str | None = None) -> int:
    from jobs import lifecycle
    from jobs.service import actor_for
    from yushan.models import Tenant

    who = user(session, username)
    tenant = session.scalar(select(Tenant).where(Tenant.slug == merchant))
    job = lifecycle.create(session, merchant_id=tenant.id, submitter_id=who.id, kind="aggregate",
                           sql=sql, name=name, decision=None, actor=actor_for(who),
                           template=template, params={"as_of": "2026-01-01"} if template else None)
    time.sleep(0.002)
    return job.id


def test_checks_and_jobs_newest_first_once_per_query(world):
    from jobs.history import recent_queries
    from yushan.db import session_scope

    with session_scope(world) as session:
        checked(session, "insight_isv", "hanfu_house", SQL_A)
        checked(session, "insight_isv", "hanfu_house", SQL_B, decision="allow")
        job_id = submitted(session, "insight_isv", "hanfu_house", SQL_B, name="cities")
        checked(session, "insight_isv", "hanfu_house", "  SELECT tier, count(*) AS n\n"
                "FROM hanfu_house.members   GROUP BY tier", decision="deny")  # SQL_A again
        checked(session, "insight_isv", "hanfu_house", SQL_A, kind="segment")  # another kind
        # not theirs, or not this merchant's, or a template's rendered SQL
        checked(session, "hanfu_owner", "hanfu_house", "SELECT 1 AS owner_only")
        checked(session, "other_isv", "tea_garden", "SELECT 2 AS other_tenant")
        submitted(session, "insight_isv", "hanfu_house", "SELECT 3 AS rendered", template="membership_health")

    with session_scope(world) as session:
        past = recent_queries(session, user(session, "insight_isv"), "hanfu_house")
        assert [(q.kind, q.source) for q in past] == [
            ("segment", "check"), ("aggregate", "check"), ("aggregate", "job")]
        # the re-check of SQL_A moved it up (whitespace does not make another query)
        assert past[1].outcome == "deny" and "GROUP BY tier" in past[1].sql
        # a query that ran as a job is shown as that job, with its state and name
        assert (past[2].job_id, past[2].name, past[2].outcome, past[2].sql) == (
            job_id, "cities", "queued", SQL_B)
        assert past[0].at >= past[1].at >= past[2].at
        assert [q.sql for q in recent_queries(session, user(session, "hanfu_owner"), "hanfu_house")] == [
            "SELECT 1 AS owner_only"]
        assert len(recent_queries(session, user(session, "insight_isv"), "hanfu_house", limit=2)) == 2


def test_a_merchant_not_acted_for_looks_missing(world):
    from jobs.errors import NotFound
    from jobs.history import recent_queries
    from yushan.db import session_scope

    with session_scope(world) as session:
        checked(session, "other_isv", "tea_garden", SQL_A)
    with session_scope(world) as session:
        for username, merchant in (("insight_isv", "tea_garden"), ("insight_isv", "no_such"),
                                   ("hanfu_owner", "tea_garden")):
            with pytest.raises(NotFound):
                recent_queries(session, user(session, username), merchant)
        assert [q.sql for q in recent_queries(session, user(session, "other_isv"), "tea_garden")] == [SQL_A]

"""The writer and the reviewer's view: entries commit with their action, chain, and filter."""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime, timedelta

import pytest
from audit_support import MERCHANT, PROVIDER, REPO, append, fresh_config
from sqlalchemy import func, select

import audit
from audit.keys import read_head
from yushan.db import session_factory, session_scope
from yushan.models import AuditEntry, Setting


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request, make_config):
    return fresh_config(request, make_config, request.param)


def _count(config) -> int:
    with session_scope(config) as session:
        return session.scalar(select(func.count()).select_from(AuditEntry))


def test_entry_commits_with_its_action_or_not_at_all(config):
    with session_scope(config) as session:
        session.add(Setting(key="platform_review", value=True))
        audit.record(session, "admin.setting", actor=MERCHANT,
                     objects={"setting": "platform_review"}, details={"value": True})

    session = session_factory(config)()
    session.add(Setting(key="other", value=1))
    audit.record(session, "admin.setting", actor=MERCHANT, objects={"setting": "other"})
    session.rollback()
    session.close()

    with session_scope(config) as session:
        assert session.get(Setting, "other") is None
        entries = audit.query(session)
    assert [e["objects"] for e in entries] == [{"setting": "platform_review"}]
    assert audit.verify(config).ok
    # The entry after a rolled-back one continues the chain without a gap.
    append(config, 1)
    result = audit.verify(config)
    assert (result.ok, result.entries) == (True, 2)


def test_chain_head_is_signed_outside_the_database(config):
    append(config, 25, per_transaction=5)
    result = audit.verify(config)
    assert result.ok and result.entries == 25 and result.first_bad is None
    head = read_head(config)
    assert head is not None and head.seq == 25
    with session_scope(config) as session:
        last = session.get(AuditEntry, 25)
    assert head.hash == last.entry_hash
    assert config.audit_head_path.parent == config.home
    key_mode = stat.S_IMODE(config.audit_signing_key_path.stat().st_mode)
    assert key_mode == 0o600
    assert stat.S_IMODE(config.keys_dir.stat().st_mode) == 0o700


def test_savepoint_rollback_keeps_the_chain_intact(config):
    with session_scope(config) as session:
        audit.record(session, "job.submit", actor=MERCHANT, objects={"job": 1})
        nested = session.begin_nested()
        audit.record(session, "job.start", actor=MERCHANT, objects={"job": 1})
        nested.rollback()
        audit.record(session, "job.execute", actor=MERCHANT, objects={"job": 1})
    with session_scope(config) as session:
        actions = [e["action"] for e in audit.query(session)]
    assert actions == ["job.execute", "job.submit"]
    result = audit.verify(config)
    assert result.ok and result.entries == 2
    assert read_head(config).seq == 2


def test_checkpoints_are_signed_every_n_entries(config, monkeypatch):
    import audit.writer

    monkeypatch.setattr(audit.writer, "CHECKPOINT_EVERY", 10)
    append(config, 23, per_transaction=7)
    from yushan.models import AuditCheckpoint

    with session_scope(config) as session:
        seqs = session.scalars(select(AuditCheckpoint.seq).order_by(AuditCheckpoint.seq)).all()
    assert seqs == [10, 20]
    assert audit.verify(config).ok


def test_query_filters_paginates_and_orders_newest_first(config):
    start = datetime.now(UTC) - timedelta(seconds=1)
    with session_scope(config) as session:
        audit.record(session, "job.submit", actor=PROVIDER,
                     objects={"job": 7, "merchant": "hanfu_house"},
                     details={"sql_sha256": "ab" * 32})
        audit.record(session, "job.decision", actor=PROVIDER,
                     objects={"job": 7, "merchant": "hanfu_house"},
                     details={"decision": "deny", "violations": [
                         {"rule": "P1", "column": "nick",
                          "sources": [{"dataset": "platform.consumers", "column": "nick",
                                       "class": "identifier"}]}]})
        audit.record(session, "job.execute", actor=audit.Actor.system("worker"),
                     objects={"job": 71, "merchant": "hanfu_house"},
                     details={"columns_read": [{"dataset": "hanfu_house.members",
                                                "column": "vip_level"}],
                              "released_rows": 4, "suppressed_rows": 1})
        audit.record(session, "dataset.upload", actor=MERCHANT,
                     objects={"dataset": "hanfu_house.members"}, details={"rows": 120})
        audit.record(session, "auth.login_failed", actor=audit.Actor(
            username="nobody", role="unknown", tenant="-", origin="ip=10.0.0.9 ua=x"))

    with session_scope(config) as session:
        everything = audit.query(session)
        assert [e["seq"] for e in everything] == [5, 4, 3, 2, 1]
        assert set(everything[0]) == {"id", "seq", "ts", "actor", "role", "tenant", "origin",
                                      "action", "objects", "details"}
        assert [e["seq"] for e in audit.query(session, actor="insight_isv")] == [2, 1]
        assert [e["seq"] for e in audit.query(session, action="job.decision")] == [2]
        assert [e["seq"] for e in audit.query(session, action="job.*")] == [3, 2, 1]
        assert [e["seq"] for e in audit.query(session, tenant="hanfu_house")] == [4]
        # A dataset matches where it was acted on and where a job read it.
        assert [e["seq"] for e in audit.query(session, dataset="hanfu_house.members")] == [4, 3]
        assert [e["seq"] for e in audit.query(session, dataset="platform.consumers")] == [2]
        # Job 7 is not job 71.
        assert [e["seq"] for e in audit.query(session, job=7)] == [2, 1]
        assert [e["seq"] for e in audit.query(session, limit=2, offset=1)] == [4, 3]
        assert len(audit.query(session, since=start)) == 5
        assert audit.query(session, until=start) == []
        assert audit.query(session, since=datetime.now(UTC) + timedelta(minutes=1)) == []
        decision = audit.query(session, action="job.decision")[0]
        assert decision["details"]["violations"][0]["sources"][0]["class"] == "identifier"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", decision["ts"])


def test_unknown_actions_and_unserialisable_details_are_refused(config):
    with session_scope(config) as session:
        with pytest.raises(ValueError):
            audit.record(session, "jobs.submitt", actor=MERCHANT)
        with pytest.raises(ValueError):
            audit.record(session, "", actor=MERCHANT)
        with pytest.raises(TypeError):
            audit.record(session, "job.submit", actor=MERCHANT, details={"x": object()})
    assert _count(config) == 0


def test_every_documented_action_can_be_recorded_and_found(config):
    """The action names in docs/interfaces.md are the ones the writer accepts."""
    doc = (REPO / "docs" / "interfaces.md").read_text()
    section = doc.split("- Action names", 1)[1].split("\n\n", 1)[0]
    names = [n.replace("admin.*", "admin.user_create") for n in re.findall(r"`([a-z_.*]+)`",
                                                                           section)]
    assert len(names) >= 25
    with session_scope(config) as session:
        for name in names:
            audit.record(session, name, actor=MERCHANT, objects={"action": name})
    with session_scope(config) as session:
        for name in names:
            found = audit.query(session, action=name)
            assert found and found[0]["objects"] == {"action": name}, name
    assert audit.verify(config).entries == len(names)


def test_details_are_stored_as_canonical_json(config):
    with session_scope(config) as session:
        audit.record(session, "job.fail", actor=audit.Actor.system("worker"),
                     objects={"job": 3},
                     details={"error": "AnalysisException: 名字 not found", "when": datetime(
                         2025, 1, 2, 3, 4, 5, tzinfo=UTC), "tables": {"b", "a"}})
    with session_scope(config) as session:
        row = session.get(AuditEntry, 1)
    assert row.details == json.dumps(
        {"error": "AnalysisException: 名字 not found", "tables": ["a", "b"],
         "when": "2025-01-02T03:04:05.000000Z"},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert audit.verify(config).ok

"""Platform review of segments and the segment summary, on the metadata database alone
(SQLite, and PostgreSQL when YUSHAN_TEST_DATABASE_URL is set): a real encrypted output,
no Spark. The end-to-end flow through the worker is in test_segments.py."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobs_support import small_world, user

import audit
from jobs import lifecycle, quarantine, segments, service
from jobs.errors import NotAllowed, NotApproved
from sandbox.crypto import KeyStore
from sandbox.output import store_output
from yushan.accounts import ensure_platform, ensure_user
from yushan.db import session_scope
from yushan.models import Job, JobOutput, JobState, Role

SEGMENTS = {"women_30s": 60, "vip": 75}


def make_output_job(config, tmp_path, kind: str = "segment") -> int:
    """A job awaiting approval with a real encrypted (segment, member) output."""
    with session_scope(config) as session:
        provider = user(session, "insight_isv")
        job = lifecycle.create(
            session, merchant_id=user(session, "hanfu_owner").tenant_id, submitter_id=provider.id,
            kind=kind, sql="SELECT 1", name="t",
            decision={"decision": "allow", "violations": []}, actor=service.actor_for(provider, "pytest"),
        )
        job_id = job.id
    rows = [(label, f"HF{label}{i:05d}") for label, n in SEGMENTS.items() for i in range(n)]
    plain = tmp_path / f"result-{job_id}.parquet"
    pq.write_table(pa.table({"segment": [r[0] for r in rows], "member": [r[1] for r in rows]}), plain)
    stored = store_output(config, KeyStore(config.master_key_path), job_id, plain)
    with session_scope(config) as session:
        job = session.get(Job, job_id)
        actor = audit.Actor.system("worker")
        lifecycle.transition(session, job, JobState.RUNNING, actor=actor)
        session.add(JobOutput(job_id=job_id, storage_path=stored.storage_path, wrapped_key=stored.wrapped_key,
                              content_hash=stored.content_hash, row_count=len(rows), byte_size=stored.byte_size))
        lifecycle.transition(session, job, JobState.AWAITING_APPROVAL, actor=actor,
                             values={"released_rows": len(rows), "suppressed_rows": 1})
    return job_id


@pytest.fixture
def config(any_db_config):
    small_world(any_db_config)
    with session_scope(any_db_config) as session:
        ensure_user(session, "admin", "pw", Role.ADMIN, ensure_platform(session))
    return any_db_config


def test_summary_is_computed_from_the_encrypted_output_once_and_kept(config, tmp_path):
    job_id = make_output_job(config, tmp_path)
    with session_scope(config) as session:
        got = segments.segment_summary(session, config, session.get(Job, job_id))
    assert got == [{"segment": "vip", "members": 75}, {"segment": "women_30s", "members": 60}]
    with session_scope(config) as session:
        output = session.get(Job, job_id).output
        assert output.summary["segments"] == got  # persisted: later views need no decryption
        output.wrapped_key = None  # even once shredded, the counts remain
        assert segments.segment_summary(session, config, session.get(Job, job_id)) == got


def test_the_switch_is_admin_only_and_audited(config):
    with session_scope(config) as session:
        assert quarantine.review_mode(session) is quarantine.ReviewMode.NOT_REQUIRED
        with pytest.raises(NotAllowed):
            quarantine.set_review_mode(session, user(session, "hanfu_owner"), "required")
        quarantine.set_review_mode(session, user(session, "admin"), "required", origin="pytest")
    with session_scope(config) as session:
        assert quarantine.review_mode(session) is quarantine.ReviewMode.REQUIRED
        entry = audit.query(session, action="admin.setting")[0]
        assert entry["actor"] == "admin" and entry["details"] == {"from": "not_required", "to": "required"}


def test_download_needs_both_approvals_when_review_is_required(config, tmp_path):
    job_id = make_output_job(config, tmp_path)
    aggregate_id = make_output_job(config, tmp_path, kind="aggregate")
    with session_scope(config) as session:
        quarantine.set_review_mode(session, user(session, "admin"), quarantine.ReviewMode.REQUIRED)
        assert [j.id for j in quarantine.pending_reviews(session)] == [job_id]  # segments only
        merchant = user(session, "hanfu_owner")
        job = session.get(Job, job_id)
        quarantine.approve(session, merchant, job, origin="pytest")
        with pytest.raises(NotApproved):
            quarantine.read_result(session, config, merchant, job)
        # Aggregate outputs are not held back by the segment review.
        quarantine.approve(session, merchant, session.get(Job, aggregate_id))
        assert quarantine.read_result(session, config, merchant, session.get(Job, aggregate_id)).num_rows == 135
    with session_scope(config) as session:
        job = session.get(Job, job_id)
        quarantine.platform_review(session, config, user(session, "admin"), job, "approve", origin="pytest")
    with session_scope(config) as session:
        job = session.get(Job, job_id)
        assert job.output.platform_reviewed_by == user(session, "admin").id
        assert quarantine.pending_reviews(session) == []
        table = quarantine.read_result(session, config, user(session, "hanfu_owner"), job)
        assert table.column_names == ["segment", "member"] and table.num_rows == 135
        review = audit.query(session, action="job.platform_review", job=job_id)[0]
        assert review["details"]["decision"] == "approve"
        assert review["details"]["segments"][0] == {"segment": "vip", "members": 75}


def test_without_review_the_merchants_approval_is_enough(config, tmp_path):
    job_id = make_output_job(config, tmp_path)
    with session_scope(config) as session:
        merchant = user(session, "hanfu_owner")
        job = session.get(Job, job_id)
        assert quarantine.review_status(session, job)["required"] is False
        quarantine.approve(session, merchant, job)
        assert quarantine.read_result(session, config, merchant, job).num_rows == 135

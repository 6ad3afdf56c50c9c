"""Segment delivery end to end: a provider submits a segment template, the worker runs it in
the sandbox, the output is quarantined with its per-segment summary, the merchant approves
(and, when the admin requires it, a platform admin too), then downloads (segment, member)
as CSV or Parquet. Every step is audited."""

from __future__ import annotations

import io
import time

import pyarrow.parquet as pq
import pytest
from web_support import api_token, bearer, page_login

import audit
from jobs import quarantine
from jobs.errors import InvalidState, NotAllowed, NotApproved
from jobs.templates.registry import submit_template
from web import create_app
from yushan.db import session_scope
from yushan.models import Job, JobState, Setting, User

pytestmark = [pytest.mark.spark, pytest.mark.slow]
K = 50
FINAL = {"awaiting_approval", "blocked", "failed", "cancelled"}
RFM_PARAMS = {"as_of": "2026-11-01", "lookback_days": 730}


@pytest.fixture(scope="module")
def client(demo_config):
    app = create_app(demo_config)
    app.config["TESTING"] = True
    return app.test_client()


@pytest.fixture(autouse=True)
def review_off(demo_config):
    """Each test starts with platform review off, whatever the previous one did."""
    with session_scope(demo_config) as session:
        setting = session.get(Setting, quarantine.REVIEW_SETTING)
        if setting is not None:
            session.delete(setting)
    yield


def by_name(session, username: str) -> User:
    return session.query(User).filter_by(username=username).one()


def submit(config, template: str, params: dict, username: str = "insight_isv") -> int:
    with session_scope(config) as session:
        job = submit_template(session, config, by_name(session, username), "hanfu_house", template,
                              params, origin="pytest")
        # Queued, and maybe already taken by the worker: anything but blocked.
        assert job.state in (JobState.QUEUED.value, JobState.RUNNING.value), job.violations
        return job.id


def wait(config, job_id: int, timeout: float = 600) -> str:
    """The job's final state; its violations and error come along in a failure's message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(config) as session:
            job = session.get(Job, job_id)
            state, why = job.state, (job.violations, job.error)
        if state in FINAL:
            return state if state == "awaiting_approval" else f"{state}: {why}"
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")


def actions(config, job_id: int) -> list[str]:
    with session_scope(config) as session:
        return [e["action"] for e in reversed(audit.query(session, job=job_id, limit=500))]


def test_segment_job_summary_approval_and_download(demo_config, worker, client):
    job_id = submit(demo_config, "rfm", RFM_PARAMS)
    assert wait(demo_config, job_id) == "awaiting_approval"
    provider = api_token(client, "insight_isv")
    merchant = api_token(client, "hanfu_owner")

    # Quarantined: the merchant sees labels and sizes (each >= k), no rows yet; the provider
    # sees neither sizes nor counts before the merchant approves (P8).
    summary = client.get(f"/api/v1/jobs/{job_id}/segments", headers=bearer(merchant)).get_json()
    sizes = {s["segment"]: s["members"] for s in summary["segments"]}
    assert sizes and all(n >= K for n in sizes.values())
    assert client.get(f"/api/v1/jobs/{job_id}/segments", headers=bearer(provider)).status_code == 404
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer(provider)).get_json()["summary"] is None
    assert client.get(f"/api/v1/jobs/{job_id}/result?format=csv", headers=bearer(merchant)).status_code == 409
    # Another merchant cannot tell the job exists.
    other = api_token(client, "tea_owner")
    assert client.get(f"/api/v1/jobs/{job_id}/segments", headers=bearer(other)).status_code == 404

    # The approvals queue shows the summary to the merchant.
    page_login(client, "hanfu_owner")
    page = client.get("/approvals").get_data(as_text=True)
    assert f'id="segments-{job_id}"' in page and next(iter(sizes)) in page

    assert client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(merchant)).status_code == 200
    doc = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(provider)).get_json()  # view_results
    assert sum(sizes.values()) == doc["summary"]["released_rows"]
    assert client.get(f"/api/v1/jobs/{job_id}/segments", headers=bearer(provider)).get_json()["segments"] \
        == summary["segments"]
    csv_text = client.get(f"/api/v1/jobs/{job_id}/result?format=csv", headers=bearer(merchant)).get_data(as_text=True)
    lines = csv_text.splitlines()
    assert lines[0] == "segment,member"
    assert len(lines) - 1 == sum(sizes.values())
    parquet = client.get(f"/api/v1/jobs/{job_id}/result?format=parquet", headers=bearer(merchant))
    table = pq.read_table(io.BytesIO(parquet.data))
    assert table.column_names == ["segment", "member"]
    assert dict(zip(*table.group_by("segment").aggregate([("member", "count_distinct")])
                    .to_pydict().values(), strict=True)) == sizes
    assert all(m.startswith("HF") for m in table.column("member").to_pylist())  # member keys
    trail = actions(demo_config, job_id)
    for action in ("job.submit", "job.template", "job.execute", "job.approve", "job.download"):
        assert action in trail


def test_platform_review_is_needed_as_well_when_the_admin_turns_it_on(demo_config, worker, client):
    admin = api_token(client, "admin")
    merchant = api_token(client, "hanfu_owner")
    provider = api_token(client, "insight_isv")
    # Only an admin flips the switch.
    assert client.put("/api/v1/segment-review", json={"mode": "required"},
                      headers=bearer(merchant)).status_code == 403
    assert client.put("/api/v1/segment-review", json={"mode": "required"},
                      headers=bearer(admin)).get_json() == {"mode": "required"}

    # A lookalike job: its model is trained in the sandbox, its final query checked there.
    job_id = submit(demo_config, "lookalike", {"seed_tier": "bronze", "audience_size": 100})
    assert wait(demo_config, job_id) == "awaiting_approval"
    summary = client.get(f"/api/v1/jobs/{job_id}/segments", headers=bearer(merchant)).get_json()
    assert client.get(f"/api/v1/jobs/{job_id}/segments", headers=bearer(provider)).status_code == 404
    assert [s["segment"] for s in summary["segments"]] == ["lookalike"]
    assert summary["segments"][0]["members"] >= 100
    assert summary["review"] == {"mode": "required", "required": True, "reviewed": False, "reviewed_at": None}

    assert client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(merchant)).status_code == 200
    refused = client.get(f"/api/v1/jobs/{job_id}/result?format=csv", headers=bearer(merchant))
    assert refused.status_code == 409  # the merchant's approval alone is not enough now

    # The admin's queue lists it; the merchant cannot review it; the admin approves.
    page_login(client, "admin")
    assert f'id="review-{job_id}"' in client.get("/admin/segment-review").get_data(as_text=True)
    assert client.post(f"/api/v1/jobs/{job_id}/platform-review", json={"decision": "approve"},
                       headers=bearer(merchant)).status_code == 403
    assert client.post(f"/api/v1/jobs/{job_id}/platform-review", json={"decision": "approve"},
                       headers=bearer(admin)).status_code == 200
    rows = client.get(f"/api/v1/jobs/{job_id}/result?format=json", headers=bearer(merchant)).get_json()
    assert rows["columns"] == ["segment", "member"]
    assert len(rows["rows"]) == summary["segments"][0]["members"]
    assert all(len(r["member"]) == 64 for r in rows["rows"])  # segment tokens, not user ids

    trail = actions(demo_config, job_id)
    assert trail.index("job.approve") < trail.index("job.platform_review") < trail.index("job.download")
    with session_scope(demo_config) as session:
        execute = [e for e in audit.query(session, job=job_id, action="job.execute")][0]
        # The query that really ran (with the learned weights) is in the audit trail only.
        assert "segment_token(c.user_id)" in execute["details"]["prepared_sql"]
        assert ">= 1.0" in session.get(Job, job_id).sql  # the placeholder the provider sees
        assert audit.query(session, action="admin.setting")[0]["details"]["to"] == "required"


def test_platform_rejection_shreds_the_output_and_review_rules(demo_config, worker, client):
    job_id = submit(demo_config, "rfm", RFM_PARAMS)
    assert wait(demo_config, job_id) == "awaiting_approval"
    with session_scope(demo_config) as session:
        admin, merchant = by_name(session, "admin"), by_name(session, "hanfu_owner")
        job = session.get(Job, job_id)
        with pytest.raises(NotAllowed):
            quarantine.platform_review(session, demo_config, merchant, job, "approve")
        quarantine.set_review_mode(session, admin, quarantine.ReviewMode.REQUIRED)
        assert job in quarantine.pending_reviews(session)
        quarantine.platform_review(session, demo_config, admin, job, "reject", origin="pytest")
        assert job.state == JobState.REJECTED.value and job.output.wrapped_key is None
        with pytest.raises(InvalidState):
            quarantine.platform_review(session, demo_config, admin, job, "approve")
        with pytest.raises(NotApproved):
            quarantine.read_result(session, demo_config, merchant, job)
    assert "job.platform_review" in actions(demo_config, job_id)

"""A walk through the platform as its users: every action leaves its entry, the job entries
name the columns read, no entry carries data values, and the chain verifies throughout."""

from __future__ import annotations

import json

import pytest
from web_support import api_token, bearer, wait_for_job

import audit
from yushan.demo import DEMO_PASSWORD

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ALLOWED_SQL = "SELECT vip_level, count(*) AS n FROM platform.consumers GROUP BY vip_level"
DENIED_SQL = "SELECT nick FROM platform.consumers"


@pytest.fixture(scope="module")
def platform(demo_config, worker):
    """The web app (test client) on the demo world, with a job worker running."""
    from web import create_app

    app = create_app(demo_config)
    app.config.update(TESTING=True)
    return app.test_client()


def _token(client, username: str) -> str:
    return api_token(client, username, DEMO_PASSWORD)


def test_every_action_of_a_session_is_audited(demo_config, platform):
    client = platform
    bad = client.post("/api/v1/token", json={"username": "insight_isv", "password": "wrong"})
    assert bad.status_code == 401
    isv, owner, auditor = (_token(client, u) for u in ("insight_isv", "hanfu_owner", "auditor"))
    body = {"merchant": "hanfu_house", "kind": "aggregate"}

    checked = client.post("/api/v1/jobs/check", json={**body, "sql": DENIED_SQL},
                          headers=bearer(isv)).get_json()
    assert checked["decision"] == "deny"
    blocked = client.post("/api/v1/jobs", json={**body, "sql": DENIED_SQL}, headers=bearer(isv))
    assert blocked.get_json()["state"] == "queued"  # the executor's check decides
    blocked_job = wait_for_job(client, isv, blocked.get_json()["id"])
    assert blocked_job["state"] == "blocked" and blocked_job["violations"]
    approved_id = client.post("/api/v1/jobs", json={**body, "sql": ALLOWED_SQL},
                              headers=bearer(isv)).get_json()["id"]
    assert wait_for_job(client, isv, approved_id)["state"] == "awaiting_approval"
    assert client.post(f"/api/v1/jobs/{approved_id}/approve", json={},
                       headers=bearer(owner)).status_code == 200
    result = client.get(f"/api/v1/jobs/{approved_id}/result?format=csv", headers=bearer(owner))
    assert result.status_code == 200
    rejected_id = client.post("/api/v1/jobs", json={**body, "sql": ALLOWED_SQL + " ORDER BY n"},
                              headers=bearer(isv)).get_json()["id"]
    assert wait_for_job(client, isv, rejected_id)["state"] == "awaiting_approval"
    assert client.post(f"/api/v1/jobs/{rejected_id}/reject", json={},
                       headers=bearer(owner)).status_code == 200
    cancelled_id = client.post("/api/v1/jobs", json={**body, "sql": ALLOWED_SQL + " LIMIT 5"},
                               headers=bearer(isv)).get_json()["id"]
    assert client.post(f"/api/v1/jobs/{cancelled_id}/cancel", json={},
                       headers=bearer(isv)).status_code == 200
    assert client.delete("/api/v1/token", headers=bearer(isv)).status_code == 204

    listed = client.get("/api/v1/audit?limit=10000", headers=bearer(auditor)).get_json()
    entries = listed["entries"]
    actions = {e["action"] for e in entries}
    required = {"demo.build", "auth.login_failed", "auth.token", "auth.logout", "job.check",
                "job.submit", "job.decision", "job.start", "job.execute", "job.approve",
                "job.download", "job.reject", "job.cancel"}
    assert required <= actions, sorted(required - actions)

    # Every entry says who, in which role and tenant, from where.
    for entry in entries:
        assert entry["actor"] and entry["role"] and entry["tenant"] and entry["origin"]
    # The executed job names the columns it read, from the plan's lineage.
    executed = [e for e in entries
                if e["action"] == "job.execute" and e["objects"].get("job") == approved_id]
    assert executed and "vip_level" in json.dumps(executed[0]["details"])
    assert "platform.consumers" in json.dumps(executed[0]["details"])
    # The blocked job's decision names the rule and the identifying column's source.
    blocked_id = blocked.get_json()["id"]
    decisions = [e for e in entries
                 if e["action"] == "job.decision" and e["objects"].get("job") == blocked_id]
    assert decisions and "nick" in json.dumps(decisions[0]["details"])
    # Released values never reach the log: the result's cells are not in any entry.
    cells = {c for line in result.get_data(as_text=True).splitlines()[1:]
             for c in line.split(",") if len(c) > 3}
    blob = json.dumps(entries)
    assert not [c for c in cells if f'"{c}"' in blob]

    verified = client.get("/api/v1/audit/verify", headers=bearer(auditor)).get_json()
    assert verified["ok"] is True and verified["first_bad"] is None
    assert audit.verify(demo_config).ok

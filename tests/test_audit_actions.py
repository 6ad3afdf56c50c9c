"""A walk through the platform as its users: every action leaves its entry, the job entries
name the columns read, no entry carries data values, and the chain verifies throughout."""

from __future__ import annotations

import json
import threading
import time

import pytest

import audit
from yushan.demo import DEMO_PASSWORD

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ALLOWED_SQL = "SELECT vip_level, count(*) AS n FROM platform.consumers GROUP BY vip_level"
DENIED_SQL = "SELECT nick FROM platform.consumers"


@pytest.fixture(scope="module")
def platform(demo_config):
    """The web app (test client) and one job worker on the demo world."""
    from jobs.worker import Worker
    from web import create_app

    app = create_app(demo_config)
    app.config.update(TESTING=True)
    worker = Worker(demo_config, concurrency=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield app.test_client()
    worker.stop()
    thread.join(timeout=60)


def _token(client, username: str) -> str:
    response = client.post("/api/v1/token",
                           json={"username": username, "password": DEMO_PASSWORD})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["token"]


def _wait(client, token: str, job_id: int, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=_auth(token)).get_json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not finish")


def _auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_every_action_of_a_session_is_audited(demo_config, platform):
    client = platform
    bad = client.post("/api/v1/token", json={"username": "insight_isv", "password": "wrong"})
    assert bad.status_code == 401
    isv, owner, auditor = (_token(client, u) for u in ("insight_isv", "hanfu_owner", "auditor"))
    body = {"merchant": "hanfu_house", "kind": "aggregate"}

    checked = client.post("/api/v1/jobs/check", json={**body, "sql": DENIED_SQL},
                          headers=_auth(isv)).get_json()
    assert checked["decision"] == "deny"
    blocked = client.post("/api/v1/jobs", json={**body, "sql": DENIED_SQL}, headers=_auth(isv))
    assert blocked.get_json()["state"] == "queued"  # the executor's check decides
    blocked_job = _wait(client, isv, blocked.get_json()["id"])
    assert blocked_job["state"] == "blocked" and blocked_job["violations"]
    approved_id = client.post("/api/v1/jobs", json={**body, "sql": ALLOWED_SQL},
                              headers=_auth(isv)).get_json()["id"]
    assert _wait(client, isv, approved_id)["state"] == "awaiting_approval"
    assert client.post(f"/api/v1/jobs/{approved_id}/approve", json={},
                       headers=_auth(owner)).status_code == 200
    result = client.get(f"/api/v1/jobs/{approved_id}/result?format=csv", headers=_auth(owner))
    assert result.status_code == 200
    rejected_id = client.post("/api/v1/jobs", json={**body, "sql": ALLOWED_SQL + " ORDER BY n"},
                              headers=_auth(isv)).get_json()["id"]
    assert _wait(client, isv, rejected_id)["state"] == "awaiting_approval"
    assert client.post(f"/api/v1/jobs/{rejected_id}/reject", json={},
                       headers=_auth(owner)).status_code == 200
    cancelled_id = client.post("/api/v1/jobs", json={**body, "sql": ALLOWED_SQL + " LIMIT 5"},
                               headers=_auth(isv)).get_json()["id"]
    assert client.post(f"/api/v1/jobs/{cancelled_id}/cancel", json={},
                       headers=_auth(isv)).status_code == 200
    assert client.delete("/api/v1/token", headers=_auth(isv)).status_code == 204

    listed = client.get("/api/v1/audit?limit=10000", headers=_auth(auditor)).get_json()
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

    verified = client.get("/api/v1/audit/verify", headers=_auth(auditor)).get_json()
    assert verified["ok"] is True and verified["first_bad"] is None
    assert audit.verify(demo_config).ok

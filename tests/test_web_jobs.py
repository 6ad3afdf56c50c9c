"""Jobs through the API end to end: real Spark, policy, worker, approval, results, audit.

Runs on the shared demo world (scale 0.01); only adds jobs and audit entries to it.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from web_support import (
    api_token,
    assert_documented,
    bearer,
    wait_for_job,
)

from web import create_app

pytestmark = [pytest.mark.spark, pytest.mark.slow]
GOOD_SQL = "SELECT gender, count(*) AS n FROM platform.consumers GROUP BY gender"


@pytest.fixture(scope="module")
def live(demo_config, worker):
    app = create_app(demo_config)
    client = app.test_client()
    tokens = {u: api_token(client, u) for u in
              ("auditor", "hanfu_owner", "tea_owner", "insight_isv", "other_isv")}
    return demo_config, client, tokens


def test_check_explains_a_denial_without_data(live):
    _, client, t = live
    response = client.post("/api/v1/jobs/check", headers=bearer(t["insight_isv"]), json={
        "merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT nick FROM platform.consumers"})
    assert_documented(response, "/api/v1/jobs/check", "POST")
    decision = response.get_json()
    assert decision["decision"] == "deny"
    violation = decision["violations"][0]
    assert violation["rule"] == "P1" and violation["suggestion"]
    assert {"dataset": "platform.consumers", "column": "nick", "class": "private"} in violation["sources"]


def test_denied_job_is_recorded_blocked(live):
    _, client, t = live
    response = client.post("/api/v1/jobs", headers=bearer(t["insight_isv"]), json={
        "merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT phone FROM platform.consumers"})
    assert response.status_code == 201
    assert_documented(response, "/api/v1/jobs", "POST")
    job = response.get_json()
    assert job["state"] == "blocked" and job["violations"]


def test_job_lifecycle_across_roles_and_tenants(live):
    config, client, t = live
    response = client.post("/api/v1/jobs", headers=bearer(t["insight_isv"]), json={
        "merchant": "hanfu_house", "kind": "aggregate", "sql": GOOD_SQL, "name": "by gender"})
    assert response.status_code == 201
    job_id = response.get_json()["id"]
    doc = wait_for_job(client, t["insight_isv"], job_id)
    assert doc["state"] == "awaiting_approval", doc
    assert doc["summary"] is None  # part of the release: shown after approval (P8)
    got = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(t["insight_isv"]))
    assert_documented(got, "/api/v1/jobs/{id}", "GET")

    # other tenants: exactly like a missing job
    missing = client.get("/api/v1/jobs/999999999", headers=bearer(t["tea_owner"])).get_json()
    for user in ("tea_owner", "other_isv"):
        for method, path in (("GET", f"/api/v1/jobs/{job_id}"),
                             ("POST", f"/api/v1/jobs/{job_id}/approve"),
                             ("POST", f"/api/v1/jobs/{job_id}/cancel"),
                             ("GET", f"/api/v1/jobs/{job_id}/result?format=json")):
            response = client.open(path, method=method, headers=bearer(t[user]))
            assert response.status_code == 404 and response.get_json() == missing, (user, path)

    early = client.get(f"/api/v1/jobs/{job_id}/result?format=json", headers=bearer(t["hanfu_owner"]))
    assert early.status_code == 409
    assert_documented(early, "/api/v1/jobs/{id}/result", "GET")
    own = client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(t["insight_isv"]))
    assert own.status_code == 403
    assert client.get(f"/api/v1/jobs/{job_id}/result", headers=bearer(t["auditor"])).status_code == 403

    approved = client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(t["hanfu_owner"]))
    assert approved.status_code == 200 and approved.get_json()["state"] == "approved"
    assert approved.get_json()["summary"]["released_rows"] == 2
    assert client.get(f"/api/v1/jobs/{job_id}", headers=bearer(t["insight_isv"])).get_json()["summary"][
        "released_rows"] == 2  # its authorisation has view_results
    assert_documented(approved, "/api/v1/jobs/{id}/approve", "POST")
    again = client.post(f"/api/v1/jobs/{job_id}/approve", headers=bearer(t["hanfu_owner"]))
    assert again.status_code == 409

    as_json = client.get(f"/api/v1/jobs/{job_id}/result?format=json", headers=bearer(t["insight_isv"]))
    assert_documented(as_json, "/api/v1/jobs/{id}/result", "GET")
    result = as_json.get_json()
    assert result["columns"] == ["gender", "n"]
    assert {r["gender"] for r in result["rows"]} == {"F", "M"}
    as_csv = client.get(f"/api/v1/jobs/{job_id}/result?format=csv", headers=bearer(t["hanfu_owner"]))
    assert as_csv.get_data(as_text=True).splitlines()[0] == "gender,n"
    assert re.search(rf'filename="job-{job_id}-\d{{8}}T\d{{6}}Z\.csv"',
                     as_csv.headers["Content-Disposition"])
    as_parquet = client.get(f"/api/v1/jobs/{job_id}/result?format=parquet",
                            headers=bearer(t["hanfu_owner"]))
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(as_parquet.get_data()))
    assert table.num_rows == 2 and table.column_names == ["gender", "n"]

    entries = client.get(f"/api/v1/audit?job={job_id}", headers=bearer(t["auditor"])).get_json()
    actions = {e["action"] for e in entries["entries"]}
    assert {"job.submit", "job.approve", "job.download"} <= actions
    blob = json.dumps(entries)
    assert "insight_isv" in blob and "hanfu_owner" in blob
    listed = client.get("/api/v1/jobs", headers=bearer(t["hanfu_owner"])).get_json()["jobs"]
    assert job_id in {j["id"] for j in listed}
    assert job_id not in {j["id"] for j in
                          client.get("/api/v1/jobs", headers=bearer(t["tea_owner"])).get_json()["jobs"]}

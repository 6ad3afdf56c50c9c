"""Prometheus metrics: a scrape after a check, a job and a refused upload shows them all
(real Spark, worker and web app on the demo world); the directory shared by processes."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys

import pytest
from web_support import api_token, assert_documented, bearer, wait_for_job

from web import create_app
from yushan import metrics

pytestmark = [pytest.mark.spark, pytest.mark.slow]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQL = "SELECT gender, count(*) AS n FROM platform.consumers GROUP BY gender"


def text_string_to_metric_families(text: str):
    # Imported late: prometheus-client picks its mode when first imported (yushan.metrics
    # sets the directory first).
    from prometheus_client.parser import text_string_to_metric_families as parse

    return parse(text)


def scrape(client, **kwargs) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one /metrics answer."""
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert_documented(response, "/metrics", "GET")
    assert response.content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def live(demo_config, worker):
    app = create_app(demo_config)
    client = app.test_client()
    tokens = {u: api_token(client, u) for u in ("insight_isv", "hanfu_owner", "admin")}
    return demo_config, client, tokens


def test_a_scrape_after_a_check_a_job_and_an_upload_shows_them(live):
    _config, client, t = live
    before = scrape(client)
    body = {"merchant": "hanfu_house", "kind": "aggregate", "sql": SQL}
    check = client.post("/api/v1/jobs/check", headers=bearer(t["insight_isv"]), json=body)
    assert check.status_code == 200 and check.get_json()["decision"] == "allow"
    submitted = client.post("/api/v1/jobs", headers=bearer(t["insight_isv"]), json=body)
    assert submitted.status_code == 201
    job = wait_for_job(client, t["insight_isv"], submitted.get_json()["id"])
    assert job["state"] == "awaiting_approval", job
    refused = client.post("/api/v1/datasets", headers=bearer(t["hanfu_owner"]),
                          content_type="multipart/form-data",
                          data={"name": "Not A Name!", "schema": json.dumps([]),
                                "file": (io.BytesIO(b"a\n1\n"), "x.csv")})
    assert refused.status_code == 400
    after = scrape(client)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("yushan_policy_check_seconds_count", stage="dry_run") == 1
    assert moved("yushan_policy_check_seconds_count", stage="executor") >= 1
    assert moved("yushan_job_duration_seconds_count", outcome="released") == 1
    assert moved("yushan_job_duration_seconds_sum", outcome="released") > 0
    assert moved("yushan_http_requests_total", method="POST", route="/api/v1/jobs",
                 status="201") == 1
    assert moved("yushan_http_requests_total", method="POST", route="/api/v1/jobs/check",
                 status="200") == 1
    # Routes are templates, never paths with ids in them.
    assert moved("yushan_http_requests_total", method="GET", route="/api/v1/jobs/<int:job_id>",
                 status="200") >= 1
    assert moved("yushan_uploads_total", outcome=refused.get_json()["error"]["code"]) == 1
    assert moved("yushan_audit_appends_total", category="job") >= 4  # check, submit, start, execute
    assert moved("yushan_audit_appends_total", category="dataset") >= 1
    assert moved("yushan_jobs", state="awaiting_approval") == 1
    assert value(after, "yushan_queue_depth") == value(after, "yushan_jobs", state="queued")
    assert value(after, "yushan_workers_alive") >= 0
    if job.get("release") == "dp":  # the demo registers consumer data in dp mode
        assert moved("yushan_budget_epsilon_spent_total", merchant="hanfu_house") == \
            pytest.approx(job["epsilon"])
    # No SQL, user names or values in any label.
    text = client.get("/metrics").get_data(as_text=True)
    for leak in ("SELECT", "insight_isv", "hanfu_owner", "gender"):
        assert leak not in text


def test_metrics_are_served_to_loopback_a_token_or_an_admin_only(live):
    config, client, t = live
    remote = {"environ_base": {"REMOTE_ADDR": "203.0.113.9"}}
    refused = client.get("/metrics", **remote)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert_documented(refused, "/metrics", "GET")
    assert client.get("/metrics", headers=bearer(t["insight_isv"]), **remote).status_code == 401
    scrape(client, headers=bearer(t["admin"]), **remote)
    # With a metrics token, it is required (loopback alone no longer suffices).
    token = "m" * 40
    guarded = create_app(dataclasses.replace(config, metrics_token=token))
    guarded_client = guarded.test_client()
    assert guarded_client.get("/metrics").status_code == 401
    assert guarded_client.get("/metrics", headers=bearer("x" * 40), **remote).status_code == 401
    scrape(guarded_client, headers=bearer(token), **remote)


def test_processes_share_one_directory_and_serve_drops_gone_ones(make_config):
    """Samples of another process are read by this one's scrape; ``reset`` (``yushan
    serve`` at start-up) removes the files of processes that have exited, never those of
    live ones."""
    from yushan.cli import initialise
    from yushan.db import session_scope

    config = make_config()
    initialise(config)
    metrics.upload("accepted")  # this process has files in the directory
    directory = os.environ[metrics.ENV]
    child = subprocess.run(
        [sys.executable, "-c", "import os; from yushan import metrics; "
         "metrics.upload('accepted'); print(os.getpid())"],
        env={**os.environ, metrics.ENV: directory, "PYTHONPATH": ROOT}, cwd=ROOT,
        capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    child_file = f"counter_{child.stdout.split()[-1]}.db"
    assert child_file in os.listdir(directory)

    def uploads() -> float:
        with session_scope(config) as session:
            text = metrics.exposition(session, config).decode()
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == "yushan_uploads_total" and sample.labels == {"outcome": "accepted"})

    with_child = uploads()
    own = {name for name in os.listdir(directory) if name.endswith(f"_{os.getpid()}.db")}
    metrics.reset(config)
    left = set(os.listdir(directory))
    assert child_file not in left and own <= left
    assert uploads() == with_child - 1

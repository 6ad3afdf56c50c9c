"""Auditor pages: the log with filters, exports named by time, and verification."""

from __future__ import annotations

import json
import re

import pytest
from web_support import csrf_from, page_login, populate

from web import create_app


@pytest.fixture
def auditor(make_config):
    from yushan.cli import initialise

    config = make_config()
    initialise(config)
    populate(config)
    app = create_app(config)
    page_login(app.test_client(), "hanfu_owner")
    client = app.test_client()
    page_login(client, "auditor")
    return client


def test_log_filters_by_actor_and_action(auditor):
    html = auditor.get("/audit?actor=hanfu_owner&action=auth.login").get_data(as_text=True)
    rows = re.findall(r'<tr class="entry" data-action="([^"]+)"', html)
    assert rows and set(rows) == {"auth.login"}
    assert auditor.get("/audit?since=not-a-date").status_code == 400


def test_exports_are_files_with_time_stamped_names(auditor):
    csv = auditor.get("/audit/export?format=csv")
    assert re.search(r'filename="audit-\d{8}T\d{6}Z\.csv"', csv.headers["Content-Disposition"])
    assert "hanfu_owner" in csv.get_data(as_text=True)
    jsonl = auditor.get("/audit/export?format=jsonl&actor=hanfu_owner")
    lines = [json.loads(line) for line in jsonl.get_data(as_text=True).splitlines()]
    assert lines and all(line["actor"] == "hanfu_owner" for line in lines)
    assert all("entry_hash" in line for line in lines)


def test_verify_button_reports_an_intact_chain(auditor):
    csrf = csrf_from(auditor.get("/audit").get_data(as_text=True))
    html = auditor.post("/audit/verify", data={"csrf_token": csrf}).get_data(as_text=True)
    assert 'id="verify-result"' in html and "intact" in html

"""Pages per role without running jobs: who sees which page, datasets, i18n, headers."""

from __future__ import annotations

import pytest
from web_support import page_login, populate

from web import create_app

ROLE_PAGES = {
    # page: roles that may open it (everyone else: 403; anonymous: log-in redirect)
    "/dashboard": {"admin", "auditor", "hanfu_owner", "insight_isv"},
    "/datasets": {"admin", "auditor", "hanfu_owner", "insight_isv"},
    "/jobs": {"auditor", "hanfu_owner", "insight_isv"},
    "/jobs/new": {"hanfu_owner", "insight_isv"},
    "/authorizations": {"hanfu_owner"},
    "/approvals": {"hanfu_owner"},
    "/audit": {"auditor"},
    "/admin/": {"admin"},
}


@pytest.fixture
def app(make_config):
    from yushan.cli import initialise

    config = make_config()
    initialise(config)
    populate(config)
    return create_app(config)


def client_as(app, username):
    client = app.test_client()
    assert page_login(client, username).status_code == 302
    return client


def test_every_role_against_every_page(app):
    for page in ROLE_PAGES:
        response = app.test_client().get(page)
        assert response.status_code == 302 and "/login" in response.headers["Location"], page
    for user in ("admin", "auditor", "hanfu_owner", "insight_isv"):
        client = client_as(app, user)
        for page, allowed in ROLE_PAGES.items():
            response = client.get(page)
            want = 200 if user in allowed else 403
            assert response.status_code == want, (user, page, response.status_code)
            html = response.get_data(as_text=True)
            assert "<html" in html
            if want == 403:
                assert "Not allowed" in html


def test_landing_says_what_the_platform_is(app):
    html = app.test_client().get("/").get_data(as_text=True)
    assert "data clean room" in html and "audit" in html


def test_dataset_page_shows_only_usable_datasets_with_badges(app):
    html = client_as(app, "insight_isv").get("/datasets").get_data(as_text=True)
    assert "hanfu_house.members" in html and "tea_garden.members" not in html
    assert 'class="badge c-private"' in html and "k = 50" in html
    html = client_as(app, "tea_owner").get("/datasets").get_data(as_text=True)
    assert "tea_garden.members" in html and "hanfu_house.members" not in html


def test_job_form_offers_only_authorising_merchants(app):
    html = client_as(app, "insight_isv").get("/jobs/new").get_data(as_text=True)
    assert 'value="hanfu_house"' in html and 'value="tea_garden"' not in html
    assert 'id="check"' in html and 'data-check-url="/jobs/check"' in html
    html = client_as(app, "other_isv").get("/jobs/new").get_data(as_text=True)
    assert 'value="tea_garden"' in html and 'value="hanfu_house"' not in html


def test_other_tenants_jobs_are_missing_pages(app):
    client = client_as(app, "tea_owner")
    for path in ("/jobs/987654", "/jobs/987654/status.json", "/jobs/987654/download?format=csv"):
        assert client.get(path).status_code == 404, path


def test_chinese_from_the_browser_and_switchable(app):
    client = app.test_client()
    html = client.get("/", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).get_data(as_text=True)
    assert "登录" in html and 'lang="zh-CN"' in html
    html = client.get("/?lang=en", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "Log in" in html
    # the choice sticks (cookie) over the browser's preference
    html = client.get("/", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "Log in" in html and "登录" not in html.split("<main>")[1]


def test_pages_carry_security_headers_and_no_inline_script(app):
    response = client_as(app, "hanfu_owner").get("/jobs/new")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    html = response.get_data(as_text=True)
    assert "<script>" not in html and "onclick=" not in html and "style=" not in html


def test_error_pages_are_html_without_details(app):
    response = app.test_client().get("/no/such/page")
    assert response.status_code == 404
    html = response.get_data(as_text=True)
    assert "<html" in html and "Traceback" not in html

"""Real browser: a provider runs the membership-health template from its form, the merchant
approves, and the result page draws the Vega-Lite chart beside the table under the strict
content security policy (vendored scripts, no inline code, no eval)."""

from __future__ import annotations

import re

import pytest
from jobs_support import WorkerThread
from test_browser import CHROMIUM_ARGS, SHOTS, browser, chromium, login  # noqa: F401 - fixtures
from web_support import LiveServer

from web import create_app

pytestmark = [pytest.mark.browser, pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def site(demo_config):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with LiveServer(create_app(demo_config)) as server, WorkerThread(demo_config):
        yield server.url


def test_template_from_form_to_chart(browser, site):  # noqa: F811 - the fixture above
    from playwright.sync_api import expect

    context, page = login(browser, site, "insight_isv")
    page.click("#nav-templates")
    page.click("#template-membership_health")
    page.select_option("#merchant", "hanfu_house")
    page.fill("#param-as_of", "2026-11-01")
    page.screenshot(path=str(SHOTS / "t1-template-form.png"), full_page=True)
    page.click("#template-submit")
    page.wait_for_url(re.compile(r".*/templates/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    # The page follows the job by itself (no reload by the user) until it ends.
    expect(page.locator("#job-state .state")).to_have_attribute(
        "data-state", "awaiting_approval", timeout=600_000)
    context.close()

    context, page = login(browser, site, "hanfu_owner")
    page.on("dialog", lambda dialog: dialog.accept())  # the approval asks first
    page.goto(site + "/approvals")
    page.locator(f"#approval-{job_id} button.approve").click()
    context.close()

    context, page = login(browser, site, "insight_isv")
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(site + f"/templates/jobs/{job_id}")
    expect(page.locator("#result-table")).to_contain_text("gold")
    chart = page.locator("#chart")
    expect(chart).to_have_attribute("data-rendered", "true", timeout=60_000)
    expect(chart.locator("canvas")).to_have_count(1)
    box = chart.locator("canvas").bounding_box()
    assert box and box["width"] > 200 and box["height"] > 150
    assert not blocked, blocked
    page.screenshot(path=str(SHOTS / "t2-template-result-chart.png"), full_page=True)
    context.close()

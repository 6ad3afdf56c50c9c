"""Real browser: Debian's Chromium driven by Playwright through the whole story.

A provider checks a denied query and reads its explanation, submits a legitimate one
through the form, the merchant approves and downloads it, and the auditor finds all of
it in the log. Screenshots of each step go to tests/output/browser/.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from jobs_support import WorkerThread
from web_support import PASSWORD, LiveServer

from web import create_app

pytestmark = [pytest.mark.browser, pytest.mark.spark, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
SHOTS = Path(__file__).parent / "output" / "browser"
DENIED_SQL = "SELECT nick, count(*) AS n FROM platform.consumers GROUP BY nick"
GOOD_SQL = "SELECT gender, count(*) AS n FROM platform.consumers GROUP BY gender"


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt when missing (never `playwright install`)."""
    if not CHROMIUM.exists():
        apt = shutil.which("apt-get")
        assert apt, "chromium is missing and apt-get is not available to install it"
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run([apt, "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run([apt, "install", "-y", "-qq", "chromium"], check=True, env=env,
                       timeout=1200)
    assert CHROMIUM.exists()
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def site(demo_config):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with LiveServer(create_app(demo_config)) as server, WorkerThread(demo_config):
        yield server.url


def login(browser, base: str, username: str):
    context = browser.new_context(accept_downloads=True, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(base + "/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(re.compile(r".*/dashboard$"))
    return context, page


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_provider_merchant_auditor_story(browser, site, tmp_path):
    from playwright.sync_api import expect

    # 1. The provider checks a denied query and sees why, inline.
    context, page = login(browser, site, "insight_isv")
    page.goto(site + "/jobs/new")
    page.select_option("#merchant", "hanfu_house")
    page.fill("#sql", DENIED_SQL)
    expect(page.locator("#sql-highlight .tk-keyword").first).to_have_text("SELECT")
    page.click("#check")
    decision = page.locator("#decision")
    expect(decision).to_have_class(re.compile(r"\bdeny\b"), timeout=120_000)
    expect(decision.locator(".rule").first).to_have_text(re.compile(r"P\d"))
    expect(decision).to_contain_text("nick")
    expect(decision.locator(".suggestion").first).to_be_visible()
    shot(page, "01-provider-check-denied")

    # 2. ... then submits a legitimate one through the form and watches it run.
    page.fill("#sql", GOOD_SQL)
    page.fill("#job-name", "gender split")
    page.click("#check")
    expect(decision).to_have_class(re.compile(r"\ballow\b"), timeout=120_000)
    page.click("#submit")
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#job-state .state")).to_have_text("awaiting_approval", timeout=300_000)
    expect(page.locator("#released-rows")).to_have_text("2")
    shot(page, "02-provider-job-awaiting-approval")
    context.close()

    # 3. The merchant approves it and downloads the rows.
    context, page = login(browser, site, "hanfu_owner")
    page.goto(site + "/approvals")
    card = page.locator(f"#approval-{job_id}")
    expect(card).to_contain_text("gender")
    shot(page, "03-merchant-approvals")
    card.locator("button.approve").click()
    page.goto(site + f"/jobs/{job_id}")
    expect(page.locator("#job-state .state")).to_have_text("approved")
    expect(page.locator("#result-table")).to_contain_text("F")
    with page.expect_download() as info:
        page.click("#download-csv")
    download = info.value
    assert re.fullmatch(rf"job-{job_id}-\d{{8}}T\d{{6}}Z\.csv", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_text().splitlines()[0] == "gender,n"
    shot(page, "04-merchant-approved-downloaded")
    context.close()

    # 4. The auditor finds all of it in the log, and the chain verifies.
    context, page = login(browser, site, "auditor")
    page.goto(site + f"/audit?job={job_id}")
    table = page.locator("#audit-table")
    for action in ("job.submit", "job.approve", "job.download"):
        expect(table.locator(f'tr[data-action="{action}"]').first).to_be_visible()
    shot(page, "05-auditor-job-entries")
    page.goto(site + "/audit?actor=insight_isv&action=job.check")
    expect(table).to_contain_text("nick")
    page.click("#verify")
    expect(page.locator("#verify-result")).to_contain_text("intact")
    shot(page, "06-auditor-verified")
    context.close()


def test_chinese_interface_in_the_browser(browser, site):
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    page.goto(site + "/")
    from playwright.sync_api import expect

    expect(page.locator("h1")).to_contain_text("数据洁净室")
    page.click("text=English")
    expect(page.locator("h1")).to_contain_text("data clean room")
    shot(page, "07-language-switch")
    context.close()

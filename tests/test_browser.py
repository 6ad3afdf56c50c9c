"""Real browser: Debian's Chromium driven by Playwright through each user's journey.

The provider writes, checks (syntax error, denial, apply suggestion, allow) and submits a
job, watches it and reopens it from its recent queries; the merchant (in Chinese) uploads
UTF-8 and GBK files through the schema editor, approves with the summary and the preview's
chart, downloads the Excel CSV and withdraws its upload; the auditor
filters and verifies; the admin creates a merchant and its user; the layout holds on a
phone. Screenshots of each step at 1280x800 and 390x844 go to tests/output/browser/, and
to docs/screenshots/ with YUSHAN_SCREENSHOTS=1 (`make screenshots`).
"""

from __future__ import annotations

import hashlib
import os
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
DOC_SHOTS = Path(__file__).parent.parent / "docs" / "screenshots"
SIZES = ((1280, 800), (390, 844))
DENIED_SQL = "SELECT nick, count(*) AS n FROM platform.consumers GROUP BY nick"
BROKEN_SQL = "SELECT gender, count(* AS n\nFROM platform.consumers GROUP BY gender"
GOOD_SQL = "SELECT gender, count(*) AS n FROM platform.consumers GROUP BY gender"
# A segment job whose two columns have other names: the fix renames them.
SEGMENT_SQL = ("SELECT CASE WHEN c.vip_level >= 5 THEN 'vip' ELSE 'regular' END AS tier,\n"
               "       m.member_id\nFROM hanfu_house.members m\n"
               "JOIN platform.consumers c ON m.phone_hash = c.phone_hash")
STORES = ("杭州西湖店", "上海南京路店", "北京王府井店")


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


def login(browser, base: str, username: str, locale: str = "en-US",
          password: str = PASSWORD):
    context = browser.new_context(accept_downloads=True, locale=locale,
                                  viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.on("dialog", lambda dialog: dialog.accept())  # confirmations: yes
    page.goto(base + "/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-submit")
    page.wait_for_url(re.compile(r".*/dashboard$"))
    return context, page


def shot(page, name: str, focus: str | None = None) -> None:
    """The visible page at desktop and phone size (small PNGs), then desktop again;
    ``focus`` (a selector) is scrolled into view first."""
    targets = [SHOTS] + ([DOC_SHOTS] if os.environ.get("YUSHAN_SCREENSHOTS") == "1" else [])
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        if focus:
            page.locator(focus).first.scroll_into_view_if_needed()
        for folder in targets:
            folder.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(folder / f"{name}-{width}.png"))
    page.set_viewport_size({"width": 1280, "height": 800})


def member_csv(encoding: str) -> bytes:
    lines = ["member_id,phone_hash,tier,home_store,points"]
    for i, store in enumerate(STORES):
        digest = hashlib.sha256(f"1380000000{i}".encode()).hexdigest()
        lines.append(f"M{i:04d},{digest},gold,{store},{1200 + i * 1000}")
    return ("\r\n".join(lines) + "\r\n").encode(encoding)


def test_provider_writes_checks_submits_and_watches(browser, site):
    from playwright.sync_api import expect

    context, page = login(browser, site, "insight_isv")
    page.goto(site + "/jobs/new")
    page.select_option("#merchant", "hanfu_house")
    page.select_option("#kind", "segment")
    expect(page.locator("#help-segment")).to_be_visible()
    page.select_option("#kind", "aggregate")
    expect(page.locator("#help-segment")).to_be_hidden()
    page.click("#help-aggregate .insert-example")
    expect(page.locator("#sql")).to_have_value(re.compile(r"GROUP BY c\.gender"))

    # A syntax error is reported as such (never as a policy denial), underlined where
    # the check says, and Ctrl+Enter checks.
    decision = page.locator("#decision")
    page.fill("#sql", BROKEN_SQL)
    page.press("#sql", "Control+Enter")
    expect(decision).to_have_class(re.compile(r"\bsyntax\b"), timeout=120_000)
    expect(decision.locator(".verdict")).to_have_text("SQL syntax error")
    expect(page.locator("#sql-highlight .tk-error").first).to_be_visible()
    expect(page.locator("#submit")).to_be_disabled()
    shot(page, "01-provider-syntax-error", "#decision")

    # A denial explains itself; Submit stays off until the query changes.
    page.fill("#sql", DENIED_SQL)
    page.click("#check")
    expect(decision).to_have_class(re.compile(r"\bdeny\b"), timeout=120_000)
    expect(decision.locator(".rule").first).to_have_text(re.compile(r"P\d"))
    expect(decision).to_contain_text("nick")
    expect(decision.locator(".suggestion").first).to_be_visible()
    expect(page.locator("#submit")).to_be_disabled()
    shot(page, "02-provider-check-denied", "#decision")

    # Where the fix is mechanical, "Apply suggestion" rewrites the query; the user checks it.
    page.select_option("#kind", "segment")
    page.fill("#sql", SEGMENT_SQL)
    page.click("#check")
    expect(decision).to_have_class(re.compile(r"\bdeny\b"), timeout=120_000)
    expect(decision.locator(".rule").first).to_have_text("P5")
    apply = decision.locator("button.apply-fix")
    expect(apply).to_have_attribute("data-fix", "segment_columns")
    shot(page, "12-provider-apply-suggestion", "#decision")
    apply.click()
    expect(page.locator("#sql")).to_have_value(re.compile(r"END AS segment,\s+m\.member_id AS member"))
    expect(page.locator("#fix-applied")).to_be_visible()
    expect(page.locator("#submit")).to_be_disabled()  # checked first
    page.click("#check")
    expect(decision).to_have_class(re.compile(r"\ballow\b"), timeout=120_000)
    expect(page.locator("#submit")).to_be_enabled()
    page.select_option("#kind", "aggregate")

    # Allowed: what it reads and how it is released; then submit and watch it.
    page.fill("#sql", GOOD_SQL)
    expect(page.locator("#submit")).to_be_enabled()
    page.fill("#job-name", "gender split")
    page.click("#check")
    expect(decision).to_have_class(re.compile(r"\ballow\b"), timeout=120_000)
    expect(page.locator("#check-columns")).to_contain_text("gender")
    expect(page.locator("#check-release")).to_be_visible()
    shot(page, "03-provider-check-allowed", "#decision")
    page.click("#submit")
    page.wait_for_url(re.compile(r".*/jobs/\d+$"))
    # The job page follows the job by itself until it ends.
    expect(page.locator("#job-state .state")).to_have_attribute(
        "data-state", "awaiting_approval", timeout=300_000)
    expect(page.locator("#clone")).to_be_visible()
    shot(page, "04-provider-job-awaiting-approval")

    # Edit & resubmit: the editor opens with the job's kind, merchant, SQL and name, and
    # lists the provider's recent queries for the merchant (jobs and checks), newest first.
    job_url = page.url
    page.click("#clone")
    page.wait_for_url(re.compile(r".*/jobs/new\?from=\d+$"))
    expect(page.locator("#sql")).to_have_value(GOOD_SQL)
    expect(page.locator("#kind")).to_have_value("aggregate")
    expect(page.locator("#merchant")).to_have_value("hanfu_house")
    expect(page.locator("#job-name")).to_have_value("gender split")
    history = page.locator('.merchant-history[data-merchant="hanfu_house"] li.past')
    newest = history.first
    expect(newest).to_have_attribute("data-source", "job")
    expect(newest.locator("a")).to_have_attribute("href", job_url.replace(site, ""))
    denied = history.filter(has_text="GROUP BY nick")
    expect(denied).to_have_attribute("data-source", "check")
    expect(denied.locator(".outcome")).to_have_text("checked: denied")
    expect(history.filter(has_text="AS tier")).to_have_count(1)  # the denied segment check
    shot(page, "13-provider-recent-queries", "#query-history")
    denied.locator(".load-query").click()  # a different query is there: confirmed, replaced
    expect(page.locator("#sql")).to_have_value(DENIED_SQL)
    context.close()


def test_merchant_uploads_approves_downloads_and_withdraws(browser, site, tmp_path):
    from playwright.sync_api import expect

    utf8, gbk = tmp_path / "members-utf8.csv", tmp_path / "members-gbk.csv"
    utf8.write_bytes(member_csv("utf-8"))
    gbk.write_bytes(member_csv("gbk"))
    context, page = login(browser, site, "hanfu_owner", locale="zh-CN")
    page.goto(site + "/datasets?lang=zh_CN")
    page.click("#upload-dataset")
    page.wait_for_url(re.compile(r".*/datasets/upload$"))
    expect(page.locator("h1")).to_have_text("上传数据集")

    # UTF-8 then GBK: the header and first rows read in the right encoding.
    page.set_input_files("#upload-file", str(utf8))
    expect(page.locator("#encoding-detected")).to_have_attribute("data-encoding", "utf-8")
    expect(page.locator("#upload-preview")).to_contain_text(STORES[0])
    page.fill("#upload-name", "")
    page.set_input_files("#upload-file", str(gbk))
    expect(page.locator("#encoding-detected")).to_have_attribute("data-encoding", "gb18030")
    expect(page.locator("#upload-preview")).to_contain_text(STORES[1])
    rows = page.locator("#schema-table tbody tr")
    expect(rows).to_have_count(5)
    expect(rows.nth(0).locator(".col-key")).to_be_checked()
    expect(rows.nth(1).locator(".col-link")).to_be_checked()
    expect(rows.nth(4).locator(".col-type")).to_have_value("int")
    schema = page.locator("#schema-json").input_value()
    assert '"member_key": "member_id"' in schema and '"regex"' in schema
    page.fill("#upload-name", "vip_gbk")
    shot(page, "05-merchant-upload-preview")
    page.click("#upload-submit")
    # Sent with Prefer: respond-async: the bar follows the validation's phases (polled),
    # then the upload's own page shows the outcome.
    expect(page.locator("#upload-status")).to_be_visible()
    expect(page.locator("#upload-result")).to_be_visible(timeout=300_000)
    assert re.search(r"/datasets/uploads/up_[0-9a-f]{24}$", page.url), page.url
    shot(page, "06-merchant-upload-accepted")
    page.goto(site + "/datasets")
    card = page.locator("#ds-hanfu_house\\.vip_gbk")
    expect(card.locator(".ds-encoding")).to_contain_text("GBK")
    expect(card.locator(".ds-rows")).to_have_text("3")

    # The approval card summarises what the job read and releases; approve (confirmed).
    page.goto(site + "/approvals")
    card = page.locator("section.approval").first
    expect(card.locator(".columns-read")).to_contain_text("gender")
    expect(card.locator(".release")).to_be_visible()
    expect(card.locator("pre.sql")).to_be_hidden()
    shot(page, "07-merchant-approvals")
    job_link = card.locator("h2 a").get_attribute("href")

    # The job page previews the quarantined rows as a chart too, read out for screen readers.
    page.goto(site + job_link)
    chart = page.locator("#preview-chart-1")
    expect(chart).to_have_attribute("data-rendered", "true", timeout=60_000)
    expect(page.locator("#preview-chart-1-alt")).to_have_attribute(
        "aria-label", re.compile(r"^条形图：按 gender 显示 n，共 2 条。(F|M): -?[\d,.]+ ± [\d.,]+; (F|M)"))
    expect(page.locator("#preview-table th").nth(1)).to_contain_text("±")
    shot(page, "14-merchant-preview-chart", "#approval-preview")
    page.goto(site + "/approvals")
    card.locator("button.approve").click()
    page.goto(site + job_link)
    expect(page.locator("#job-state .state")).to_have_attribute("data-state", "approved")
    expect(page.locator("#job-state .state")).to_have_text("已批准")
    table = page.locator("#result-table")
    expect(table).to_contain_text("F")
    expect(page.locator("#result-chart-1")).to_have_attribute("data-rendered", "true", timeout=60_000)
    expect(page.locator("#result-chart-1-figure figcaption")).to_contain_text("± ")
    table.locator("th").first.click()
    expect(table.locator("th").first).to_have_attribute("aria-sort", "ascending")
    with page.expect_download() as info:
        page.click("#download-csv-excel")
    download = info.value
    assert re.fullmatch(r"gender_split-job-\d+-\d{8}T\d{6}Z\.csv", download.suggested_filename)
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    body = saved.read_bytes()
    assert body.startswith(b"\xef\xbb\xbfgender,n\r\n")
    shot(page, "08-merchant-approved-result")

    # On a phone the header is one line, the menu opens, and the page never scrolls sideways.
    page.set_viewport_size({"width": 390, "height": 844})
    header = page.locator("header.top").bounding_box()
    assert header and header["height"] < 80
    expect(page.locator("#main-nav")).to_be_hidden()
    page.click("#nav-toggle")
    expect(page.locator("#main-nav")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.set_viewport_size({"width": 1280, "height": 800})

    # Withdraw the upload: the confirmation says what is destroyed.
    page.goto(site + "/datasets")
    page.click("#withdraw-vip_gbk")
    expect(page.locator("#withdraw-warning")).to_contain_text("3")
    shot(page, "09-merchant-withdraw-confirm")
    page.click("#withdraw-confirm")
    expect(page.locator("#withdrawn")).to_be_visible()
    page.goto(site + "/datasets")
    expect(page.locator("#ds-hanfu_house\\.vip_gbk")).to_have_count(0)
    context.close()


def test_auditor_filters_and_verifies(browser, site):
    from playwright.sync_api import expect

    context, page = login(browser, site, "auditor")
    page.goto(site + "/audit")
    page.select_option("#filter-action", "job.approve")
    page.click("#filter")
    entries = page.locator("#audit-table tr.entry")
    expect(entries.first).to_have_attribute("data-action", "job.approve")
    assert set(entries.evaluate_all("rows => rows.map(r => r.dataset.action)")) == {"job.approve"}
    expect(page.locator("#audit-table time.local").first).to_contain_text(re.compile(r"UTC|GMT"))
    shot(page, "10-auditor-filtered")
    page.click("#verify")
    expect(page.locator("#verify-result")).to_contain_text("intact")
    context.close()


def test_admin_creates_a_merchant_and_its_user(browser, site):
    from playwright.sync_api import expect

    context, page = login(browser, site, "admin", locale="zh-CN")
    page.goto(site + "/admin/?lang=zh_CN")
    page.select_option("#tenant-kind", "merchant")
    page.fill("#tenant-slug", "silk_road")
    page.fill("#tenant-name", "丝路商行")
    page.click("#tenant-create")
    expect(page.locator("#tenant-silk_road")).to_contain_text("商家")
    page.select_option("#user-role", "merchant")
    page.select_option("#user-tenant", "silk_road")
    page.fill("#user-name", "silk_owner")
    page.fill("#user-password", "silk-road-password-1")
    page.click("#user-create")
    expect(page.locator("#user-silk_owner")).to_be_visible()
    shot(page, "11-admin-accounts")
    context.close()
    context, page = login(browser, site, "silk_owner", password="silk-road-password-1")
    expect(page.locator(".who")).to_have_attribute("data-role", "merchant")
    context.close()


def test_chinese_interface_in_the_browser(browser, site):
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    page.goto(site + "/")
    from playwright.sync_api import expect

    expect(page.locator("h1")).to_contain_text("数据洁净室")
    page.click("text=English")
    expect(page.locator("h1")).to_contain_text("data clean room")
    context.close()

"""The pages a merchant and its provider use without help (issue 18), through the test
client: datasets with upload and withdrawal, approvals summarised from the decision (no
audit entry per pending job), a reject reason the provider reads, clone & resubmit,
admin accounts, and the audit page's filters."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from web_support import PASSWORD, csrf_from, page_login, populate

from web import create_app

DECISION = {"decision": "allow", "violations": [], "kind": "aggregate", "k": 50,
            "datasets_read": ["platform.consumers", "hanfu_house.members"],
            "columns_read": [{"dataset": "platform.consumers", "column": "gender"},
                             {"dataset": "hanfu_house.members", "column": "tier"}],
            "release": "dp", "epsilon": 0.5, "accuracy": {"n": {"ci95": 12.5}}}


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    return any_db_config, create_app(any_db_config)


def logged_in(app, username: str):
    client = app.test_client()
    assert page_login(client, username).status_code == 302
    return client


def awaiting_job(config, name: str = "tier split") -> int:
    """A job of insight_isv for hanfu_house whose output awaits approval (no files)."""
    import audit
    from jobs import lifecycle
    from jobs.service import actor_for
    from yushan.db import session_scope
    from yushan.models import Job, JobState, Tenant, User

    audit.register_config(config)
    with session_scope(config) as session:
        isv = session.scalar(select(User).where(User.username == "insight_isv"))
        merchant = session.scalar(select(Tenant).where(Tenant.slug == "hanfu_house"))
        job = lifecycle.create(session, merchant_id=merchant.id, submitter_id=isv.id,
                               kind="aggregate", sql="SELECT tier, count(*) AS n FROM hanfu_house.members GROUP BY tier",
                               name=name, decision=DECISION, actor=actor_for(isv))
        session.execute(Job.__table__.update().where(Job.id == job.id).values(
            state=JobState.AWAITING_APPROVAL.value, released_rows=3, suppressed_rows=1))
        return job.id


def audit_count(config) -> int:
    from yushan.db import session_scope
    from yushan.models import AuditEntry

    with session_scope(config) as session:
        return session.scalar(select(func.count()).select_from(AuditEntry))


def test_datasets_page_offers_upload_and_withdraw_naming_the_jobs(world):
    config, app = world
    job_id = awaiting_job(config)
    merchant = logged_in(app, "hanfu_owner")
    html = merchant.get("/datasets").get_data(as_text=True)
    assert 'id="upload-dataset"' in html and 'href="/datasets/upload"' in html
    assert 'id="withdraw-members"' in html and "ds-rows" in html
    # a provider sees the merchant's data it may use, but no upload or withdraw
    provider_html = logged_in(app, "insight_isv").get("/datasets").get_data(as_text=True)
    assert "upload-dataset" not in provider_html and "withdraw-" not in provider_html

    upload = merchant.get("/datasets/upload").get_data(as_text=True)
    assert 'id="schema-table"' in upload and 'id="template-csv"' in upload
    template = merchant.get("/datasets/upload/template.csv")
    assert template.status_code == 200
    assert template.data.startswith(b"\xef\xbb\xbfmember_id,phone_hash")

    confirm = merchant.get("/datasets/hanfu_house.members/withdraw")
    text = confirm.get_data(as_text=True)
    assert confirm.status_code == 200
    assert "hanfu_house.members" in text and f'href="/jobs/{job_id}"' in text
    assert "can never be read again" in text
    # another merchant's dataset looks exactly like a missing one
    assert merchant.get("/datasets/tea_garden.members/withdraw").status_code == 404

    token = csrf_from(text)
    done = merchant.post("/datasets/hanfu_house.members/withdraw", data={"csrf_token": token})
    assert done.status_code == 200 and 'id="withdrawn"' in done.get_data(as_text=True)
    assert 'id="ds-hanfu_house.members"' not in merchant.get("/datasets").get_data(as_text=True)


def test_upload_refusal_keeps_what_the_merchant_typed(world):
    _, app = world
    merchant = logged_in(app, "hanfu_owner")
    token = csrf_from(merchant.get("/datasets/upload").get_data(as_text=True))
    schema = '{"member_key": "member_id", "columns": [{"name": "member_id", "type": "nope"}]}'
    response = merchant.post("/datasets/upload", data={
        "csrf_token": token, "name": "vip_list", "schema": schema, "encoding": "gbk",
        "file": (__import__("io").BytesIO(b"member_id\nM1\n"), "vip.csv")},
        content_type="multipart/form-data")
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and 'id="upload-error"' in html
    assert 'value="vip_list"' in html and "&#34;nope&#34;" in html
    assert '<option value="gbk" selected>' in html
    # in Chinese, the service's refusal too
    zh = merchant.post("/datasets/upload?lang=zh_CN", data={
        "csrf_token": token, "name": "vip_list", "schema": schema,
        "file": (__import__("io").BytesIO(b"member_id\nM1\n"), "vip.csv")},
        content_type="multipart/form-data").get_data(as_text=True)
    assert "未知的列类型" in zh and "Unknown column type" not in zh


def test_approvals_summarise_the_decision_and_write_no_audit_entry(world):
    config, app = world
    job_id = awaiting_job(config)
    merchant = logged_in(app, "hanfu_owner")
    before = audit_count(config)
    html = merchant.get("/approvals").get_data(as_text=True)
    assert audit_count(config) == before
    card = html[html.index(f'id="approval-{job_id}"'):]
    assert "platform.consumers" in card and "hanfu_house.members" in card
    assert "<code>gender</code>" in card and "<code>tier</code>" in card
    assert 'data-release="dp"' in card and "ε = 0.5" in card
    assert "<details" in card and "data-confirm" in card and 'name="reason"' in card
    zh = merchant.get("/approvals?lang=zh_CN").get_data(as_text=True)
    assert "差分隐私" in zh and "读取的列" in zh


def test_reject_reason_reaches_the_provider_and_the_audit(world):
    config, app = world
    job_id = awaiting_job(config)
    merchant = logged_in(app, "hanfu_owner")
    token = csrf_from(merchant.get(f"/jobs/{job_id}").get_data(as_text=True))
    response = merchant.post(f"/jobs/{job_id}/reject",
                             data={"csrf_token": token, "reason": "按省份分组", "next": "job"})
    assert response.status_code == 302
    provider = logged_in(app, "insight_isv")
    html = provider.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert 'id="reject-reason"' in html and "按省份分组" in html

    import audit
    from yushan.db import session_scope

    with session_scope(config) as session:
        entry = audit.query(session, action="job.reject", job=job_id)[0]
    assert entry["details"]["reason"] == "按省份分组"


def test_clone_starts_from_the_job(world):
    config, app = world
    job_id = awaiting_job(config, name="clone me")
    provider = logged_in(app, "insight_isv")
    html = provider.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert f'href="/jobs/new?from={job_id}"' in html
    form = provider.get(f"/jobs/new?from={job_id}").get_data(as_text=True)
    assert "GROUP BY tier</textarea>" in form and 'value="clone me"' in form
    # someone who cannot see the job cannot clone it
    assert logged_in(app, "other_isv").get(f"/jobs/new?from={job_id}").status_code == 404


def test_resubmit_only_while_the_user_may_act_for_the_merchant(world):
    config, app = world
    job_id = awaiting_job(config, name="again")
    merchant = logged_in(app, "hanfu_owner")
    assert f'href="/jobs/new?from={job_id}"' in merchant.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert 'value="again"' in merchant.get(f"/jobs/new?from={job_id}").get_data(as_text=True)
    # the merchant revokes the provider: it still sees its job, but may not resubmit it
    token = csrf_from(merchant.get("/authorizations").get_data(as_text=True))
    assert merchant.post("/authorizations/insight_isv/revoke",
                         data={"csrf_token": token}).status_code == 302
    provider = logged_in(app, "insight_isv")
    page = provider.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and 'id="clone"' not in page.get_data(as_text=True)
    assert provider.get(f"/jobs/new?from={job_id}").status_code == 404


def test_a_template_job_is_resubmitted_through_its_form(world):
    import audit
    from jobs import lifecycle
    from jobs.service import actor_for
    from yushan.db import session_scope
    from yushan.models import Tenant, User

    config, app = world
    audit.register_config(config)
    with session_scope(config) as session:
        isv = session.scalar(select(User).where(User.username == "insight_isv"))
        merchant = session.scalar(select(Tenant).where(Tenant.slug == "hanfu_house"))
        job_id = lifecycle.create(session, merchant_id=merchant.id, submitter_id=isv.id,
                                  kind="aggregate", sql="SELECT 1", name="health check",
                                  decision=None, actor=actor_for(isv),
                                  template="membership_health", params={"as_of": "2025-06-30"}).id
    provider = logged_in(app, "insight_isv")
    response = provider.get(f"/jobs/new?from={job_id}")
    assert response.status_code == 302
    assert response.headers["Location"].endswith(f"/templates/membership_health?from={job_id}")
    form = provider.get(response.headers["Location"]).get_data(as_text=True)
    assert 'value="2025-06-30"' in form and 'value="health check"' in form
    assert provider.get(f"/templates/store_overlap?from={job_id}").status_code == 404
    assert logged_in(app, "other_isv").get(f"/templates/membership_health?from={job_id}").status_code == 404


def test_the_editor_lists_the_users_recent_queries_per_merchant(world):
    import audit
    from jobs.service import actor_for
    from yushan.db import session_scope
    from yushan.models import User

    config, app = world
    job_id = awaiting_job(config, name="tiers")
    audit.register_config(config)
    with session_scope(config) as session:
        isv = session.scalar(select(User).where(User.username == "insight_isv"))
        audit.record(session, "job.check", actor=actor_for(isv), objects={"merchant": "hanfu_house"},
                     details={"kind": "segment", "sql": "SELECT 'a' AS segment, m.member_id AS member "
                              "FROM hanfu_house.members m", "decision": "deny", "violations": []})
    provider = logged_in(app, "insight_isv")
    html = provider.get("/jobs/new").get_data(as_text=True)
    history = html[html.index('id="query-history"'):]
    block = history[history.index('data-merchant="hanfu_house"'):]
    assert block.index('data-source="check"') < block.index('data-source="job"')  # newest first
    assert f'href="/jobs/{job_id}"' in block and "tiers" in block
    assert 'data-kind="segment"' in block and "checked: denied" in block
    assert 'class="load-query' in block and "GROUP BY tier" in block
    zh = provider.get("/jobs/new?lang=zh_CN").get_data(as_text=True)
    assert "最近的查询" in zh and "已检查：拒绝" in zh and "载入编辑器" in zh
    # another provider sees none of it
    other = logged_in(app, "other_isv").get("/jobs/new").get_data(as_text=True)
    assert "GROUP BY tier" not in other and 'class="hint no-history"' in other


def test_admin_creates_a_merchant_and_its_user_and_resets_a_password(world):
    config, app = world
    admin = logged_in(app, "admin")
    token = csrf_from(admin.get("/admin/").get_data(as_text=True))
    assert admin.post("/admin/tenants", data={"csrf_token": token, "kind": "merchant",
                                              "slug": "silk_road", "name": "丝路商行"}).status_code == 302
    assert admin.post("/admin/users", data={"csrf_token": token, "role": "merchant",
                                            "tenant": "silk_road", "username": "silk_owner",
                                            "password": "a-long-password-1"}).status_code == 302
    html = admin.get("/admin/").get_data(as_text=True)
    assert 'id="tenant-silk_road"' in html and 'id="user-silk_owner"' in html
    # a refusal says what to change and changes nothing
    admin.post("/admin/users", data={"csrf_token": token, "role": "provider",
                                     "tenant": "silk_road", "username": "wrong_kind",
                                     "password": "a-long-password-1"})
    html = admin.get("/admin/").get_data(as_text=True)
    assert "Nothing was changed" in html and 'id="user-wrong_kind"' not in html
    admin.post("/admin/tenants?lang=zh_CN", data={"csrf_token": token, "kind": "merchant",
                                                  "slug": "silk_road", "name": "again"})
    assert "名为 silk_road 的机构已存在" in admin.get("/admin/?lang=zh_CN").get_data(as_text=True)

    newcomer = app.test_client()
    assert page_login(newcomer, "silk_owner", "a-long-password-1").status_code == 302
    assert admin.post("/admin/users/hanfu_owner/password",
                      data={"csrf_token": token, "password": "another-password-2"}).status_code == 302
    assert page_login(app.test_client(), "hanfu_owner", PASSWORD).status_code != 302
    assert page_login(app.test_client(), "hanfu_owner", "another-password-2").status_code == 302

    import audit
    from yushan.db import session_scope

    with session_scope(config) as session:
        actions = [e["action"] for e in audit.query(session, actor="admin")]
    for action in ("admin.tenant_create", "admin.user_create", "admin.password_reset"):
        assert action in actions
    assert "another-password-2" not in str(actions)


def test_audit_page_filters_by_action_and_whole_days(world):
    config, app = world
    awaiting_job(config)
    auditor = logged_in(app, "auditor")
    html = auditor.get("/audit").get_data(as_text=True)
    assert 'id="filter-action"' in html and '<option value="job.submit"' in html
    assert 'type="date"' in html and 'class="local"' in html
    from datetime import UTC, datetime

    today = datetime.now(UTC).date().isoformat()
    html = auditor.get(f"/audit?action=job.submit&until={today}").get_data(as_text=True)
    assert 'data-action="job.submit"' in html and 'data-action="auth.login"' not in html


def test_audit_entries_show_sql_and_violations_readably(world):
    import audit
    from jobs.service import actor_for
    from yushan.db import session_scope
    from yushan.models import User

    config, app = world
    audit.register_config(config)
    with session_scope(config) as session:
        isv = session.scalar(select(User).where(User.username == "insight_isv"))
        audit.record(session, "job.check", actor=actor_for(isv), objects={"merchant": "hanfu_house"},
                     details={"kind": "aggregate", "sql": "SELECT nick, count(*) AS n\nFROM platform.consumers",
                              "decision": "deny", "violations": [
                                  {"rule": "P1", "column": "nick", "message": "An identifying column."},
                                  {"rule": "P5", "column": "n", "message": "Row-level output."}]})
    html = logged_in(app, "auditor").get("/audit?action=job.check").get_data(as_text=True)
    row = html[html.index('data-action="job.check"'):]
    assert '<pre class="sql-inline">SELECT nick, count(*) AS n\nFROM platform.consumers</pre>' in row
    assert '<details class="audit-violations"><summary>2 · P1 P5</summary>' in row
    assert "<strong>P1</strong> · <code>nick</code>: An identifying column." in row

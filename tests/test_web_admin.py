"""Admin pages: how executors are protected (with a warning where they are not), tenants,
users and platform datasets; changes to k and classes audited."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from web_support import USERS, csrf_from, page_login, populate

from web import create_app


@pytest.fixture
def world(make_config):
    from yushan.cli import initialise

    config = make_config()
    initialise(config)
    populate(config)
    client = create_app(config).test_client()
    page_login(client, "admin")
    return config, client


def test_overview_lists_tenants_users_and_platform_datasets(world):
    _, client = world
    html = client.get("/admin/").get_data(as_text=True)
    for text in ("hanfu_house", "insight_isv", "tea_owner", "platform.consumers", "platform.items"):
        assert text in html
    assert "hanfu_house.members" not in html  # a merchant's dataset is not the platform's


def test_admin_changes_k_and_a_column_class(world):
    config, client = world
    from yushan.db import session_scope
    from yushan.models import Dataset

    with session_scope(config) as session:
        ds = session.scalar(select(Dataset).where(Dataset.full_name == "platform.consumers"))
        ds_id, classes = ds.id, {c.name: c.column_class for c in ds.columns}
    csrf = csrf_from(client.get("/admin/").get_data(as_text=True))
    form = {f"class_{name}": cls for name, cls in classes.items()}
    form.update({"class_city": "private", "k": "80", "entity_column": "user_id", "csrf_token": csrf})
    assert client.post(f"/admin/datasets/{ds_id}", data=form).status_code == 302
    with session_scope(config) as session:
        ds = session.get(Dataset, ds_id)
        assert ds.k == 80
        assert {c.name: c.column_class for c in ds.columns}["city"] == "private"
        import audit

        entry = audit.query(session, action="admin.dataset_update")[0]
        assert entry["details"]["before"]["k"] == 50 and entry["details"]["after"]["k"] == 80
    bad = dict(form, k="1")
    assert client.post(f"/admin/datasets/{ds_id}", data=bad).status_code == 422
    bad = dict(form, class_city="secret")
    assert client.post(f"/admin/datasets/{ds_id}", data=bad).status_code == 422
    assert client.post("/admin/datasets/999999", data=form).status_code == 404


# ---------------------------------------------------------------- sandbox protections

NETWORK_WARNING = {"en": "executors run without network isolation", "zh_CN": "执行器在没有网络隔离的情况下运行"}
MEMORY_WARNING = {"en": "executors run without a kernel memory limit", "zh_CN": "执行器在没有内核内存限制的情况下运行"}
NOT_RECORDED = {"en": "Not recorded yet: no worker has started.", "zh_CN": "尚无记录：还没有工作进程启动过。"}
HEADING = {"en": "<h2>Sandbox</h2>", "zh_CN": "<h2>沙箱</h2>"}


def sandbox_section(client, lang: str) -> str:
    html = client.get(f"/admin/?lang={lang}").get_data(as_text=True)
    start = html.index('<section id="sandbox">')
    return html[start:html.index("</section>", start)]


def row(section: str, name: str) -> str:
    start = section.index(f'id="sandbox-{name}"')
    return section[start:section.index("</tr>", start)]


def test_before_any_worker_the_sandbox_section_says_nothing_is_recorded(world):
    _, client = world
    for lang in ("en", "zh_CN"):
        section = sandbox_section(client, lang)
        assert HEADING[lang] in section
        for name in ("network", "memory"):
            assert NOT_RECORDED[lang] in row(section, name)
        assert 'role="alert"' not in section


@pytest.mark.parametrize("key, mode, reason, warning", [
    ("sandbox.network_isolation", "isolated", "own network namespace, loopback only", None),
    ("sandbox.network_isolation", "cluster", "Spark master spark needs the network", None),
    ("sandbox.network_isolation", "disabled", "YUSHAN_NETWORK_ISOLATION is off", NETWORK_WARNING),
    ("sandbox.network_isolation", "unavailable", "the OS refused a network namespace: <EPERM>", NETWORK_WARNING),
    ("sandbox.network_isolation", "from-a-newer-worker", "", NETWORK_WARNING),  # unknown: not trusted
    ("sandbox.memory_limit", "cgroup2", "one memory cgroup per executor under /sys/fs/cgroup/w", None),
    ("sandbox.memory_limit", "cgroup1", "one memory cgroup per executor under /sys/fs/cgroup/memory/w", None),
    ("sandbox.memory_limit", "sampling", "no cgroup memory controller for this process", MEMORY_WARNING),
])
def test_the_sandbox_section_shows_each_mode_and_warns_when_a_protection_is_missing(
    world, key, mode, reason, warning,
):
    from jobs.worker import record_sandbox_setting

    config, client = world
    record_sandbox_setting(config, key, {"mode": mode, "reason": reason})
    name, other = ("network", "memory") if key == "sandbox.network_isolation" else ("memory", "network")
    for lang in ("en", "zh_CN"):
        section = sandbox_section(client, lang)
        shown = row(section, name)
        assert f"<code>{mode}</code>" in shown and f'data-mode="{mode}"' in shown
        assert (reason.replace("<", "&lt;").replace(">", "&gt;") or "<td></td>") in shown  # escaped
        assert " UTC</td>" in shown  # when it was recorded
        assert NOT_RECORDED[lang] in row(section, other)
        alerts = section.count('role="alert"')
        if warning is None:
            assert alerts == 0 and 'class="unprotected"' not in section
            assert NETWORK_WARNING[lang] not in section and MEMORY_WARNING[lang] not in section
        else:
            assert alerts == 1 and 'class="unprotected"' in shown
            alert = section[section.index(f'id="sandbox-warning-{name}"'):]
            alert = alert[:alert.index("</p>")]
            assert 'class="flash error"' in section  # styled like the app's other errors
            assert warning[lang] in alert
            anchor = "network" if name == "network" else "limits"
            assert f"<code>docs/operations.md#{anchor}</code>" in alert
        wrong = MEMORY_WARNING if warning is NETWORK_WARNING else NETWORK_WARNING
        assert wrong[lang] not in section


def test_both_protections_missing_give_two_warnings(world):
    from jobs.worker import record_sandbox_setting

    config, client = world
    record_sandbox_setting(config, "sandbox.network_isolation", {"mode": "unavailable", "reason": "r1"})
    record_sandbox_setting(config, "sandbox.memory_limit", {"mode": "sampling", "reason": "r2"})
    section = sandbox_section(client, "zh_CN")
    assert NETWORK_WARNING["zh_CN"] in section and MEMORY_WARNING["zh_CN"] in section
    assert section.count('role="alert"') == 2
    assert "Warning" not in section  # nothing left in English but the workers' own reasons


def test_only_admins_see_the_sandbox_section(make_config):
    from jobs.worker import record_sandbox_setting
    from yushan.cli import initialise

    config = make_config()
    initialise(config)
    populate(config)
    record_sandbox_setting(config, "sandbox.network_isolation", {"mode": "unavailable", "reason": "r"})
    app = create_app(config)
    anonymous = app.test_client().get("/admin/")
    assert anonymous.status_code == 302 and "/login" in anonymous.headers["Location"]
    for username, (role, _) in USERS.items():
        if role == "admin":
            continue
        client = app.test_client()
        page_login(client, username)
        assert client.get("/admin/").status_code == 403, username
        for path in ("/", "/dashboard"):
            html = client.get(path).get_data(as_text=True)
            assert 'id="sandbox' not in html and "network isolation" not in html, (username, path)


def test_recording_a_changed_plan_is_audited_once_and_an_unchanged_one_not_at_all(world):
    import audit
    from jobs.worker import record_sandbox_setting
    from sandbox.cgroup import MemoryMode, MemoryPlan
    from yushan.db import session_scope
    from yushan.models import Setting

    config, _ = world
    sampling = MemoryPlan(MemoryMode.SAMPLING, "the OS refused a memory cgroup").as_setting()
    kernel = MemoryPlan(MemoryMode.CGROUP_V2, "one memory cgroup per executor").as_setting()
    network = {"mode": "isolated", "reason": "own network namespace, loopback only"}

    def entries(action: str) -> list[dict]:
        with session_scope(config) as session:
            return audit.query(session, action=action)

    assert record_sandbox_setting(config, "sandbox.memory_limit", sampling)
    assert not record_sandbox_setting(config, "sandbox.memory_limit", dict(sampling))  # unchanged
    assert len(entries("admin.sandbox_memory")) == 1
    assert record_sandbox_setting(config, "sandbox.memory_limit", kernel)  # changed
    assert not record_sandbox_setting(config, "sandbox.memory_limit", kernel)
    memory = entries("admin.sandbox_memory")
    assert len(memory) == 2
    latest = max(memory, key=lambda e: e["seq"])
    assert latest["details"] == kernel and latest["objects"] == {"setting": "sandbox.memory_limit"}
    assert (latest["actor"], latest["origin"]) == ("system", "worker")
    assert entries("admin.sandbox_network") == []  # each protection its own setting and action
    assert record_sandbox_setting(config, "sandbox.network_isolation", network)
    assert not record_sandbox_setting(config, "sandbox.network_isolation", network)
    assert len(entries("admin.sandbox_network")) == 1 and len(entries("admin.sandbox_memory")) == 2
    with session_scope(config) as session:
        assert session.get(Setting, "sandbox.memory_limit").value == kernel
        assert session.get(Setting, "sandbox.network_isolation").value == network
    assert audit.verify(config).ok

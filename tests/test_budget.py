"""Privacy budgets (policy D5): who sees a merchant's budget, the admin's changes (validated,
audited), charges once per (job, attempt) in the transaction of their audit entry, a job
over budget blocked before it runs with what is left, and the check showing the budget."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select
from web_support import api_token, assert_documented, bearer, populate

import audit
from jobs import budget, lifecycle, service
from jobs.queue import claim
from jobs.worker import Worker
from policies.engine import Decision
from sandbox.pool import RunReport
from yushan.accounts import get_tenant
from yushan.db import session_scope
from yushan.models import BudgetCharge, BudgetPeriod, Job, User, budget_period

ALL_USERS = ("admin", "auditor", "hanfu_owner", "tea_owner", "insight_isv", "other_isv")


@pytest.fixture
def world(any_db_config):
    audit.register_config(any_db_config)
    populate(any_db_config)
    return any_db_config


@pytest.fixture
def client(world):
    from web import create_app

    app = create_app(world)
    app.config.update(TESTING=True)
    test_client = app.test_client()
    test_client.tokens = {u: api_token(test_client, u) for u in ALL_USERS}
    return test_client


def _user(session, username: str) -> User:
    return session.scalar(select(User).where(User.username == username))


def _job(config, merchant: str = "hanfu_house", username: str = "insight_isv") -> int:
    with session_scope(config) as session:
        submitter = _user(session, username)
        return lifecycle.create(
            session, merchant_id=get_tenant(session, merchant).id, submitter_id=submitter.id,
            kind="aggregate", sql="SELECT 1 AS x", name="", decision=None,
            actor=service.actor_for(submitter, "pytest"),
        ).id


def _entries(config, action: str) -> list[dict]:
    with session_scope(config) as session:
        return audit.query(session, action=action, limit=1000)


def _dp(epsilon: float, delta: float = 1e-7) -> dict:
    """An allowing dp decision as the executor sends it, costing (epsilon, delta)."""
    return Decision(kind="aggregate", merchant="hanfu_house", violations=[], release="dp",
                    epsilon=epsilon, delta=delta,
                    accuracy={"buyers": {"ci95": 12.5}}).to_dict()


# -- who sees what ------------------------------------------------------------------------


def test_the_budget_is_shown_to_the_merchant_its_providers_and_the_admin_only(client, world):
    start, end = budget_period()
    for username in ("admin", "hanfu_owner", "insight_isv"):
        response = client.get("/api/v1/budgets/hanfu_house", headers=bearer(client.tokens[username]))
        assert response.status_code == 200, username
        assert_documented(response, "/api/v1/budgets/{merchant}", "GET")
        # A merchant without a budget of its own: the platform default, nothing spent.
        assert response.get_json() == {
            "merchant": "hanfu_house", "period_start": start.isoformat(), "period_end": end.isoformat(),
            "epsilon": 10.0, "delta": 1e-6, "epsilon_spent": 0.0, "delta_spent": 0.0,
        }
    missing = client.get("/api/v1/budgets/no_such_shop", headers=bearer(client.tokens["admin"]))
    assert missing.status_code == 404
    for username in ("tea_owner", "other_isv", "auditor"):  # not theirs: exactly like missing
        response = client.get("/api/v1/budgets/hanfu_house", headers=bearer(client.tokens[username]))
        assert response.status_code == 404, username
        assert response.get_json() == client.get(
            "/api/v1/budgets/no_such_shop", headers=bearer(client.tokens[username])).get_json()
    # Providers are not merchants: no budget to show.
    assert client.get("/api/v1/budgets/insight_isv", headers=bearer(client.tokens["admin"])).status_code == 404
    assert client.get("/api/v1/budgets/hanfu_house").status_code == 401
    # Reading opens nothing: no silent period.
    assert not _entries(world, "budget.open")


# -- the admin's changes ------------------------------------------------------------------


def test_the_admin_sets_the_current_period_audited(client, world):
    admin = bearer(client.tokens["admin"])
    response = client.put("/api/v1/budgets/hanfu_house", headers=admin, json={"epsilon": 50, "delta": 1e-5})
    assert response.status_code == 200
    assert_documented(response, "/api/v1/budgets/{merchant}", "PUT")
    assert response.get_json()["epsilon"] == 50.0 and response.get_json()["delta"] == 1e-5
    shown = client.get("/api/v1/budgets/hanfu_house", headers=bearer(client.tokens["hanfu_owner"])).get_json()
    assert (shown["epsilon"], shown["delta"]) == (50.0, 1e-5)
    (opened,) = _entries(world, "budget.open")
    assert opened["details"]["epsilon"] == 10.0  # opened with the default, then raised
    (changed,) = _entries(world, "budget.set")
    assert changed["actor"] == "admin" and changed["objects"] == {"merchant": "hanfu_house"}
    assert changed["details"]["before"] == {"epsilon": 10.0, "delta": 1e-6}
    assert changed["details"]["after"] == {"epsilon": 50.0, "delta": 1e-5}
    # Only the admin changes budgets.
    for username in ("hanfu_owner", "insight_isv"):
        refused = client.put("/api/v1/budgets/hanfu_house", headers=bearer(client.tokens[username]),
                             json={"epsilon": 1e6, "delta": 0.5})
        assert refused.status_code == 403
    assert len(_entries(world, "budget.set")) == 1


@pytest.mark.parametrize(("body", "named"), [
    ({"epsilon": -1, "delta": 1e-6}, "epsilon"),
    ({"epsilon": 0, "delta": 1e-6}, "epsilon"),
    ({"epsilon": "10", "delta": 1e-6}, "epsilon"),
    ({"epsilon": True, "delta": 1e-6}, "epsilon"),
    ({"epsilon": 1e400, "delta": 1e-6}, "epsilon"),
    ({"epsilon": 10, "delta": 1}, "delta"),
    ({"epsilon": 10, "delta": 0}, "delta"),
    ({"epsilon": 10}, "epsilon"),
    ({"epsilon": 10, "delta": 1e-6, "refresh": "monthly"}, "epsilon"),
])
def test_a_bad_budget_is_refused_naming_the_field(client, world, body, named):
    response = client.put("/api/v1/budgets/hanfu_house", headers=bearer(client.tokens["admin"]), json=body)
    assert response.status_code == 400
    assert_documented(response, "/api/v1/budgets/{merchant}", "PUT")
    assert named in response.get_json()["error"]["message"]
    assert not _entries(world, "budget.set")


def test_the_cli_shows_and_sets_a_budget_audited(world, tmp_path):
    import json

    from click.testing import CliRunner

    from yushan.cli import main
    from yushan.config import get_config, set_config

    saved = get_config()
    try:
        home = ["--home", str(world.home)]
        runner = CliRunner(env={"YUSHAN_DATABASE_URL": world.database_url})
        result = runner.invoke(main, [*home, "budget", "set", "tea_garden", "--epsilon", "3",
                                      "--delta", "1e-7", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["epsilon"] == 3.0
        shown = runner.invoke(main, [*home, "budget", "show", "tea_garden"])
        assert shown.exit_code == 0 and "spent of 3" in shown.output
        bad = runner.invoke(main, [*home, "budget", "set", "tea_garden", "--epsilon", "nan", "--delta", "1e-7"])
        assert bad.exit_code == 1 and "epsilon" in bad.output
        assert runner.invoke(main, [*home, "budget", "show", "nobody"]).exit_code == 1
    finally:
        set_config(saved)
    (entry,) = _entries(world, "budget.set")
    assert entry["origin"] == "cli" and entry["objects"] == {"merchant": "tea_garden"}


# -- charges ------------------------------------------------------------------------------


def test_a_run_is_charged_once_per_attempt(world):
    job_id = _job(world)
    actor = audit.Actor.system("worker")
    for _ in range(2):  # the same attempt again (a repeated message): one charge
        with session_scope(world) as session:
            budget.charge(session, world, job_id, 1, 0.5, 1e-7, actor)
    with session_scope(world) as session:
        assert session.scalar(select(func.count()).select_from(BudgetCharge)) == 1
        period = session.scalar(select(BudgetPeriod))
        assert math.isclose(period.epsilon_spent, 0.5) and math.isclose(period.delta_spent, 1e-7)
        # A retry is a new attempt: charged again.
        budget.charge(session, world, job_id, 2, 0.5, 1e-7, actor)
    with session_scope(world) as session:
        assert sorted(session.scalars(select(BudgetCharge.attempt))) == [1, 2]
        assert math.isclose(session.scalar(select(BudgetPeriod)).epsilon_spent, 1.0)
        assert session.get(Job, job_id).epsilon == 0.5
    charges = _entries(world, "budget.charge")
    assert sorted(e["details"]["attempt"] for e in charges) == [1, 2]
    assert all(e["objects"] == {"job": job_id, "merchant": "hanfu_house"} for e in charges)
    assert len(_entries(world, "budget.open")) == 1


def test_a_charge_and_its_audit_entry_commit_together(world):
    job_id = _job(world)
    with pytest.raises(RuntimeError), session_scope(world) as session:
        budget.charge(session, world, job_id, 1, 0.5, 0.0, audit.Actor.system("worker"))
        raise RuntimeError("the worker died before its commit")
    with session_scope(world) as session:
        assert session.scalar(select(func.count()).select_from(BudgetCharge)) == 0
    assert not _entries(world, "budget.charge")


def test_a_charge_over_what_is_left_charges_nothing(world):
    job_id = _job(world)
    actor = audit.Actor.system("worker")
    with session_scope(world) as session:
        budget.charge(session, world, job_id, 1, 9.5, 0.0, actor)  # of the default 10
    with pytest.raises(budget.OverBudget) as over, session_scope(world) as session:
        budget.charge(session, world, _job(world), 1, 1.0, 0.0, actor)
    assert math.isclose(over.value.epsilon_left, 0.5)
    with session_scope(world) as session:
        assert session.scalar(select(func.count()).select_from(BudgetCharge)) == 1
        assert math.isclose(session.scalar(select(BudgetPeriod)).epsilon_spent, 9.5)
    violation = over.value.violation()
    assert violation["rule"] == "D5" and violation["column"] == "(query)" and violation["sources"] == []
    assert "epsilon 0.5" in violation["message"] and budget_period()[1].isoformat() in violation["message"]
    assert violation["suggestion"]


# -- the worker's go/no-go ------------------------------------------------------------------


def test_the_worker_charges_a_dp_job_at_start_or_blocks_it_before_it_runs(world):
    worker = Worker(world)  # not started: its go/no-go and recording, on a real claim
    first = _job(world)
    claimed = claim(world, worker.identity)
    assert claimed.id == first
    assert worker._charge(claimed, _dp(4.0)) is None  # go: charged
    worker._record(claimed, RunReport(message={"outcome": "failed", "decision": _dp(4.0),
                                               "error": {"class": "X", "message": "failed after start"}}))
    second = _job(world)
    claimed = claim(world, worker.identity)
    assert claimed.id == second
    blocked = worker._charge(claimed, _dp(7.0))  # 6 left of the default 10
    assert blocked["decision"] == "deny" and [v["rule"] for v in blocked["violations"]] == ["D5"]
    assert "epsilon 6" in blocked["violations"][0]["message"]
    worker._record(claimed, RunReport(message={"outcome": "blocked", "decision": blocked}))
    with session_scope(world) as session:
        failed, denied = session.get(Job, first), session.get(Job, second)
        # Charged on start, whether the job then succeeds or fails.
        assert failed.state == "failed"
        assert service.job_json(failed)["release"] == "dp" and service.job_json(failed)["epsilon"] == 4.0
        doc = service.job_json(denied)
        assert doc["state"] == "blocked" and doc["release"] == "dp" and doc["epsilon"] is None
        assert doc["violations"] == blocked["violations"]
        assert session.scalar(select(func.count()).select_from(BudgetCharge)) == 1
        assert math.isclose(session.scalar(select(BudgetPeriod)).epsilon_spent, 4.0)
        (decision,) = audit.query(session, job=second, action="job.decision")
        assert decision["details"]["violations"][0]["rule"] == "D5"
    assert [e["objects"]["job"] for e in _entries(world, "budget.charge")] == [first]


def test_a_cancelled_job_is_not_charged(world):
    worker = Worker(world)
    job_id = _job(world)
    claimed = claim(world, worker.identity)
    with session_scope(world) as session:
        service.cancel(session, _user(session, "insight_isv"), session.get(Job, job_id))
    assert worker._charge(claimed, _dp(1.0))["decision"] == "deny"
    assert not _entries(world, "budget.charge")


# -- the check ------------------------------------------------------------------------------


def test_the_check_shows_cost_budget_left_and_accuracy_for_dp_only(world):
    actor = audit.Actor.system("worker")
    with session_scope(world) as session:
        budget.charge(session, world, _job(world), 1, 2.5, 1e-7, actor)
    with session_scope(world) as session:
        merchant = get_tenant(session, "hanfu_house")
        doc = service._with_release(session, world, merchant, _dp(0.5))
        assert doc["release"] == "dp" and doc["epsilon"] == 0.5
        assert doc["accuracy"] == {"buyers": {"ci95": 12.5}}
        assert math.isclose(doc["budget"]["epsilon_left"], 7.5)
        assert math.isclose(doc["budget"]["delta_left"], 9e-7)
        assert doc["budget"]["period_end"] == budget_period()[1].isoformat()
        threshold = Decision(kind="aggregate", merchant="hanfu_house", violations=[],
                             release="threshold").to_dict()
        doc = service._with_release(session, world, merchant, threshold)
        assert doc["release"] == "threshold"
        assert not {"epsilon", "budget", "accuracy"} & set(doc)
        # The check costs nothing.
        assert math.isclose(session.scalar(select(BudgetPeriod)).epsilon_spent, 2.5)


# -- pages ----------------------------------------------------------------------------------


def _page_client(world, username: str):
    from web_support import page_login

    from web import create_app

    client = create_app(world).test_client()
    page_login(client, username)
    return client


def test_the_admin_page_shows_and_sets_each_merchants_budget(world):
    import re

    from web_support import csrf_from

    client = _page_client(world, "admin")
    html = client.get("/admin/").get_data(as_text=True)
    row = re.search(r'<tr id="budget-tea_garden">.*?</tr>', html, re.S).group(0)
    assert "0 / 10" in row and 'name="epsilon"' in row
    assert 'id="budget-insight_isv"' not in html  # providers have no budget
    csrf = csrf_from(html)
    saved = client.post("/admin/budgets/tea_garden", data={"epsilon": "25", "delta": "2e-6", "csrf_token": csrf})
    assert saved.status_code == 302
    refused = client.post("/admin/budgets/tea_garden", data={"epsilon": "-1", "delta": "2e-6", "csrf_token": csrf})
    assert refused.status_code == 303
    assert "delta a positive number below 1" in client.get("/admin/").get_data(as_text=True)
    assert client.post("/admin/budgets/nobody", data={"epsilon": "1", "delta": "1e-6",
                                                      "csrf_token": csrf}).status_code == 404
    html = client.get("/admin/").get_data(as_text=True)
    assert "0 / 25" in re.search(r'<tr id="budget-tea_garden">.*?</tr>', html, re.S).group(0)
    (entry,) = _entries(world, "budget.set")
    assert entry["actor"] == "admin" and entry["details"]["after"] == {"epsilon": 25.0, "delta": 2e-6}
    owner = _page_client(world, "hanfu_owner")
    own_csrf = csrf_from(owner.get("/dashboard").get_data(as_text=True))
    assert owner.post("/admin/budgets/hanfu_house", data={"epsilon": "1e6", "delta": "0.5",
                                                          "csrf_token": own_csrf}).status_code == 403
    assert len(_entries(world, "budget.set")) == 1


def test_dashboards_show_the_budget_left_with_what_epsilon_means(world):
    import re

    with session_scope(world) as session:
        budget.charge(session, world, _job(world), 1, 2.5, 0.0, audit.Actor.system("worker"))
    owner = _page_client(world, "hanfu_owner").get("/dashboard").get_data(as_text=True)
    assert "7.5 / 10" in re.search(r'<tr id="budget-hanfu_house">.*?</tr>', owner, re.S).group(0)
    assert "ε (epsilon) bounds how much" in owner and "budget-tea_garden" not in owner
    provider = _page_client(world, "insight_isv")
    html = provider.get("/dashboard").get_data(as_text=True)
    assert 'id="budget-hanfu_house"' in html and "budget-tea_garden" not in html
    chinese = provider.get("/dashboard?lang=zh_CN").get_data(as_text=True)
    assert "剩余隐私预算" in chinese and "ε（epsilon）限定了" in chinese
    assert "budget-table" not in _page_client(world, "auditor").get("/dashboard").get_data(as_text=True)


def test_the_platform_default_is_a_setting(monkeypatch, tmp_path):
    from yushan.config import Config, ConfigError

    monkeypatch.setenv("YUSHAN_DP_EPSILON", "4")
    monkeypatch.setenv("YUSHAN_DP_DELTA", "1e-8")
    config = Config.from_env(home=tmp_path)
    assert (config.dp_default_epsilon, config.dp_default_delta) == (4.0, 1e-8)
    for name, raw in (("YUSHAN_DP_EPSILON", "-1"), ("YUSHAN_DP_EPSILON", "inf"), ("YUSHAN_DP_DELTA", "1")):
        monkeypatch.setenv(name, raw)
        with pytest.raises(ConfigError, match=name):
            Config.from_env(home=tmp_path)
        monkeypatch.setenv(name, "1e-8")


# -- the pipe round trip ----------------------------------------------------------------------

# The executor's side of a dp job's start, without Spark: ask the worker, report the verdict.
_EXECUTOR_SIDE = """
import sys
from sandbox.executor import _ask_to_start
from sandbox.protocol import Channel

channel = Channel(int(sys.argv[1]), int(sys.argv[2]))
request = channel.recv()
verdict = _ask_to_start(channel, request["job_id"], {"decision": "allow", "release": "dp", "epsilon": 1.5})
channel.send({"type": "result", "outcome": "released" if verdict["go"] else "blocked", "verdict": verdict})
"""


@pytest.mark.parametrize("answer", ["go", "no-go", "no ledger"])
def test_the_executor_waits_for_the_workers_verdict_before_a_dp_run(make_config, answer):
    import os
    import subprocess
    import sys

    from sandbox.limits import Limits
    from sandbox.pool import Executor
    from sandbox.protocol import Channel

    config = make_config()
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", _EXECUTOR_SIDE, str(to_child_r), str(from_child_w)],
                            pass_fds=(to_child_r, from_child_w))
    os.close(to_child_r)
    os.close(from_child_w)
    executor = Executor(config, network=None)
    executor.proc, executor.channel = proc, Channel(from_child_r, to_child_w)
    asked: list[dict] = []
    blocking = {"decision": "deny", "violations": [{"rule": "D5"}]}

    def on_start(decision: dict) -> dict | None:
        asked.append(decision)
        return None if answer == "go" else blocking

    try:
        report = executor.run({"job_id": 41}, Limits.from_config(config), lambda progress: None,
                              None if answer == "no ledger" else on_start)
    finally:
        executor.kill()
    verdict = report.message["verdict"]
    if answer == "go":
        assert asked == [{"decision": "allow", "release": "dp", "epsilon": 1.5}]
        assert verdict == {"type": "verdict", "job_id": 41, "go": True, "decision": None}
    elif answer == "no-go":
        assert report.message["outcome"] == "blocked" and verdict["decision"] == blocking
    else:  # nothing to charge it: a dp job never runs uncharged
        assert asked == [] and verdict["go"] is False and verdict["decision"] is None


def test_the_job_form_carries_the_check_labels_for_a_dp_cost_in_both_languages(world):
    client = _page_client(world, "insight_isv")
    assert 'data-cost="Privacy cost"' in client.get("/jobs/new").get_data(as_text=True)
    assert 'data-cost="隐私成本"' in client.get("/jobs/new?lang=zh_CN").get_data(as_text=True)

"""``yushan.client`` against the real app: waitress on a free port in a thread, the demo
world, a real worker running the jobs (Spark). Nothing is mocked."""

from __future__ import annotations

import ast
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from web import create_app
from web.edges import create_server
from yushan.client import (
    Client,
    ClientError,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    Job,
    JobTimeout,
    NotFound,
    TransportError,
    Unauthorized,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]
PASSWORD = "demo-password"
ALLOWED_SQL = "SELECT gender, count(*) AS n FROM platform.consumers GROUP BY gender"
DENIED_SQL = "SELECT nick FROM platform.consumers"


class Served:
    """The web app under waitress (the server `yushan serve` runs), on a free port."""

    def __init__(self, config):
        self.server = create_server(create_app(config), config, host="127.0.0.1", port=0, threads=4)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="test-waitress")
        self.thread.start()

    def close(self) -> None:
        self.server.close()
        self.server.task_dispatcher.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def site(demo_config, worker):
    served = Served(demo_config)
    yield served.url
    served.close()


@pytest.fixture(scope="module")
def users(site):
    clients = {name: Client.login(site, name, PASSWORD)
               for name in ("insight_isv", "hanfu_owner", "tea_owner", "auditor")}
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(scope="module")
def approved(users):
    """A job submitted by the provider, waited for with progress, approved by the merchant."""
    isv, owner = users["insight_isv"], users["hanfu_owner"]
    seen: list[Job] = []
    key = "client-test-approved"
    job = isv.submit("hanfu_house", "aggregate", ALLOWED_SQL, name="by gender", idempotency_key=key)
    done = isv.wait(job.id, timeout=300, poll_interval=0.2, on_progress=seen.append)
    approved = owner.approve(job.id)
    return {"submitted": job, "done": done, "approved": approved, "seen": seen, "key": key}


def plain(value):
    """The API's JSON form of a value (decimals as numbers, times in ISO 8601)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def test_login_and_who_am_i(site, users):
    me = users["insight_isv"].me()
    assert (me.username, me.role, me.tenant) == ("insight_isv", "provider", "insight_isv")
    assert "hanfu_house" in me.merchants and "tea_garden" not in me.merchants
    with pytest.raises(Unauthorized) as refused:
        Client.login(site, "insight_isv", "wrong password")
    assert refused.value.status == 401 and refused.value.code == "unauthorized"


def test_a_bad_token_is_a_401_client_error(site):
    with Client(site, token="not-a-token") as stranger, pytest.raises(ClientError) as refused:
        next(stranger.jobs())
    assert isinstance(refused.value, Unauthorized)
    assert refused.value.status == 401 and refused.value.code == "unauthorized"
    assert refused.value.document["error"]["message"] == refused.value.message
    with Client(site) as anonymous, pytest.raises(Unauthorized):
        anonymous.me()


def test_datasets_with_classes_through_every_page(users):
    owner = users["hanfu_owner"]
    datasets = owner.datasets()
    names = [d.name for d in datasets]
    assert "platform.consumers" in names and "hanfu_house.members" in names
    assert not any(n.startswith("tea_garden.") for n in names)
    consumers = next(d for d in datasets if d.name == "platform.consumers")
    classes = {c.name: c.column_class for c in consumers.columns}
    assert consumers.consumer_data and consumers.entity_column == "user_id"
    assert classes["phone"] == "private" and classes["user_id"] == "identifier"
    assert [d.name for d in owner.datasets(page_size=2)] == names  # paged: the same, in order


def test_check_allows_and_denies_with_violations(users):
    isv = users["insight_isv"]
    allowed = isv.check("hanfu_house", "aggregate", ALLOWED_SQL)
    assert allowed.allowed and allowed.violations == () and allowed.release in ("dp", "threshold")
    denied = isv.check("hanfu_house", "aggregate", DENIED_SQL)
    assert denied.decision == "deny" and not denied.allowed
    violation = denied.violations[0]
    assert violation.rule == "P1" and violation.message and violation.suggestion
    assert ("platform.consumers", "nick", "private") in {
        (s.dataset, s.column, s.column_class) for s in violation.sources}
    error = isv.check("hanfu_house", "aggregate", "SELEC nothing")
    assert error.decision == "error" and error.error["class"]
    with pytest.raises(NotFound):  # a merchant that did not authorise the caller
        isv.check("tea_garden", "aggregate", ALLOWED_SQL)


def test_submit_wait_with_progress_and_approve(users, approved):
    job, done, seen = approved["submitted"], approved["done"], approved["seen"]
    assert job.state == "queued" and job.merchant == "hanfu_house" and job.name == "by gender"
    assert done.id == job.id and done.state == "awaiting_approval" and not done.active
    assert done.summary is None  # the counts are part of the release (P8)
    # The callback saw the job first as found and last as returned, each change once.
    assert seen[0].id == job.id and seen[-1].state == "awaiting_approval"
    assert all((a.state, a.progress) != (b.state, b.progress) for a, b in zip(seen, seen[1:], strict=False))
    assert {j.state for j in seen} <= {"queued", "running", "awaiting_approval"}
    assert approved["approved"].state == "approved"
    assert approved["approved"].summary["released_rows"] >= 1
    with pytest.raises(Forbidden):  # only the job's merchant approves
        users["insight_isv"].approve(job.id)


def test_a_retried_submission_answers_the_same_job(users, approved):
    isv, key = users["insight_isv"], approved["key"]
    again = isv.submit("hanfu_house", "aggregate", ALLOWED_SQL, name="by gender", idempotency_key=key)
    assert again.id == approved["submitted"].id
    assert again.raw == approved["submitted"].raw  # the original answer, as it was
    with pytest.raises(IdempotencyKeyReused) as reused:
        isv.submit("hanfu_house", "aggregate", ALLOWED_SQL, name="other name", idempotency_key=key)
    assert reused.value.status == 422 and reused.value.code == "idempotency_key_reused"
    # The audit trail has one submission, noting the key.
    entries = list(users["auditor"].audit(action="job.submit", job=approved["submitted"].id))
    assert len(entries) == 1 and entries[0]["details"]["idempotency_key"] == key


def test_results_as_arrow_pandas_and_parquet_equal_the_json(users, approved, tmp_path: Path):
    import pyarrow.parquet as pq

    isv, owner, job_id = users["insight_isv"], users["hanfu_owner"], approved["submitted"].id
    expected = owner.result_json(job_id)
    table = owner.result(job_id)
    assert table.column_names == expected["columns"] and table.num_rows >= 1
    assert [{k: plain(v) for k, v in row.items()} for row in table.to_pylist()] == expected["rows"]
    # The provider may see the rows (view_results): the same table.
    assert isv.result(job_id).equals(table)
    frame = owner.to_pandas(job_id)
    assert list(frame.columns) == expected["columns"] and len(frame) == table.num_rows
    path = owner.download_parquet(job_id, tmp_path / "result.parquet")
    assert pq.read_table(path).equals(table) and not list(tmp_path.glob("*.part"))
    csv = owner.download(job_id, tmp_path / "result.csv", "csv")
    assert csv.read_text(encoding="utf-8").splitlines()[0] == ",".join(expected["columns"])


def test_another_tenants_job_is_not_found(users, approved):
    tea, job_id = users["tea_owner"], approved["submitted"].id
    with pytest.raises(NotFound) as hidden:
        tea.job(job_id)
    with pytest.raises(NotFound) as missing:
        tea.job(10**15 + 1)
    assert hidden.value.status == 404 and hidden.value.document == missing.value.document
    for action in (tea.result, tea.approve, tea.cancel):
        with pytest.raises(NotFound):
            action(job_id)
    assert job_id not in {j.id for j in tea.jobs()}


def test_jobs_iterate_through_every_page_with_filters(users, approved):
    isv = users["insight_isv"]
    everything = [j.id for j in isv.jobs()]
    assert approved["submitted"].id in everything
    assert [j.id for j in isv.jobs(page_size=1)] == everything
    approved_only = list(isv.jobs(state="approved", merchant="hanfu_house", page_size=1))
    assert approved["submitted"].id in {j.id for j in approved_only}
    assert all(j.state == "approved" and j.merchant == "hanfu_house" for j in approved_only)
    assert list(isv.jobs(merchant="tea_garden")) == []


def test_reject_with_a_reason_cancel_and_timeouts(users):
    isv, owner = users["insight_isv"], users["hanfu_owner"]
    job = isv.submit("hanfu_house", "aggregate", ALLOWED_SQL + " ORDER BY gender", name="to reject")
    with pytest.raises(JobTimeout) as late:
        isv.wait(job.id, timeout=0)
    assert late.value.job.id == job.id and isinstance(late.value, TimeoutError)
    with pytest.raises(Conflict):  # no result before approval
        owner.result(job.id)
    done = isv.wait(job.id, timeout=300, poll_interval=0.2)
    assert done.state == "awaiting_approval"
    rejected = owner.reject(job.id, reason="not this month")
    assert rejected.state == "rejected"
    assert isv.job(job.id).reject_reason == "not this month"
    with pytest.raises(Conflict):
        owner.approve(job.id)

    queued = isv.submit("hanfu_house", "aggregate", ALLOWED_SQL, name="to cancel")
    assert isv.cancel(queued.id).state == "cancelled"


def test_denied_submission_ends_blocked(users):
    isv = users["insight_isv"]
    job = isv.wait(isv.submit("hanfu_house", "aggregate", DENIED_SQL).id, timeout=300, poll_interval=0.2)
    assert job.state == "blocked" and job.final
    assert {v.rule for v in job.violations} & {"P1", "P5"}


def test_budget_and_templates(users, approved):
    budget = users["hanfu_owner"].budget("hanfu_house")
    assert budget.merchant == "hanfu_house" and budget.epsilon > 0
    assert budget.epsilon_left == pytest.approx(max(0.0, budget.epsilon - budget.epsilon_spent))
    if approved["done"].release == "dp":
        assert budget.epsilon_spent > 0
    with pytest.raises(NotFound):  # another merchant's budget
        users["hanfu_owner"].budget("tea_garden")
    templates = {t.name: t for t in users["insight_isv"].templates()}
    assert "rfm" in templates and templates["rfm"].params


def test_no_server_is_a_transport_error():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with Client(f"http://127.0.0.1:{port}", token="t", retries=1) as client, \
            pytest.raises(TransportError) as failed:
        client.me()
    assert failed.value.status is None


def test_the_client_imports_nothing_of_the_server():
    package = Path(__file__).resolve().parent.parent / "yushan" / "client"
    server = ("web", "jobs", "sandbox", "policies", "audit", "onboarding")
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in server, (path.name, name)
                assert not name.startswith("yushan.") or name.startswith("yushan.client"), (path.name, name)


def test_uploads_take_an_idempotency_key_and_can_be_withdrawn(users, tmp_path: Path):
    owner = users["hanfu_owner"]
    schema = {"member_key": "member_id",
              "columns": [{"name": "member_id", "type": "string"}, {"name": "tier", "type": "string"}]}
    path = tmp_path / "tiers.csv"
    path.write_text("member_id,tier\nM1,gold\nM2,silver\n", encoding="utf-8")
    first = owner.upload("client_tiers", path, schema, idempotency_key="upload-1")
    assert first["dataset"] == "hanfu_house.client_tiers" and first["rows"] == 2
    # The retry answers the original (no 409 for the name it took itself).
    assert owner.upload("client_tiers", path, schema, idempotency_key="upload-1") == first
    other = tmp_path / "other.csv"
    other.write_text("member_id,tier\nM1,gold\n", encoding="utf-8")
    with pytest.raises(IdempotencyKeyReused):
        owner.upload("client_tiers", other, schema, idempotency_key="upload-1")
    with pytest.raises(Conflict):  # a new request for a taken name
        owner.upload("client_tiers", path, schema)
    entries = list(users["auditor"].audit(action="dataset.upload", tenant="hanfu_house"))
    noted = [e for e in entries if e["objects"].get("dataset") == "hanfu_house.client_tiers"]
    assert len(noted) == 1 and noted[0]["details"]["idempotency_key"] == "upload-1"
    assert "hanfu_house.client_tiers" in {d.name for d in owner.datasets()}
    owner.withdraw("client_tiers")
    assert "hanfu_house.client_tiers" not in {d.name for d in owner.datasets()}


class LosingProxy:
    """A TCP proxy in front of the site that forwards each request but, for the first
    ``lose`` of them, drops the connection instead of passing the answer back: the
    server did the work, the client never heard (a dropped connection, a timeout)."""

    def __init__(self, site: str, lose: int):
        import socket

        host, port = site.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.lose = lose
        self.forwarded = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True, name="losing-proxy")
        self.thread.start()

    def _serve(self) -> None:
        import socket

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
                request = b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body
                with socket.create_connection(self.target) as upstream:
                    upstream.sendall(request)
                    answer = b""
                    while chunk := upstream.recv(65536):
                        answer += chunk
                self.forwarded += 1
                if self.forwarded > self.lose:
                    conn.sendall(answer)

    def close(self) -> None:
        self.listener.close()


def test_a_submission_whose_answer_was_lost_is_retried_into_the_same_job(site, users):
    proxy = LosingProxy(site, lose=1)
    try:
        flaky = Client(proxy.url, token=users["insight_isv"].token, retries=2)
        job = flaky.submit("hanfu_house", "aggregate", ALLOWED_SQL, name="lost answer")
        flaky.close()
    finally:
        proxy.close()
    assert proxy.forwarded == 2  # the server saw the submission twice ...
    # ... and queued it once: the retry carried the same Idempotency-Key.
    mine = [j for j in users["insight_isv"].jobs(merchant="hanfu_house") if j.name == "lost answer"]
    assert [j.id for j in mine] == [job.id]
    users["insight_isv"].cancel(job.id)

"""Strict edges: body caps before reading, JSON depth, UTF-8, bounded ids, SQL shape
limits, 405 with Allow, and every error in the contract's shape.

Each case is what a hostile or broken client sends; the answer must be a 4xx in the
API's error shape, never a 500 (and the SQL limits must refuse before Spark is touched).
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest
from web_support import api_token, bearer, populate

from web import create_app
from web.edges import MAX_JSON_DEPTH, SMALL_BODY_BYTES, create_server


@pytest.fixture
def world(make_config):
    from yushan.cli import initialise

    config = make_config()
    initialise(config)
    populate(config)
    app = create_app(config)
    client = app.test_client()
    return config, app, client, {u: api_token(client, u) for u in ("insight_isv", "hanfu_owner")}


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


JOB = {"merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT 1 AS x"}


def test_deeply_nested_json_is_refused_even_without_credentials(world):
    _, _, client, t = world
    deep = "[" * 100_000 + "]" * 100_000
    for path, headers in (("/api/v1/token", {}), ("/api/v1/jobs", bearer(t["insight_isv"])),
                          ("/api/v1/jobs/check", bearer(t["insight_isv"]))):
        error = error_of(client.post(path, data=deep, headers={**headers,
                                     "Content-Type": "application/json"}), 400)
        assert str(MAX_JSON_DEPTH) in error["message"]
    # Just inside the limit is still JSON (a wrong shape, not a parse failure).
    shallow = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert error_of(client.post("/api/v1/token", data=shallow,
                                content_type="application/json"), 400)["code"] == "bad_request"
    # Brackets inside strings do not count.
    inside = json.dumps({"username": "[" * 5000, "password": "x"})
    assert client.post("/api/v1/token", data=inside,
                       content_type="application/json").status_code == 401


def test_lone_surrogates_and_bad_utf8_are_refused(world):
    _, _, client, t = world
    for raw in (b'{"merchant": "\\ud800", "kind": "aggregate", "sql": "SELECT 1"}',
                b'{"merchant": "hanfu_house", "kind": "aggregate", "sql": "SELECT \xed\xa0\x80"}',
                b'{"name": "\xff"}'):
        error = error_of(client.post("/api/v1/jobs", data=raw, headers={
            **bearer(t["insight_isv"]), "Content-Type": "application/json"}), 400)
        assert error["code"] == "bad_json"
    error_of(client.post("/api/v1/token", data=b'{"username": "\\udfff", "password": "x"}',
                         content_type="application/json"), 400)
    # Percent-encoded bytes that are not UTF-8, in the path and in the query string.
    error_of(client.get("/api/v1/jobs?state=%ED%A0%80", headers=bearer(t["hanfu_owner"])), 400)
    error_of(client.delete("/api/v1/datasets/%ff", headers=bearer(t["hanfu_owner"])), 400)


def test_integer_ids_out_of_range_are_not_found(world):
    _, _, client, t = world
    for job_id in (2**63, 2**64 + 5, 10**40, -1):
        for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/result"):
            assert error_of(client.get(path, headers=bearer(t["hanfu_owner"])), 404)
        error_of(client.post(f"/api/v1/jobs/{job_id}/cancel", headers=bearer(t["hanfu_owner"])),
                 404)
    error_of(client.get(f"/api/v1/jobs/{2**63 - 1}", headers=bearer(t["hanfu_owner"])), 404)


def test_unknown_job_state_names_the_value(world):
    _, _, client, t = world
    error = error_of(client.get("/api/v1/jobs?state=AAA", headers=bearer(t["hanfu_owner"])), 400)
    assert "'AAA'" in error["message"] and "awaiting_approval" in error["message"]
    assert client.get("/api/v1/jobs?state=queued",
                      headers=bearer(t["hanfu_owner"])).status_code == 200


def test_method_not_allowed_says_what_is(world):
    _, _, client, _ = world
    response = client.put("/api/v1/token")
    error_of(response, 405)
    assert set(response.headers["Allow"].split(", ")) >= {"POST", "DELETE"}
    page = client.delete("/login")
    assert page.status_code == 405 and "POST" in page.headers["Allow"]


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/jobs/check"])
def test_sql_shape_limits_refuse_before_spark(world, path, monkeypatch):
    _, _, client, t = world
    import jobs.service

    def no_spark(*_args, **_kwargs):
        raise AssertionError("the query reached Spark")

    monkeypatch.setattr(jobs.service, "evaluate", no_spark)
    cases = {
        "sql_too_deep": "SELECT " + "(" * 5000 + "1" + ")" * 5000 + " AS x",
        "sql_too_complex": "SELECT " + " + ".join(["1"] * 4000) + " AS x",
    }
    started = time.monotonic()
    for code, sql in cases.items():
        error = error_of(client.post(path, json={**JOB, "sql": sql},
                                     headers=bearer(t["insight_isv"])), 422)
        assert error["code"] == code
        assert any(ch.isdigit() for ch in error["message"])  # it names the limit
    too_large = {**JOB, "sql": "SELECT 1 AS x -- " + "x" * 200_000}
    assert error_of(client.post(path, json=too_large, headers=bearer(t["insight_isv"])),
                    413)["code"] == "too_large"
    assert time.monotonic() - started < 5  # refused in milliseconds, before any parse


def test_declared_body_over_the_route_cap_is_refused_unread(world):
    _, _, client, t = world
    response = client.post("/api/v1/token", data=b"x" * (SMALL_BODY_BYTES + 1),
                           content_type="application/json")
    assert str(SMALL_BODY_BYTES) in error_of(response, 413)["message"]


class _Server:
    def __init__(self, app, config):
        self.server = create_server(app, config, host="127.0.0.1", port=0, threads=2)
        self.port = self.server.effective_port
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.close()
        self.server.task_dispatcher.shutdown()
        self.thread.join(timeout=10)


def _send_head(port: int, path: str, length: int, extra: str = "") -> tuple[int, dict, bytes, float]:
    """Send only the request head declaring ``length`` body bytes; read the answer."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    sock.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {length}\r\n{extra}\r\n").encode())
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    elapsed = time.monotonic() - started
    sock.close()
    return response.status, dict(response.getheaders()), body, elapsed


def test_waitress_refuses_a_huge_body_from_its_headers(world):
    """512 MiB declared to /token: answered 413 (JSON) at once, without the body being sent."""
    config, app, _, _ = world
    server = _Server(app, config)
    try:
        status, headers, body, elapsed = _send_head(server.port, "/api/v1/token", 512 * 1024**2)
        assert status == 413 and elapsed < 5
        assert json.loads(body)["error"]["code"] == "too_large"
        assert headers.get("Connection") == "close"
        # With Expect: 100-continue the client is told not to send it at all.
        status, _, _, _ = _send_head(server.port, "/api/v1/jobs", 2 * 1024**2,
                                     "Expect: 100-continue\r\n")
        assert status == 413
        # An upload route's cap is YUSHAN_MAX_UPLOAD_BYTES: a 2 MiB declaration is read
        # (here: not sent, so the server waits; a short timeout proves it did not refuse).
        import socket

        sock = socket.create_connection(("127.0.0.1", server.port), timeout=1)
        sock.sendall(b"POST /api/v1/datasets HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(100)
        sock.close()
        # A chunked body over the cap is cut off and answered in the same shape.
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"POST /api/v1/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/json\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(40):  # 2.5 MiB, more than the 1 MiB cap
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server closed the connection once it had answered
        _assert_too_large(sock)
    finally:
        server.close()


def _assert_too_large(sock) -> None:
    """The answer read from ``sock`` is the contract's 413 too_large; then closes it."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    assert response.status == 413
    assert json.loads(response.read())["error"]["code"] == "too_large"
    sock.close()


def test_a_body_a_little_over_the_cap_sent_whole_still_gets_its_413(world):
    """A client that sends its whole body before reading (urllib does) reads a 413, not a
    broken pipe: bodies up to DRAIN_BYTES are read and dropped before the answer."""
    import socket

    config, app, _, _ = world
    server = _Server(app, config)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        body = b"x" * (SMALL_BODY_BYTES * 2 + 17)
        sock.sendall(b"POST /api/v1/jobs/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        _assert_too_large(sock)
    finally:
        server.close()

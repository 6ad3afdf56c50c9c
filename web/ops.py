"""What operators point their tools at: liveness, readiness, metrics, request ids.

- ``GET /healthz``: the process is up (no database).
- ``GET /readyz``: ready for work (database, a recent worker heartbeat, live executors,
  the queue moving); 503 with the reasons when not.
- ``GET /metrics``: Prometheus text (:mod:`yushan.metrics`). Served to a loopback peer
  (a Prometheus on the same host), to the bearer of ``YUSHAN_METRICS_TOKEN`` (when that is
  set, loopback alone no longer suffices), or to an admin's API token.
- Every request gets an id (:mod:`yushan.logs`): a sane incoming ``X-Request-ID`` or a new
  one, returned in the ``X-Request-ID`` header and carried by every log line written
  while the request is handled; each request is counted by route template and status.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time

from flask import Blueprint, Flask, Response, g, jsonify, request

from web.auth import bearer_token, client_ip, current_api_user, db
from web.errors import api_error
from yushan import logs, metrics
from yushan.config import Config
from yushan.models import Role

log = logging.getLogger(__name__)
access_log = logging.getLogger("yushan.access")

bp = Blueprint("ops", __name__)
REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED_ROUTE = "<unmatched>"  # 404s: the path itself is never a label


@bp.get("/healthz")
def healthz() -> Response:
    """The process is up and answers (no database: see /readyz)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready for work: database, a recent worker heartbeat, live executors, and the queue
    moving; 503 with the reasons when not."""
    from jobs.health import readiness

    config: Config = request.environ["yushan.config"]
    try:
        verdict = readiness(db(), config)
    except Exception as exc:  # noqa: BLE001 - the class only: the text may name hosts
        log.error("readiness: database unavailable (%s)", type(exc).__name__)
        body = {"status": "unavailable", "reasons": ["the database does not answer"],
                "checks": {"database": "unavailable"}}
        return jsonify(body), 503
    body = {"status": "ok" if verdict.ok else "unavailable", "reasons": verdict.reasons,
            "checks": verdict.checks}
    return jsonify(body), 200 if verdict.ok else 503


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def metrics_allowed(config: Config) -> bool:
    """The metrics token, an admin's API token, or (no metrics token set) a loopback peer.

    Behind ``YUSHAN_TRUSTED_PROXY`` the peer is the client the proxy names, so requests
    through a proxy on this host are not taken for local ones."""
    token = bearer_token()
    if config.metrics_token and token is not None and hmac.compare_digest(
            token.encode(), config.metrics_token.encode()):
        return True
    if token is not None:
        user = current_api_user()
        if user is not None and user.role == Role.ADMIN.value:
            return True
    return not config.metrics_token and _loopback(client_ip())


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text format: every process's counters and histograms, and the queue's
    state read now."""
    config: Config = request.environ["yushan.config"]
    if not metrics_allowed(config):
        return api_error(401, message="Metrics are served to this host, to the metrics "
                         "token or to an admin's API token.",
                         headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    return Response(metrics.exposition(db(), config), mimetype=None,
                    content_type=metrics.CONTENT_TYPE)


def _begin() -> None:
    g.request_started = time.perf_counter()
    g.request_id = logs.accept_request_id(request.headers.get(REQUEST_ID_HEADER))
    g.request_log_context = logs.bind(request_id=g.request_id)
    g.request_log_context.__enter__()


def _finish(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
    seconds = time.perf_counter() - g.get("request_started", time.perf_counter())
    metrics.http_request(request.method, route, response.status_code, seconds)
    access_log.info("%s %s %s %.1f ms", request.method, route, response.status_code,
                    seconds * 1000, extra={"method": request.method, "route": route,
                                           "status": response.status_code,
                                           "duration_ms": round(seconds * 1000, 1)})
    return response


def _end(_exc: BaseException | None = None) -> None:
    context = g.pop("request_log_context", None)
    if context is not None:
        try:
            context.__exit__(None, None, None)
        except ValueError:  # torn down in another context than it began: nothing to undo
            pass


def install(app: Flask) -> None:
    """Request ids and per-request metrics; call before other ``before_request`` hooks
    are registered, so that even a request refused at the edge has its id."""
    app.before_request_funcs.setdefault(None, []).insert(0, _begin)
    app.after_request(_finish)
    app.teardown_request(_end)

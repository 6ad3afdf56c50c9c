"""The OpenAPI document, fuzzed against the real app served by waitress on loopback.

Schemathesis generates requests for every documented operation (bounded examples), as a
provider, a merchant and an anonymous caller, through the same server ``yushan serve``
runs (its bounded request parser included). Any 5xx, any undocumented status, and any
response that does not match its documented schema fails the test. A counter around the
app records how many requests were answered and how many with a 5xx.
"""

from __future__ import annotations

import os
import threading
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from web_support import api_token, openapi_document, populate

from web import create_app
from web.edges import create_server

pytestmark = pytest.mark.slow

ROLES = {"provider": "insight_isv", "merchant": "hanfu_owner", "anonymous": None}
EXAMPLES = int(os.environ.get("YUSHAN_FUZZ_EXAMPLES", "12"))  # per operation and role (~860 requests)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Revoking the caller's own token would turn the rest of the run into 401s.
SKIPPED = {("DELETE", "/api/v1/token")}

schema = schemathesis.openapi.from_dict(openapi_document())
answered: Counter[str] = Counter()


class Served:
    """The app under waitress on a free loopback port, in a thread."""

    def __init__(self, app, config):
        def counted(environ, start_response):
            def start(status, headers, exc_info=None):
                # /readyz answers 503 by design here (no worker runs): not a server error.
                readiness = environ.get("PATH_INFO") == "/readyz"
                answered["5xx" if status.startswith("5") and not readiness else "other"] += 1
                return start_response(status, headers, exc_info)

            return app(environ, start)

        self.server = create_server(counted, config, host="127.0.0.1", port=0, threads=4,
                                    ident="yushan", clear_untrusted_proxy_headers=True)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.close()
        self.server.task_dispatcher.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from conftest import _make_config

    from yushan.cli import initialise

    config = _make_config(tmp_path_factory.mktemp("fuzz-home"))
    initialise(config)
    populate(config)
    app = create_app(config)
    client = app.test_client()
    tokens = {role: api_token(client, user) if user else None for role, user in ROLES.items()}
    server = Served(app, config)
    yield server.url, tokens
    server.close()
    print(f"\nschemathesis: {sum(answered.values())} requests answered, "
          f"{answered['5xx']} with a 5xx")


@pytest.mark.parametrize("role", list(ROLES))
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_answers_as_documented(case, role, live):
    if (case.method.upper(), case.path) in SKIPPED:
        pytest.skip("revokes the caller's own token")
    url, tokens = live
    headers = {"Authorization": f"Bearer {tokens[role]}"} if tokens[role] else {}
    if not tokens[role]:
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    # /readyz's documented 503 (no worker runs beside this server) is its answer, not a fault.
    checks = CHECKS[1:] if case.path == "/readyz" else CHECKS
    case.call_and_validate(base_url=url, headers=headers, checks=checks, timeout=60)

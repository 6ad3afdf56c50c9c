"""Strict edges: what a request may be before any view sees it.

- **Body caps per route, before reading.** Uploads may send ``YUSHAN_MAX_UPLOAD_BYTES``
  (plus their form fields); every other route :data:`SMALL_BODY_BYTES`. The app refuses a
  larger declared ``Content-Length`` with 413 before touching the body, and cuts a chunked
  body off at the cap. Under ``yushan serve`` waitress itself buffers a whole body before
  the app runs, so :class:`BoundedRequestParser` applies the same cap while the headers are
  parsed: a body larger than :data:`DRAIN_BYTES` (or announced with ``Expect:
  100-continue``) is never read, the request reaches the app empty and marked, and the app
  answers 413 in the API's error shape (then the connection is closed); a smaller one is
  read and dropped first, so that a client sending it whole still reads its 413.
- **Strict JSON** (:func:`strict_json_loads`): UTF-8 only, no lone surrogates, nesting at
  most :data:`MAX_JSON_DEPTH` deep (a deeper document is refused before it is parsed:
  Python's parser would hit its recursion limit).
- **Strict URLs**: a path or query string that is not valid UTF-8 once percent-decoded is
  refused with 400 instead of being silently repaired.
- **Bounded integer ids**: ``<int:...>`` in a route matches 0 .. 2**63-1 only (what the
  database holds); anything else is simply not a route (404).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from flask import Flask, request
from flask.json.provider import DefaultJSONProvider
from waitress.parser import HTTPRequestParser
from waitress.utilities import RequestEntityTooLarge as WaitressTooLarge
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.routing import IntegerConverter

from web.errors import EdgeRefusal
from yushan import jsondoc
from yushan.config import Config

SMALL_BODY_BYTES = 1024 * 1024  # /token and every JSON route
# Bodies over a route's cap but at most this big are read (and dropped) before the 413, so
# that clients which send the whole body first read the answer (see bounded_parser).
DRAIN_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 32
MAX_ID = 2**63 - 1  # the largest id a BIGINT column holds
# Routes that take an upload (method, path): their cap is YUSHAN_MAX_UPLOAD_BYTES.
UPLOAD_ROUTES = frozenset({("POST", "/api/v1/datasets"), ("POST", "/datasets/upload")})
# Set by BoundedRequestParser on a request whose body it refused (the value is the cap).
# A client that sends it itself only refuses its own request.
REFUSED_HEADER = "X-Yushan-Body-Refused"


def body_limit(config: Config, method: str, path: str) -> int:
    """The most bytes a request to ``method path`` may carry in its body."""
    from web.uploads import FORM_FIELDS_BYTES

    if (method.upper(), path.rstrip("/") or "/") in UPLOAD_ROUTES:
        return config.max_upload_bytes + FORM_FIELDS_BYTES
    return SMALL_BODY_BYTES


# ---------------------------------------------------------------- JSON


class BadJSON(ValueError):
    """The body is not acceptable JSON; the message says why (no data values)."""


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays and objects in ``text`` nest deeper than ``limit`` (strings skipped)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for found in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        if found.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def strict_json_loads(data: str | bytes | bytearray, **kwargs: Any) -> Any:
    """Parse JSON that is UTF-8, at most MAX_JSON_DEPTH deep and free of lone surrogates."""
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise BadJSON("The body is not valid UTF-8.") from None
    if json_depth_exceeds(data):
        raise BadJSON(f"The JSON nests arrays and objects deeper than {MAX_JSON_DEPTH} levels.")
    try:
        value = json.loads(data, **kwargs)
    except RecursionError:  # belt and braces: the depth check should have caught it
        raise BadJSON(f"The JSON nests deeper than {MAX_JSON_DEPTH} levels.") from None
    except ValueError:
        raise BadJSON("The body is not valid JSON.") from None
    if _has_surrogate(value):
        raise BadJSON("The JSON holds a lone surrogate (\\ud800-\\udfff), which is not text.")
    return value


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON with :func:`strict_json_loads` (``request.get_json`` uses it)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return strict_json_loads(s, **kwargs)

    @staticmethod
    def default(o: Any) -> Any:
        """What the command line's ``--json`` writes (yushan.jsondoc): decimals as numbers,
        times in ISO 8601 (Flask's own would write ``"12.50"`` and an HTTP date); then
        Flask's for the rest (dataclasses, UUIDs)."""
        try:
            return jsondoc.json_default(o)
        except TypeError:
            return DefaultJSONProvider.default(o)


# ---------------------------------------------------------------- URLs and ids


class BoundedInt(IntegerConverter):
    """``<int:...>``: 0 .. 2**63-1; a larger or negative number matches no route (404)."""

    def __init__(self, map, *args: Any, **kwargs: Any) -> None:  # noqa: A002 - werkzeug's name
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


def _is_utf8(raw: str, *, percent_encoded: bool) -> bool:
    """WSGI hands URL parts over as latin-1 text of their bytes."""
    try:
        data = raw.encode("latin-1")
        (unquote_to_bytes(data) if percent_encoded else data).decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return False
    return True


class BodyTooLarge(RequestEntityTooLarge, EdgeRefusal):
    pass


class UrlNotUtf8(BadRequest, EdgeRefusal):
    description = "The URL is not valid UTF-8 once percent-decoded."


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The body is larger than this route's limit of {limit} bytes.")


def check_request_edges() -> None:
    """Before each request: the body cap, and a URL that is valid UTF-8."""
    config = request.environ.get("yushan.config")
    limit = body_limit(config, request.method, request.path) if config else SMALL_BODY_BYTES
    if request.headers.get(REFUSED_HEADER):
        raise _too_large(limit)
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    # A chunked body (no Content-Length) is cut off when it passes the cap.
    request.max_content_length = limit
    environ = request.environ
    # PATH_INFO is already percent-decoded (by waitress; a test client may have repaired
    # it), the raw URI is not: check whichever the server gave.
    encoded = [environ.get(k, "") for k in ("QUERY_STRING", "RAW_URI", "REQUEST_URI")]
    if not (_is_utf8(environ.get("PATH_INFO", ""), percent_encoded=False)
            and all(_is_utf8(part, percent_encoded=True) for part in encoded)):
        raise UrlNotUtf8()


def install(app: Flask, config: Config) -> None:
    """Strict JSON, bounded ids and the request checks; call before blueprints register."""
    app.json = StrictJSONProvider(app)
    app.json.sort_keys = False
    app.url_map.converters["int"] = BoundedInt
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes + SMALL_BODY_BYTES
    inner = app.wsgi_app

    def with_config(environ, start_response):
        environ["yushan.config"] = config
        return inner(environ, start_response)

    app.wsgi_app = with_config
    app.before_request(check_request_edges)


# ---------------------------------------------------------------- waitress


class _Adjusted:
    """waitress's settings with a per-request body cap."""

    def __init__(self, adj: Any, max_body: int):
        self._adj = adj
        self.max_request_body_size = max_body

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adj, name)


def bounded_parser(config: Config) -> type[HTTPRequestParser]:
    """A waitress request parser that applies :func:`body_limit` as soon as the request
    line and headers are in, and hands a refused request to the app empty and marked."""

    class BoundedRequestParser(HTTPRequestParser):
        def parse_header(self, header_plus: bytes) -> None:
            super().parse_header(header_plus)
            limit = body_limit(config, self.command or "GET", self.path or "/")
            # A body a little over the cap (up to DRAIN_BYTES) is read and dropped, then
            # refused by the app: a client that sends its body before reading the answer
            # gets its 413 instead of a broken pipe. A larger one, or one the client waits
            # to send (Expect: 100-continue), is refused from the headers, unread.
            # (A chunked body has no declared size: it is cut off at the cap itself.)
            if not getattr(self, "expect_continue", False) and not getattr(self, "chunked", False):
                limit = max(limit, DRAIN_BYTES)
            # +1: waitress refuses a body of exactly max_request_body_size bytes.
            self.adj = _Adjusted(self.adj, limit + 1)

        def received(self, data: bytes) -> int:
            consumed = super().received(data)
            if isinstance(self.error, WaitressTooLarge):
                # Answer in the app's error shape, without reading the rest of the body;
                # the connection closes after the answer (the rest is never read).
                self.error = None
                self.body_rcv = None
                self.completed = True
                self.expect_continue = False
                self.headers["CONTENT_LENGTH"] = "0"
                self.headers.pop("TRANSFER_ENCODING", None)
                self.headers["CONNECTION"] = "close"
                self.headers[REFUSED_HEADER.upper().replace("-", "_")] = "1"
            return consumed

    return BoundedRequestParser


def create_server(app: Flask, config: Config, **kwargs: Any):
    """A waitress server for ``app`` (``kwargs``: waitress's settings) whose connections
    use the bounded parser."""
    from waitress import create_server as waitress_server
    from waitress.channel import HTTPChannel
    from waitress.server import BaseWSGIServer

    channel = type("BoundedChannel", (HTTPChannel,), {"parser_class": bounded_parser(config)})
    sockets: dict = {}
    server = waitress_server(app, map=sockets, **kwargs)
    for listener in [server, *sockets.values()]:
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = channel
    return server

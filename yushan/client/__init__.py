"""A Python client for Yushan's HTTP API (``/api/v1``): a pure HTTP client (``httpx``),
importing nothing of the server.

::

    from yushan.client import Client

    yc = Client.login("http://127.0.0.1:8000", "insight_isv", "demo-password")
    decision = yc.check("hanfu_house", "aggregate", sql)      # dry run, no data read
    job = yc.submit("hanfu_house", "aggregate", sql, name="by gender")
    job = yc.wait(job.id, on_progress=lambda j: print(j.state, j.progress))
    # ... the merchant approves (Client.login(..., "hanfu_owner", ...).approve(job.id)) ...
    table = yc.result(job.id)                                 # a pyarrow.Table
    frame = yc.to_pandas(job.id)

Every refusal raises a :class:`~yushan.client.errors.ClientError` subclass carrying the
API's error document (``status``, ``code``, ``message``). Lists (``jobs``, ``datasets``,
``audit``) follow the API's cursor through every page. ``submit`` sends an
``Idempotency-Key`` (generated when not given), so a submission retried after a dropped
connection answers with the same job instead of running a second one. See
``docs/client.md``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx

from yushan import __version__
from yushan.client.errors import (
    UPLOAD_STATUS_BY_CODE,
    BadRequest,
    ClientError,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    Invalid,
    JobTimeout,
    NotFound,
    RateLimited,
    ServerError,
    TooLarge,
    TransportError,
    Unauthorized,
    UploadTimeout,
    error_for,
)
from yushan.client.models import Budget, Dataset, Decision, Job, Me, Template, Violation

if TYPE_CHECKING:
    import pandas
    import pyarrow

__all__ = [
    "BadRequest", "Budget", "Client", "ClientError", "Conflict", "Dataset", "Decision",
    "Forbidden", "IdempotencyKeyReused", "Invalid", "Job", "JobTimeout", "Me", "NotFound",
    "RateLimited", "ServerError", "Template", "TooLarge", "TransportError", "Unauthorized",
    "UploadTimeout", "Violation",
]

API = "/api/v1"
CHUNK = 1024 * 1024


class Client:
    """One caller of one Yushan server: ``base_url`` (e.g. ``http://127.0.0.1:8000``) and
    a bearer ``token`` (see :meth:`login`).

    ``timeout`` is per request (seconds). ``retries``: how many times a request that is
    safe to repeat (a GET, or a POST carrying an ``Idempotency-Key``) is sent again when
    no answer came (connection refused or dropped, timeout), waiting 0.5 s, 1 s, 2 s...
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 60.0,
                 retries: int = 2, verify: bool | str = True):
        self.base_url = base_url.rstrip("/")
        self.retries = max(0, int(retries))
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, verify=verify,
                                  headers={"User-Agent": f"yushan-client/{__version__}",
                                           "Accept": "application/json"})
        self.token = token

    @property
    def token(self) -> str | None:
        return self._token

    @token.setter
    def token(self, value: str | None) -> None:
        self._token = value
        if value:
            self._http.headers["Authorization"] = f"Bearer {value}"
        else:
            self._http.headers.pop("Authorization", None)

    # ------------------------------------------------------------ session

    @classmethod
    def login(cls, base_url: str, username: str, password: str, **options: Any) -> Client:
        """A client holding a fresh token for ``username`` (``POST /api/v1/token``)."""
        client = cls(base_url, **options)
        try:
            doc = client._json("POST", "/token", json={"username": username, "password": password})
        except BaseException:
            client.close()
            raise
        client.token = doc["token"]
        return client

    def logout(self) -> None:
        """Revoke this client's token (``DELETE /api/v1/token``)."""
        self._request("DELETE", "/token")
        self.token = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def me(self) -> Me:
        """Who the token belongs to, and the merchants it may run jobs for."""
        return Me.from_json(self._json("GET", "/me"))

    # ------------------------------------------------------------ datasets

    def datasets(self, *, page_size: int = 1000) -> list[Dataset]:
        """Every dataset the caller may use, by name (all pages)."""
        return [Dataset.from_json(d) for d in self._pages("/datasets", "datasets", {"limit": page_size})]

    def upload(self, name: str, file: str | Path | BinaryIO, schema: dict[str, Any], *,
               encoding: str | None = None, idempotency_key: str | None = None,
               wait: bool = False, on_progress: Callable[[dict[str, Any]], None] | None = None,
               timeout: float = 3600.0, poll_interval: float = 1.0) -> dict[str, Any]:
        """Upload a merchant dataset (CSV or Parquet) as ``<merchant>.<name>``; validated
        before anything is kept (:class:`Invalid` with ``report`` otherwise). Sent with an
        ``Idempotency-Key`` (a new UUID when not given): a retry answers the same.

        ``wait=True`` sends it with ``Prefer: respond-async``: the server answers as soon
        as it has the file (no request held while a large file is validated), and this
        polls the upload's status (:meth:`upload_status`), calling ``on_progress(status)``
        at every change of phase or progress, until it is decided; then it returns or
        raises exactly what the synchronous upload would. :class:`UploadTimeout` after
        ``timeout`` s. A server that serves it synchronously anyway is answered as usual."""
        import json

        data = {"name": name, "schema": json.dumps(schema), **({"encoding": encoding} if encoding else {})}
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4()),
                   **({"Prefer": "respond-async"} if wait else {})}
        if isinstance(file, str | Path):
            with open(file, "rb") as handle:
                response = self._request("POST", "/datasets", data=data, headers=headers,
                                         files={"file": (Path(file).name, handle)})
        else:
            response = self._request("POST", "/datasets", data=data, headers=headers,
                                     files={"file": ("upload.csv", file)})
        doc = response.json() if response.content else {}
        if response.status_code != 202:
            return doc
        return self._await_upload(doc["id"], timeout, poll_interval, on_progress)

    def upload_status(self, upload_id: str) -> dict[str, Any]:
        """An asynchronous upload's status: ``state`` (validating, accepted, rejected,
        failed), ``phase``, ``progress`` (0..1), ``dataset`` once accepted, ``error`` once
        rejected or failed (``GET /api/v1/uploads/<id>``)."""
        return self._json("GET", f"/uploads/{upload_id}")

    def _await_upload(self, upload_id: str, timeout: float, poll_interval: float,
                      on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen: tuple[str, str, float] | None = None
        while True:
            status = self.upload_status(upload_id)
            now = (status["state"], status["phase"], status["progress"])
            if on_progress is not None and now != seen:
                on_progress(status)
            seen = now
            if status["state"] == "accepted":
                return status["dataset"]
            if status["state"] != "validating":
                error = status.get("error") or {}
                code = str(error.get("code") or "error")
                raise error_for(UPLOAD_STATUS_BY_CODE.get(code, 500), {"error": error})
            if time.monotonic() >= deadline:
                raise UploadTimeout(f"upload {upload_id} is still validating after {timeout:g} s",
                                    status)
            time.sleep(max(0.0, min(poll_interval, deadline - time.monotonic())))

    def withdraw(self, name: str) -> dict[str, Any]:
        """Withdraw one's own dataset: its data becomes unrecoverable."""
        return self._json("DELETE", f"/datasets/{name}")

    # ------------------------------------------------------------ jobs

    def check(self, merchant: str, kind: str, sql: str) -> Decision:
        """The policy decision on ``sql`` for ``merchant`` (a dry run: no data read, no
        budget spent)."""
        return Decision.from_json(self._json("POST", "/jobs/check",
                                             json={"merchant": merchant, "kind": kind, "sql": sql}))

    def submit(self, merchant: str, kind: str, sql: str, name: str | None = None, *,
               idempotency_key: str | None = None) -> Job:
        """Queue a job (201, ``queued``); the sandbox's check decides, a denied job becomes
        ``blocked``. ``idempotency_key`` (a new UUID when not given) makes a retry of this
        call answer with the same job."""
        body: dict[str, Any] = {"merchant": merchant, "kind": kind, "sql": sql}
        if name is not None:
            body["name"] = name
        key = idempotency_key or str(uuid.uuid4())
        return Job.from_json(self._json("POST", "/jobs", json=body, headers={"Idempotency-Key": key}))

    def job(self, job_id: int) -> Job:
        """The job (:class:`NotFound` when missing or another tenant's)."""
        return Job.from_json(self._json("GET", f"/jobs/{int(job_id)}"))

    def jobs(self, state: str | None = None, merchant: str | None = None, *,
             page_size: int = 100) -> Iterator[Job]:
        """Every job the caller may see, newest first, following the cursor page by page
        (``state``, ``merchant``: filters)."""
        params: dict[str, Any] = {"limit": page_size}
        if state:
            params["state"] = state
        if merchant:
            params["merchant"] = merchant
        for doc in self._pages("/jobs", "jobs", params):
            yield Job.from_json(doc)

    def wait(self, job_id: int, timeout: float = 600.0, *, poll_interval: float = 1.0,
             on_progress: Callable[[Job], None] | None = None) -> Job:
        """Poll until the worker is done with the job (neither ``queued`` nor ``running``)
        and return it; ``on_progress(job)`` is called first with the job as found and then
        at every change of state or progress. :class:`JobTimeout` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        seen: tuple[str, float] | None = None
        while True:
            job = self.job(job_id)
            if on_progress is not None and (job.state, job.progress) != seen:
                on_progress(job)
            seen = (job.state, job.progress)
            if not job.active:
                return job
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} is still {job.state} after {timeout:g} s", job)
            time.sleep(max(0.0, min(poll_interval, deadline - time.monotonic())))

    def cancel(self, job_id: int) -> Job:
        """Cancel a queued, running or unapproved job (its submitter or merchant)."""
        return Job.from_json(self._json("POST", f"/jobs/{int(job_id)}/cancel"))

    def approve(self, job_id: int) -> Job:
        """Release the output (the job's merchant)."""
        return Job.from_json(self._json("POST", f"/jobs/{int(job_id)}/approve"))

    def reject(self, job_id: int, reason: str | None = None) -> Job:
        """Reject the output (the job's merchant); it is shredded. ``reason`` is shown to
        the submitter."""
        body = {"reason": reason} if reason else None
        return Job.from_json(self._json("POST", f"/jobs/{int(job_id)}/reject", json=body))

    # ------------------------------------------------------------ results

    def result_json(self, job_id: int) -> dict[str, Any]:
        """The approved result as the API's JSON: ``{"columns": [...], "rows": [{...}]}``."""
        return self._json("GET", f"/jobs/{int(job_id)}/result", params={"format": "json"})

    def result(self, job_id: int) -> pyarrow.Table:
        """The approved result as an Arrow table, with the server's column types (decimals,
        dates, timestamps as they are)."""
        import io

        import pyarrow.parquet as pq

        response = self._request("GET", f"/jobs/{int(job_id)}/result", params={"format": "parquet"})
        return pq.read_table(io.BytesIO(response.content))

    def to_pandas(self, job_id: int) -> pandas.DataFrame:
        """The approved result as a pandas DataFrame (needs pandas)."""
        return self.result(job_id).to_pandas()

    def download_parquet(self, job_id: int, path: str | Path) -> Path:
        """Write the approved result to ``path`` as Parquet, streamed (never whole in memory)."""
        return self.download(job_id, path, "parquet")

    def download(self, job_id: int, path: str | Path, fmt: str = "csv", *, excel: bool = False) -> Path:
        """Write the approved result to ``path`` in ``fmt`` (csv, json, parquet), streamed;
        ``excel``: CSV with a BOM and CRLF line ends. The file appears whole or not at all."""
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        params = {"format": fmt, **({"excel": "1"} if excel else {})}
        try:
            with self._stream("GET", f"/jobs/{int(job_id)}/result", params=params) as response:
                with open(partial, "wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        return target

    # ------------------------------------------------------------ templates, budgets, audit

    def templates(self) -> list[Template]:
        """The trusted templates and their parameters."""
        return [Template.from_json(t) for t in self._json("GET", "/templates")["templates"]]

    def submit_template(self, template: str, merchant: str, params: dict[str, Any] | None = None,
                        name: str | None = None, *, idempotency_key: str | None = None) -> Job:
        """Run a template for ``merchant`` with ``params``; the job as :meth:`job` shows it."""
        body: dict[str, Any] = {"merchant": merchant, "params": params or {}}
        if name is not None:
            body["name"] = name
        key = idempotency_key or str(uuid.uuid4())
        doc = self._json("POST", f"/templates/{template}/jobs", json=body,
                         headers={"Idempotency-Key": key})
        return self.job(doc["id"])

    def budget(self, merchant: str) -> Budget:
        """``merchant``'s differential privacy budget this period."""
        return Budget.from_json(self._json("GET", f"/budgets/{merchant}"))

    def audit(self, *, actor: str | None = None, action: str | None = None,
              tenant: str | None = None, job: int | None = None, since: str | None = None,
              until: str | None = None, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Audit entries, newest first, every page (auditors)."""
        params = {k: v for k, v in {"actor": actor, "action": action, "tenant": tenant, "job": job,
                                    "since": since, "until": until}.items() if v is not None}
        yield from self._pages("/audit", "entries", {**params, "limit": page_size})

    def audit_verify(self) -> dict[str, Any]:
        """``{"ok", "entries", "first_bad", "reason"}`` (auditors)."""
        return self._json("GET", "/audit/verify")

    # ------------------------------------------------------------ plumbing

    def _pages(self, path: str, key: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            doc = self._json("GET", path, params={**params, **({"cursor": cursor} if cursor else {})})
            yield from doc[key]
            cursor = doc.get("next_cursor")
            if not cursor:
                return

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        return response.json() if response.content else {}

    def _retriable(self, method: str, headers: dict[str, str] | None) -> bool:
        return method == "GET" or bool(headers and "Idempotency-Key" in headers)

    def _request(self, method: str, path: str, *, headers: dict[str, str] | None = None,
                 **kwargs: Any) -> httpx.Response:
        attempts = 1 + (self.retries if self._retriable(method, headers) else 0)
        # An upload's file is sent again from where it started, or not at all.
        rewind = _file_positions(kwargs.get("files"))
        if rewind is None:
            attempts = 1
        for attempt in range(attempts):
            if attempt:
                for handle, position in rewind or ():
                    handle.seek(position)
            try:
                response = self._http.request(method, API + path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                if attempt + 1 >= attempts:
                    raise TransportError(f"{method} {path}: no answer ({type(exc).__name__})") from exc
                time.sleep(0.5 * 2**attempt)
                continue
            _raise_for(response)
            return response
        raise AssertionError("unreachable")

    def _stream(self, method: str, path: str, **kwargs: Any):
        from contextlib import contextmanager

        @contextmanager
        def opened():
            try:
                with self._http.stream(method, API + path, **kwargs) as response:
                    if response.status_code >= 400:
                        response.read()
                        _raise_for(response)
                    yield response
            except httpx.TransportError as exc:
                raise TransportError(f"{method} {path}: no answer ({type(exc).__name__})") from exc

        return opened()


def _file_positions(files: dict[str, Any] | None) -> list[tuple[Any, int]] | None:
    """Where each file of a multipart body starts (None: one cannot be sent again)."""
    positions = []
    for value in (files or {}).values():
        handle = value[1] if isinstance(value, tuple) else value
        if isinstance(handle, bytes | str):
            continue
        if not (hasattr(handle, "seekable") and handle.seekable()):
            return None
        positions.append((handle, handle.tell()))
    return positions


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        document = response.json()
    except ValueError:
        document = None
    raise error_for(response.status_code, document, {k.lower(): v for k, v in response.headers.items()})

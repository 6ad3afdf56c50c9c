"""Downloads are streamed (issue #19): a stored output is sent a decrypted chunk (Parquet)
or a record batch (JSON, CSV) at a time, never whole in memory, and the bytes are exactly
those of the renderer that built the whole file in memory before (kept below as the
reference). Through the real app and database (SQLite, and PostgreSQL when configured);
jobs are moved through their states as the worker does, outputs are real encrypted ones.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import tracemalloc
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from web_support import api_token, bearer, populate

from jobs import lifecycle
from jobs.queue import worker_actor
from jobs.results import BATCH_ROWS, csv_cell, plain_value, stream_result
from jobs.service import actor_for
from sandbox.crypto import DecryptedFile, DecryptionError, KeyStore, encrypt_stream, new_data_key
from sandbox.output import open_output, store_output
from web import create_app
from yushan.accounts import get_tenant
from yushan.db import session_scope
from yushan.models import Job, JobOutput, JobState, User

LARGE_ROWS = 200_000


# ---------------------------------------------------------------- the renderer before streaming


def old_render(table: pa.Table, fmt: str, *, excel: bool = False) -> bytes:
    """jobs.results.render_result as it was before downloads were streamed (verbatim)."""
    if fmt == "json":
        columns = list(table.column_names)
        rows = [{k: plain_value(v) for k, v in row.items()} for row in table.to_pylist()]
        return json.dumps({"columns": columns, "rows": rows}, ensure_ascii=False).encode("utf-8")
    ending = "\r\n" if excel else "\n"
    out = io.StringIO()
    out.write("\ufeff" if excel else "")
    line = io.StringIO()
    writer = csv.writer(line, lineterminator="\r\n")
    rows: list[Any] = [table.column_names] + [list(row.values()) for row in table.to_pylist()]
    for row in rows:
        writer.writerow([csv_cell(value) for value in row])
        out.write(line.getvalue()[:-2] + ending)
        line.seek(0)
        line.truncate()
    return out.getvalue().encode("utf-8")


# ---------------------------------------------------------------- a world with released outputs


TRICKY = pa.table({
    "note": ['=HYPERLINK("http://x.example/?"&A3,"open")', "@SUM(1+1)", "+1", "-x", "\tx",
             "\rx", "a\r\nb", 'say "hi"', "城市", None],
    "n": pa.array([-5, 3, 0, None, 2, 3, 4, 5, 6, 7], pa.int64()),
    "spend": pa.array([Decimal("12.50"), None] + [Decimal(i) / 4 for i in range(8)], pa.decimal128(12, 2)),
    "share": [-0.5, 1.25, 0.0, None, 1e-7, 3.0, 2.5, 1e20, float("nan"), 0.1],
    "day": pa.array([date(2026, 1, i + 1) for i in range(10)], pa.date32()),
    "at": pa.array([datetime(2026, 1, 2, 3, 4, 5, i, tzinfo=UTC) for i in range(10)],
                   pa.timestamp("us", tz="UTC")),
    "ok": [True, False, None, True, True, False, False, True, True, False],
})


def large_table(rows: int = LARGE_ROWS) -> pa.Table:
    notes = pa.array([("=cmd" if i % 97 == 0 else f"{i % 300:03d}-会员分层-高价值-近三十天复购两次以上")
                      for i in range(rows)])
    return pa.table({"segment": notes, "buyers": pa.array(range(rows), pa.int64())})


def write_like_the_sandbox(table: pa.Table, path) -> None:
    """One row group per Arrow batch of Spark's (10,000 rows), as sandbox.collect writes."""
    with pq.ParquetWriter(str(path), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=10_000):
            writer.write_table(pa.Table.from_batches([batch]))


@pytest.fixture
def world(any_db_config):
    populate(any_db_config)
    client = create_app(any_db_config).test_client()
    return any_db_config, client, api_token(client, "hanfu_owner")


def approved_job(config, table: pa.Table) -> int:
    """A job of hanfu_house's whose output (``table``) its merchant has approved."""
    from sqlalchemy import select

    with session_scope(config) as session:
        owner = session.scalar(select(User).where(User.username == "hanfu_owner"))
        job = lifecycle.create(
            session, merchant_id=get_tenant(session, "hanfu_house").id, submitter_id=owner.id,
            kind="aggregate", sql="SELECT 1 AS x", name="t", actor=actor_for(owner, "pytest"),
            decision={"decision": "allow", "violations": [], "release": "threshold",
                      "datasets_read": ["platform.consumers"]})
        job_id = job.id
    plain = config.workspaces_dir / f"plain-{job_id}.parquet"
    plain.parent.mkdir(parents=True, exist_ok=True)
    write_like_the_sandbox(table, plain)
    stored = store_output(config, KeyStore(config.master_key_path), job_id, plain)
    plain.unlink()
    with session_scope(config) as session:
        job = session.get(Job, job_id)
        lifecycle.transition(session, job, JobState.RUNNING, actor=worker_actor(),
                             values={"lease_owner": "w", "attempts": 1})
        session.add(JobOutput(job_id=job_id, storage_path=stored.storage_path,
                              wrapped_key=stored.wrapped_key, content_hash=stored.content_hash,
                              columns=[], row_count=table.num_rows, suppressed_rows=0,
                              byte_size=stored.byte_size))
        lifecycle.transition(session, job, JobState.AWAITING_APPROVAL, actor=worker_actor(),
                             values={"released_rows": table.num_rows, "suppressed_rows": 0})
        owner = session.scalar(select(User).where(User.username == "hanfu_owner"))
        lifecycle.transition(session, job, JobState.APPROVED, actor=actor_for(owner, "pytest"))
    return job_id


# ---------------------------------------------------------------- same bytes


@pytest.mark.parametrize("fmt,excel", [("json", False), ("csv", False), ("csv", True)])
def test_streamed_downloads_are_byte_identical_to_the_old_renderer(world, fmt, excel):
    config, client, token = world
    # Several row groups and batches: the pieces must join exactly where batches meet.
    table = pa.concat_tables([TRICKY] * (BATCH_ROWS // 5 + 3))
    job_id = approved_job(config, table)
    url = f"/api/v1/jobs/{job_id}/result?format={fmt}" + ("&excel=1" if excel else "")
    response = client.get(url, headers=bearer(token))
    assert response.status_code == 200
    assert response.is_streamed
    assert response.get_data() == old_render(table, fmt, excel=excel)
    # The page's download and the in-memory renderer are the same file.
    from jobs.results import render_result

    assert render_result(table, fmt, excel=excel) == response.get_data()


def test_an_empty_result_streams_its_header_only(world):
    config, client, token = world
    empty = TRICKY.slice(0, 0)
    job_id = approved_job(config, empty)
    for fmt in ("json", "csv"):
        body = client.get(f"/api/v1/jobs/{job_id}/result?format={fmt}", headers=bearer(token)).get_data()
        assert body == old_render(empty, fmt)


def test_parquet_downloads_are_the_stored_file_decrypted_as_it_streams(world):
    config, client, token = world
    table = pa.concat_tables([TRICKY] * 3)
    job_id = approved_job(config, table)
    response = client.get(f"/api/v1/jobs/{job_id}/result?format=parquet", headers=bearer(token))
    assert response.status_code == 200 and response.is_streamed
    body = response.get_data()
    assert int(response.headers["Content-Length"]) == len(body)
    back = pq.read_table(pa.BufferReader(body))
    assert back.schema.equals(table.schema)  # (NaN != NaN: compare the rendered rows)
    assert old_render(back, "json") == old_render(table, "json")
    with session_scope(config) as session:
        output = session.get(Job, job_id).output
        opened = open_output(config, KeyStore(config.master_key_path), job_id, output.storage_path,
                             output.wrapped_key, output.content_hash)
    assert hashlib.sha256(body).hexdigest() == output.content_hash  # the stored file itself
    assert b"".join(stream_result(opened, "parquet")) == body


# ---------------------------------------------------------------- bounded memory


def test_a_large_result_downloads_with_bounded_memory_and_the_old_bytes(world):
    config, client, token = world
    table = large_table()
    job_id = approved_job(config, table)
    expected = {fmt: hashlib.sha256(old_render(table, fmt)).hexdigest() for fmt in ("csv", "json")}
    sizes = {fmt: len(old_render(table, fmt)) for fmt in ("csv", "json")}
    del table
    for fmt in ("csv", "json"):
        response = client.get(f"/api/v1/jobs/{job_id}/result?format={fmt}", headers=bearer(token),
                              buffered=False)
        assert response.status_code == 200 and response.is_streamed
        digest, size = hashlib.sha256(), 0
        arrow_base, arrow_peak = pa.total_allocated_bytes(), 0
        tracemalloc.start()
        try:
            for piece in response.response:
                digest.update(piece)
                size += len(piece)
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_base)
            _, python_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            response.close()
        assert digest.hexdigest() == expected[fmt] and size == sizes[fmt]
        # The old renderer held every row as Python objects and the whole file; now one
        # decrypted chunk (1 MiB) and one batch of rows are alive at a time.
        assert python_peak < min(size / 3, 8 * 2**20), (fmt, python_peak, size)
        assert arrow_peak < size / 3, (fmt, arrow_peak, size)


# ---------------------------------------------------------------- the decrypting view


def test_the_decrypting_view_seeks_and_reads_like_the_plaintext(tmp_path):
    key = new_data_key()
    plain = os.urandom(5000)
    path = tmp_path / "f.enc"
    with open(path, "wb") as dst:
        encrypt_stream(key, io.BytesIO(plain), dst, chunk_size=256)
    rng = random.Random(7)  # noqa: S311 - reproducible offsets, not secrets
    with DecryptedFile(key, path) as view:
        assert view.seek(0, io.SEEK_END) == len(plain)
        for _ in range(200):
            start = rng.randrange(0, len(plain) + 10)
            length = rng.randrange(0, 900)
            view.seek(start)
            assert view.read(length) == plain[start:start + length]
        view.seek(-10, io.SEEK_END)
        assert view.read() == plain[-10:]


def test_the_decrypting_view_refuses_truncated_and_altered_files(tmp_path):
    key = new_data_key()
    path = tmp_path / "f.enc"
    with open(path, "wb") as dst:
        encrypt_stream(key, io.BytesIO(os.urandom(1000)), dst, chunk_size=256)
    data = path.read_bytes()
    sealed = 4 + 256 + 16
    truncated = tmp_path / "truncated.enc"
    truncated.write_bytes(data[:12 + 2 * sealed])  # whole chunks dropped from the end
    with DecryptedFile(key, truncated) as view, pytest.raises(DecryptionError):
        view.seek(2 * 256 - 1)
        view.read(1)
    cut = tmp_path / "cut.enc"
    cut.write_bytes(data[:-5])
    with pytest.raises(DecryptionError):
        DecryptedFile(key, cut)
    altered = tmp_path / "altered.enc"
    altered.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with DecryptedFile(key, altered) as view, pytest.raises(DecryptionError):
        view.read(50)
    with DecryptedFile(new_data_key(), path) as view, pytest.raises(DecryptionError):
        view.read(1)


def test_an_output_that_is_not_the_jobs_is_refused_before_anything_is_sent(world):
    config, client, token = world
    job_id = approved_job(config, TRICKY)
    with session_scope(config) as session:
        session.get(Job, job_id).output.content_hash = "0" * 64
    response = client.get(f"/api/v1/jobs/{job_id}/result?format=csv", headers=bearer(token))
    # Checked in one pass before the answer starts: a server error, no row, no download.
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    import audit

    with session_scope(config) as session:
        assert audit.query(session, job=job_id, action="job.download") == []

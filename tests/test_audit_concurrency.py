"""Several processes appending at once (web app, workers, CLI) keep one valid chain."""

from __future__ import annotations

import multiprocessing

import pytest
from audit_support import fresh_config, writer_process
from sqlalchemy import func, select

import audit
from audit.keys import read_head
from yushan.db import session_scope
from yushan.models import AuditEntry

WRITERS = 4
PER_WRITER = 30
ENTRIES_PER_WRITER = PER_WRITER + len(range(0, PER_WRITER, 3))


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request, make_config):
    return fresh_config(request, make_config, request.param)


@pytest.mark.slow
def test_concurrent_writer_processes_keep_the_chain_valid(config):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WRITERS)  # all append at once, however slowly each one started
    procs = [
        ctx.Process(target=writer_process,
                    args=(str(config.home), config.database_url, worker, PER_WRITER, start))
        for worker in range(WRITERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
    assert [proc.exitcode for proc in procs] == [0] * WRITERS

    total = WRITERS * ENTRIES_PER_WRITER
    result = audit.verify(config)
    assert result.ok, result.reason
    assert result.entries == total
    # Every process's head write happened after its commits; the newest one won.
    assert read_head(config).seq == total
    with session_scope(config) as session:
        per_actor = dict(session.execute(
            select(AuditEntry.actor, func.count()).group_by(AuditEntry.actor)).all())
        seqs = session.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq)).all()
    assert per_actor == {f"writer{w}": ENTRIES_PER_WRITER for w in range(WRITERS)}
    assert seqs == list(range(1, total + 1))
    # The writers really interleaved (otherwise this test proves little).
    with session_scope(config) as session:
        actors = session.scalars(select(AuditEntry.actor).order_by(AuditEntry.seq)).all()
    switches = sum(1 for a, b in zip(actors, actors[1:], strict=False) if a != b)
    assert switches >= WRITERS

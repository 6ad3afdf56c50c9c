"""Segment summaries: each label of a segment job's output with its number of members.

A segment job's output is ``(segment, member)``. Its summary is computed once from the
(encrypted) output and kept in ``JobOutput.summary``. The platform's optional review of
segment outputs is part of the output's quarantine (:mod:`jobs.quarantine`).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.orm import Session

from sandbox.crypto import KeyStore
from sandbox.output import read_output
from yushan import access
from yushan.config import Config
from yushan.models import Job, JobKind, User

SUMMARY_KEY = "segments"


# --- the summary -----------------------------------------------------------------------------


def summarise(table: pa.Table) -> list[dict[str, Any]]:
    """``[{"segment", "members"}]`` by label, largest first, from a (segment, member) table."""
    if table.num_rows == 0:
        return []
    grouped = table.group_by("segment").aggregate([("member", "count_distinct")])
    rows = [{"segment": s, "members": int(n)} for s, n in zip(
        grouped.column("segment").to_pylist(),
        pc.cast(grouped.column("member_count_distinct"), pa.int64()).to_pylist(), strict=True)]
    return sorted(rows, key=lambda r: (-r["members"], str(r["segment"])))


def segment_summary(session: Session, config: Config, job: Job) -> list[dict[str, Any]] | None:
    """The job's segments with their sizes; None when it is not a segment job with output.

    Computed from the output once (it is decrypted in memory only) and kept in
    ``JobOutput.summary`` so that later views need no decryption. Counts only, never members.
    """
    output = job.output
    if job.kind != JobKind.SEGMENT.value or output is None:
        return None
    cached = (output.summary or {}).get(SUMMARY_KEY)
    if cached is not None:
        return cached
    if output.wrapped_key is None:
        return None
    table = read_output(config, KeyStore(config.master_key_path), job.id, output.storage_path,
                        output.wrapped_key, output.content_hash)
    segments = summarise(table)
    # A new dict: the JSON column notices replacement, not mutation.
    output.summary = {**(output.summary or {}), SUMMARY_KEY: segments}
    session.flush()
    return segments


def may_see_summary(session: Session, user: User, job: Job) -> bool:
    """Who sees segment sizes (:func:`yushan.access.see_segment_summary`)."""
    return access.see_segment_summary(session, user, job).allowed

"""Reading the trail: filtered queries and exports (CSV, JSON lines, signed bundle)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from audit.chain import BUNDLE_KIND, canonical_json, key_id, public_key_pem, sign_bytes
from audit.keys import init_keys, load_keyring, load_signing_key, read_head
from yushan.config import Config
from yushan.models import AuditCheckpoint, AuditEntry

# The fields of an entry as reviewers see them (and as exports list them).
FIELDS = ("id", "seq", "ts", "actor", "role", "tenant", "origin", "action", "objects", "details")
CHAIN_FIELDS = ("prev_hash", "entry_hash")


@dataclass(frozen=True)
class Filters:
    """What to select; every filter is optional and they combine with AND."""

    actor: str | None = None
    action: str | None = None  # exact, or a category with ``.*`` ("job.*")
    tenant: str | None = None
    dataset: str | None = None  # full name, e.g. "hanfu_house.members"
    job: int | None = None
    since: datetime | str | None = None
    until: datetime | str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: _ts_text(v) if k in ("since", "until") else v
                for k, v in self.__dict__.items() if v not in (None, "")}


def _ts_text(value: datetime | str | None) -> str | None:
    """Normalise a bound to the stored text form, so that text comparison orders by time."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("time bounds must be ISO-8601, e.g. 2025-01-31T12:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _where(stmt: Select, filters: Filters) -> Select:
    entry = AuditEntry
    if filters.actor:
        stmt = stmt.where(entry.actor == filters.actor)
    if filters.action:
        if filters.action.endswith(".*"):
            stmt = stmt.where(entry.action.startswith(filters.action[:-1], autoescape=True))
        else:
            stmt = stmt.where(entry.action == filters.action)
    if filters.tenant:
        stmt = stmt.where(entry.tenant == filters.tenant)
    if filters.dataset:
        # Objects and details are canonical JSON: a quoted name matches the name exactly,
        # wherever it appears (the dataset acted on, or a dataset a job read).
        quoted = json.dumps(filters.dataset.lower(), ensure_ascii=False)
        stmt = stmt.where(or_(entry.objects.contains(quoted, autoescape=True),
                              entry.details.contains(quoted, autoescape=True)))
    if filters.job is not None:
        job = int(filters.job)
        stmt = stmt.where(or_(entry.objects.contains(f'"job":{job},', autoescape=True),
                              entry.objects.endswith(f'"job":{job}}}', autoescape=True)))
    since, until = _ts_text(filters.since), _ts_text(filters.until)
    if since:
        stmt = stmt.where(entry.ts >= since)
    if until:
        stmt = stmt.where(entry.ts <= until)
    return stmt


def _as_dict(entry: AuditEntry, chain: bool = False) -> dict[str, Any]:
    doc = {name: getattr(entry, name) for name in FIELDS}
    doc["objects"] = json.loads(entry.objects)
    doc["details"] = json.loads(entry.details)
    if chain:
        doc["prev_hash"] = entry.prev_hash
        doc["entry_hash"] = entry.entry_hash
    return doc


def query(
    session: Session,
    *,
    actor: str | None = None,
    action: str | None = None,
    tenant: str | None = None,
    dataset: str | None = None,
    job: int | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    limit: int = 100,
    offset: int = 0,
    before_seq: int | None = None,
) -> list[dict[str, Any]]:
    """Entries matching the filters, newest first, as plain dicts; with ``before_seq``
    only those older than that entry (the API's cursor pagination)."""
    filters = Filters(actor, action, tenant, dataset, job, since, until)
    # One over the API's largest page (10,000): the API asks one more to see a next page.
    limit = max(0, min(int(limit), 10_001))
    stmt = _where(select(AuditEntry), filters).order_by(AuditEntry.seq.desc())
    if before_seq is not None:
        stmt = stmt.where(AuditEntry.seq < before_seq)
    stmt = stmt.limit(limit).offset(max(0, int(offset)))
    return [_as_dict(e) for e in session.scalars(stmt)]


def iter_entries(session: Session, filters: Filters, chain: bool = False
                 ) -> Iterator[dict[str, Any]]:
    """Every matching entry, oldest first, streamed (exports)."""
    stmt = _where(select(AuditEntry), filters).order_by(AuditEntry.seq)
    for entry in session.scalars(stmt.execution_options(yield_per=5000)):
        yield _as_dict(entry, chain)


def csv_lines(entries: Iterable[dict[str, Any]]) -> Iterator[str]:
    """CSV text, one string per row (header first); objects and details as JSON."""
    buf = io.StringIO()
    writer = csv.writer(buf)

    def take() -> str:
        text = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return text

    writer.writerow(FIELDS)
    yield take()
    for doc in entries:
        writer.writerow([
            canonical_json(doc[name]) if name in ("objects", "details") else doc[name]
            for name in FIELDS
        ])
        yield take()


def jsonl_lines(entries: Iterable[dict[str, Any]]) -> Iterator[str]:
    for doc in entries:
        yield canonical_json(doc) + "\n"


def _open_text(output: str | Path | IO[str]):
    if isinstance(output, (str, Path)):
        return open(output, "w", encoding="utf-8", newline=""), True
    return output, False


def _write_lines(lines: Iterable[str], output: str | Path | IO[str]) -> int:
    fh, owned = _open_text(output)
    count = 0
    try:
        for line in lines:
            fh.write(line)
            count += 1
    finally:
        if owned:
            fh.close()
    return count


def export_csv(session: Session, output: str | Path | IO[str], **filters: Any) -> int:
    """Write matching entries (oldest first) as CSV; returns how many."""
    return max(0, _write_lines(csv_lines(iter_entries(session, Filters(**filters))), output) - 1)


def export_jsonl(session: Session, output: str | Path | IO[str], **filters: Any) -> int:
    """Write matching entries (oldest first) as JSON lines, with their chain hashes."""
    return _write_lines(jsonl_lines(iter_entries(session, Filters(**filters), chain=True)),
                        output)


BUNDLE_README = """Yushan audit export bundle

entries.jsonl    the exported entries, oldest first, with their chain hashes
                 (prev_hash, entry_hash) exactly as stored
checkpoints.json signed checkpoints (sequence number, chain hash) within the export
head.json        the installation's signed chain head at export time
manifest.json    what was exported, SHA-256 of every file above, the public key
manifest.sig     Ed25519 signature of manifest.json (base64)
public_key.pem   the installation's audit public key

Verify offline (needs Python 3.11+ and the `cryptography` package):

    python -m audit.offline_verify {name} --expect-key {key_id}

Compare the key id with the one the platform operator publishes
(`yushan audit verify` prints it).
"""


def export_bundle(
    session: Session, config: Config, output: str | Path, **filters: Any
) -> dict[str, Any]:
    """Write a signed zip bundle of matching entries; returns its manifest."""
    filt = Filters(**filters)
    init_keys(config)
    private = load_signing_key(config)
    public = private.public_key()
    output = Path(output)
    # Entries are streamed through a temporary file: an export may hold millions.
    entries_digest = hashlib.sha256()
    count, first_seq, last_seq = 0, None, None
    with tempfile.TemporaryFile() as entries_file:
        for doc in iter_entries(session, filt, chain=True):
            line = (canonical_json(doc) + "\n").encode("utf-8")
            entries_file.write(line)
            entries_digest.update(line)
            count += 1
            first_seq = doc["seq"] if first_seq is None else first_seq
            last_seq = doc["seq"]
        checkpoints = [
            {"seq": c.seq, "hash": c.head_hash, "signature": c.signature}
            for c in session.scalars(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.seq >= (first_seq or 0),
                       AuditCheckpoint.seq <= (last_seq or 0))
                .order_by(AuditCheckpoint.seq))
        ]
        head = read_head(config)
        files = {
            "checkpoints.json": canonical_json(checkpoints).encode(),
            "head.json": canonical_json(head.to_dict() if head else None).encode(),
            "public_key.pem": public_key_pem(public),
            # Every verification key (after a rotation the older checkpoints and heads
            # name older keys); vouched for by the manifest's signature with the current key.
            "keyring.json": canonical_json({
                kid: public_key_pem(pub).decode("ascii")
                for kid, pub in sorted(load_keyring(config).items())}).encode(),
        }
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        digests["entries.jsonl"] = entries_digest.hexdigest()
        manifest = {
            "kind": BUNDLE_KIND,
            "version": 1,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "filters": filt.to_dict(),
            "entries": count,
            "first_seq": first_seq,
            "last_seq": last_seq,
            "key_id": key_id(public),
            "files": digests,
        }
        manifest_bytes = canonical_json(manifest).encode()
        with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            entries_file.seek(0)
            with zf.open("entries.jsonl", "w") as dst:
                shutil.copyfileobj(entries_file, dst, 1024 * 1024)
            for name, data in files.items():
                zf.writestr(name, data)
            zf.writestr("manifest.json", manifest_bytes)
            zf.writestr("manifest.sig", sign_bytes(private, manifest_bytes))
            zf.writestr("README.txt",
                        BUNDLE_README.format(name=output.name, key_id=key_id(public)))
    return manifest

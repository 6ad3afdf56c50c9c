"""``yushan backup DIR``: a consistent copy of one installation, and its verification.

What is copied, in this order (the order is what makes the copy consistent while the
app runs):

1. ``keys/`` (the master key that wraps every data key, the audit signing key, the web
   secret): without them the encrypted data and the audit trail are useless.
2. ``audit-head.json``, read under the head file's lock, *before* the database: the head
   only moves forward after a commit, so the copied head never names an entry the copied
   database lacks.
3. The metadata database, as one snapshot: SQLite through its online backup API,
   PostgreSQL with ``pg_dump`` (custom format) on a snapshot exported by a transaction
   that also reads the audit head and the data files the snapshot refers to.
4. The copied head file is advanced, with the copied signing key, to the last audit entry
   of the snapshot: entries committed between steps 2 and 3 would otherwise look
   "never anchored" once the copy is older than the verifier's grace.
5. The encrypted data: ``datasets/`` (merchant uploads), ``outputs/`` (job results) and
   ``warehouse/`` (platform data versions). Files only appear before the database names
   them and disappear after it stops naming them, so a file the snapshot names can be
   missing only when it was removed (withdrawn, shredded) after the snapshot; such files
   are listed in the manifest's ``missing``.

``manifest.json`` names every file with its size and SHA-256, the versions (Yushan,
Python, schema revision, database server and ``pg_dump``), the database snapshot's audit
head and what is missing; ``yushan backup --verify DIR`` checks a copy against it. The
live installation records ``backup.create`` with the manifest's own SHA-256.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import sqlite3
import subprocess  # noqa: S404 - pg_dump with a fixed argument list, no shell
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from yushan.config import Config, ConfigError

FORMAT = 1
MANIFEST = "manifest.json"
SQLITE_FILE = "yushan.db"
PG_DUMP_FILE = "database.dump"
HEAD_FILE = "audit-head.json"
KEYS_DIR = "keys"
DATA_DIRS = ("datasets", "outputs", "warehouse")
_CHUNK = 1024 * 1024
# The data files the database refers to (paths relative to the home).
_REFERENCED = (
    "SELECT storage_path FROM datasets WHERE storage_path <> '' "
    "UNION SELECT storage_path FROM job_outputs WHERE storage_path <> ''"
)


class BackupError(Exception):
    """A backup could not be made or does not verify; the message says what to do."""


@dataclass
class Result:
    target: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    files: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _prepare_target(target: Path) -> Path:
    target = target.expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} exists and is not an empty directory; "
                          "give a new directory for each backup")
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(target, 0o700)  # it holds the keys
    return target


def _copy_head(config: Config, target: Path) -> None:
    """The head file's bytes under its lock (the writer holds it while it writes)."""
    source = config.audit_head_path
    if not source.exists():
        return
    with source.open("rb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        data = handle.read()
    (target / HEAD_FILE).write_bytes(data)


def _sqlite_path(config: Config) -> Path:
    database = make_url(config.database_url).database
    if not database or database == ":memory:":
        raise BackupError("YUSHAN_DATABASE_URL names no SQLite file to back up")
    return Path(database)


def _snapshot_sqlite(config: Config, target: Path) -> dict[str, Any]:
    """The online backup API: one consistent copy while writers go on (WAL)."""
    destination = target / SQLITE_FILE
    source = sqlite3.connect(_sqlite_path(config), timeout=30)  # read only: SELECTs, backup
    copy = sqlite3.connect(destination)
    try:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal
        head = copy.execute("SELECT seq, head_hash FROM audit_head WHERE id = 1").fetchone()
        revision = copy.execute("SELECT version_num FROM alembic_version").fetchone()
        referenced = sorted(row[0] for row in copy.execute(_REFERENCED))
    finally:
        copy.close()
        source.close()
    return {"kind": "sqlite", "file": SQLITE_FILE, "server_version": sqlite3.sqlite_version,
            "schema_revision": revision[0] if revision else None,
            "audit_head": {"seq": head[0], "hash": head[1]} if head else None,
            "referenced": referenced}


def _libpq(config: Config) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password, and the environment that carries it (never on
    the command line, where ``ps`` shows it)."""
    url = make_url(config.database_url)
    env = {"PGPASSWORD": url.password} if url.password else {}
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _snapshot_postgres(config: Config, target: Path) -> dict[str, Any]:
    """``pg_dump`` of a snapshot exported by the transaction that reads the audit head."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise BackupError("pg_dump is not installed, and a PostgreSQL database is backed up "
                          "with it: install the PostgreSQL client of the server's major "
                          "version (e.g. `apt-get install postgresql-client`)")
    from yushan.db import get_engine

    url, env = _libpq(config)
    version = subprocess.run([pg_dump, "--version"], capture_output=True,  # noqa: S603
                             text=True, check=False).stdout.strip()
    with get_engine(config).connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot_id = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            head = conn.execute(text("SELECT seq, head_hash FROM audit_head WHERE id = 1")).first()
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            server = conn.execute(text("SHOW server_version")).scalar()
            referenced = sorted(row[0] for row in conn.execute(text(_REFERENCED)))
            # The exported snapshot lives as long as this transaction: dump while it is open.
            done = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [pg_dump, "--format=custom", "--no-owner", "--no-privileges",
                 f"--snapshot={snapshot_id}", f"--file={target / PG_DUMP_FILE}",
                 f"--dbname={url}"],
                env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BackupError(f"pg_dump failed: {reason}")
    return {"kind": "postgresql", "file": PG_DUMP_FILE, "server_version": server,
            "pg_dump": version, "schema_revision": revision,
            "audit_head": {"seq": head[0], "hash": head[1]} if head else None,
            "referenced": referenced}


def _anchor_copy(config: Config, target: Path, head: dict[str, Any] | None) -> None:
    """Sign the copy's head for the snapshot's last entry, with the copied key."""
    if not head or not head["seq"]:
        return
    from audit.keys import advance_head

    copy = Config(home=target, database_url=f"sqlite:///{target / SQLITE_FILE}")
    advance_head(copy, int(head["seq"]), str(head["hash"]))


def _copy_tree(source: Path, destination: Path) -> None:
    """Copy a directory; files removed meanwhile (shredded outputs) are skipped."""
    for root, dirs, files in os.walk(source):
        relative = Path(root).relative_to(source)
        (destination / relative).mkdir(parents=True, exist_ok=True, mode=0o700)
        dirs.sort()
        for name in sorted(files):
            try:
                shutil.copy2(Path(root) / name, destination / relative / name)
            except FileNotFoundError:
                continue


def _files(target: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(target.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            relative = path.relative_to(target).as_posix()
            found[relative] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return found


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from yushan import __version__

    try:
        yushan_version = version("yushan")
    except PackageNotFoundError:
        yushan_version = __version__
    return {"yushan": yushan_version, "python": platform.python_version()}


def create(config: Config, target: Path) -> Result:
    """Back up ``config``'s installation into the new directory ``target``."""
    target = _prepare_target(target)
    try:
        if not config.keys_dir.is_dir():
            raise BackupError(f"{config.keys_dir} does not exist: is YUSHAN_HOME right?")
        _copy_tree(config.keys_dir, target / KEYS_DIR)
        _copy_head(config, target)
        database = (_snapshot_sqlite if config.is_sqlite else _snapshot_postgres)(config, target)
        _anchor_copy(config, target, database["audit_head"])
        for name in DATA_DIRS:
            if (config.home / name).is_dir():
                _copy_tree(config.home / name, target / name)
        referenced = database.pop("referenced")
        missing = [path for path in referenced if not (target / path).exists()]
        files = _files(target)
        manifest = {
            "format": FORMAT,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source_home": str(config.home),
            "versions": _versions(),
            "database": database,
            "missing": missing,
            "files": files,
        }
        raw = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        (target / MANIFEST).write_bytes(raw)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # never leave half a backup
        raise
    return Result(target=target, manifest=manifest, manifest_sha256=hashlib.sha256(raw).hexdigest(),
                  files=len(files), bytes=sum(f["bytes"] for f in files.values()),
                  missing=missing)


def verify(target: Path) -> list[str]:
    """What is wrong with the backup in ``target`` (empty: every file is there, with the
    size and SHA-256 the manifest names, and nothing else)."""
    target = target.expanduser().resolve()
    try:
        manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{target / MANIFEST} is missing: not a Yushan backup"]
    except (OSError, ValueError) as exc:
        return [f"{MANIFEST} cannot be read ({type(exc).__name__})"]
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        return [f"{MANIFEST} is not a format {FORMAT} manifest"]
    problems = []
    listed = manifest["files"]
    for relative, expected in sorted(listed.items()):
        path = target / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
        elif path.stat().st_size != expected.get("bytes"):
            problems.append(f"{relative}: {path.stat().st_size} bytes, the manifest says "
                            f"{expected.get('bytes')}")
        elif sha256_file(path) != expected.get("sha256"):
            problems.append(f"{relative}: content differs from the manifest (SHA-256)")
    extra = sorted(set(_files(target)) - set(listed))
    problems.extend(f"{relative}: not in the manifest" for relative in extra)
    database = manifest.get("database") or {}
    if database.get("file") not in listed:
        problems.append("the manifest names no database copy")
    return problems


def check_target_outside_home(config: Config, target: Path) -> None:
    """A backup inside the home would be copied into the next one, and lost with it."""
    home, where = config.home.resolve(), target.expanduser().resolve()
    if where == home or home in where.parents:
        raise ConfigError(f"{where} is inside YUSHAN_HOME ({home}); back up to another "
                          "directory, preferably on another disk")

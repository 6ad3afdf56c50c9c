"""Every kind of tampering with the stored trail is detected and the first bad entry named."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import pytest
from audit_support import append, fresh_config, raw_sql, run_cli
from sqlalchemy import text

import audit
from audit.chain import GENESIS, canonical_json, entry_hash

N = 12
MIDDLE = 6
TEXT_COLUMNS = ("ts", "actor", "role", "tenant", "origin", "action", "objects", "details",
                "prev_hash", "entry_hash")


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request, make_config):
    config = fresh_config(request, make_config, request.param)
    append(config, N, per_transaction=3)
    assert audit.verify(config).ok
    return config


def _rows(config) -> list[dict]:
    (rows,) = raw_sql(config, "SELECT id, seq, ts, actor, role, tenant, origin, action, "
                              "objects, details, prev_hash, entry_hash FROM audit_entries "
                              "ORDER BY seq")
    return [dict(r._mapping) for r in rows]


def _rechain(config, rows: list[dict]) -> None:
    """Rewrite every entry with consistent hashes, as an attacker who knows the algorithm
    (but not the signing key) would, and point the head row at the new tail."""
    prev = GENESIS
    statements = ["DELETE FROM audit_entries"]
    for row in rows:
        row["prev_hash"] = prev
        row["entry_hash"] = prev = entry_hash(prev, row)
        values = ", ".join(
            str(row[c]) if c in ("id", "seq") else "'" + str(row[c]).replace("'", "''") + "'"
            for c in ("id", "seq", *TEXT_COLUMNS))
        statements.append("INSERT INTO audit_entries (id, seq, " + ", ".join(TEXT_COLUMNS)
                          + f") VALUES ({values})")
    statements.append(f"UPDATE audit_head SET seq = {rows[-1]['seq']}, head_hash = '{prev}'")
    raw_sql(config, *statements)


@pytest.mark.parametrize("column", TEXT_COLUMNS)
def test_editing_any_text_column_is_detected(config, column):
    value = _rows(config)[MIDDLE - 1][column]
    # Same length (PostgreSQL enforces the column widths): change the last character.
    edited = value[:-1] + ("0" if value[-1] != "0" else "1")
    raw_sql(config, f"UPDATE audit_entries SET {column} = '{edited}' WHERE seq = {MIDDLE}")
    result = audit.verify(config)
    assert not result.ok
    assert result.first_bad == MIDDLE
    assert result.entries == MIDDLE - 1


def test_deleting_a_middle_entry_is_detected(config):
    raw_sql(config, f"DELETE FROM audit_entries WHERE seq = {MIDDLE}")
    result = audit.verify(config)
    assert (result.ok, result.first_bad) == (False, MIDDLE)
    assert "missing" in result.reason


def test_truncating_the_tail_is_detected(config):
    raw_sql(config, f"DELETE FROM audit_entries WHERE seq = {N}")
    result = audit.verify(config)
    assert (result.ok, result.first_bad) == (False, N)
    assert "truncated" in result.reason


def test_truncating_the_tail_and_fixing_the_head_row_is_detected(config):
    rows = _rows(config)
    raw_sql(config, f"DELETE FROM audit_entries WHERE seq > {N - 3}",
            f"UPDATE audit_head SET seq = {N - 3}, head_hash = '{rows[N - 4]['entry_hash']}'")
    result = audit.verify(config)
    assert (result.ok, result.first_bad) == (False, N - 2)


def test_reordering_entries_is_detected(config):
    rows = _rows(config)
    a, b = rows[MIDDLE - 1], rows[MIDDLE]
    statements = [
        "UPDATE audit_entries SET " + ", ".join(f"{c} = '{other[c]}'" for c in TEXT_COLUMNS)
        + f" WHERE seq = {target['seq']}"
        for target, other in ((a, b), (b, a))
    ]
    raw_sql(config, *statements)
    result = audit.verify(config)
    assert (result.ok, result.first_bad) == (False, MIDDLE)


def test_inserting_an_entry_with_recomputed_hashes_is_detected(config):
    """A consistent rewrite passes the chain check; the signed head file catches it."""
    rows = _rows(config)
    forged = dict(rows[MIDDLE - 1], objects=canonical_json({"job": 999}))
    rows.insert(MIDDLE, forged)
    for seq, row in enumerate(rows, 1):
        row["id"] = row["seq"] = seq
    _rechain(config, rows)
    result = audit.verify(config)
    assert not result.ok
    assert result.first_bad == N  # the signed head's entry no longer matches
    assert "signed head" in result.reason


def test_editing_with_recomputed_hashes_is_detected_by_signed_checkpoints(
    make_config, monkeypatch
):
    import audit.writer

    monkeypatch.setattr(audit.writer, "CHECKPOINT_EVERY", 5)
    config = make_config()
    config.home.mkdir(parents=True)
    from yushan.db import migrate

    migrate(config)
    audit.init_keys(config)
    append(config, N)
    rows = _rows(config)
    rows[1]["details"] = canonical_json({"columns_read": []})
    _rechain(config, rows)
    result = audit.verify(config)
    # The first signed checkpoint after the edit (entry 5) no longer matches.
    assert (result.ok, result.first_bad) == (False, 5)
    assert "checkpoint" in result.reason


def test_a_forged_or_missing_head_file_is_detected(config):
    path = config.audit_head_path
    original = path.read_bytes()
    path.write_bytes(original.replace(b'"seq": ', b'"seq": 1', 1))
    assert not audit.verify(config).ok
    path.write_bytes(b"not a head")
    assert not audit.verify(config).ok
    path.unlink()
    result = audit.verify(config)
    assert not result.ok and "missing" in result.reason
    path.write_bytes(original)
    assert audit.verify(config).ok


def test_entries_appended_behind_the_applications_back_are_detected(config):
    rows = _rows(config)
    last = rows[-1]
    forged = dict(last, id=N + 1, seq=N + 1, prev_hash=last["entry_hash"])
    _rechain(config, [*rows, forged])
    # Just written: could be a commit whose head write is still in flight.
    assert audit.verify(config).ok
    old = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    _rechain(config, [*rows, dict(forged, ts=old)])
    result = audit.verify(config)
    assert (result.ok, result.first_bad) == (False, N + 1)


def test_cli_verify_exits_0_when_intact_and_1_naming_the_first_bad_entry(config):
    ok = run_cli(config, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{N} entries" in ok.stdout
    ok_json = json.loads(run_cli(config, "verify", "--json").stdout)
    assert ok_json["ok"] is True and ok_json["entries"] == N and ok_json["first_bad"] is None

    raw_sql(config, f"DELETE FROM audit_entries WHERE seq = {MIDDLE}")
    bad = run_cli(config, "verify")
    assert bad.returncode == 1
    assert f"first bad entry: {MIDDLE}" in bad.stdout
    bad_json = json.loads(run_cli(config, "verify", "--json").stdout)
    assert bad_json["ok"] is False and bad_json["first_bad"] == MIDDLE


@pytest.mark.parametrize("mode", ["untouched", "edit", "delete", "truncate"])
def test_copied_home_tampered_like_the_acceptance_check(make_config, mode, tmp_path):
    """Copy the home (SQLite backup), tamper with the largest audit table's rows by rowid."""
    config = make_config()
    config.home.mkdir(parents=True)
    from yushan.db import migrate

    migrate(config)
    audit.init_keys(config)
    append(config, 40, per_transaction=4)

    copy = tmp_path / "copy"
    shutil.copytree(config.home, copy, ignore=shutil.ignore_patterns("*.db", "*.db-wal",
                                                                      "*.db-shm"))
    src, dst = sqlite3.connect(config.home / "yushan.db"), sqlite3.connect(copy / "yushan.db")
    src.backup(dst)
    src.close()
    con = dst
    tables = [t for (t,) in con.execute(
        "select name from sqlite_master where type='table' and name like '%audit%'")]
    table = max(tables, key=lambda t: con.execute(f'select count(*) from "{t}"').fetchone()[0])
    assert table == "audit_entries"
    n = con.execute(f'select count(*) from "{table}"').fetchone()[0]
    rid = con.execute(f'select rowid from "{table}" limit 1 offset {n // 2}').fetchone()[0]
    if mode == "edit":
        con.execute(f"update {table} set ts = ts || 'x' where rowid = {rid}")
    elif mode == "delete":
        con.execute(f"delete from {table} where rowid = {rid}")
    elif mode == "truncate":
        con.execute(f"delete from {table} where rowid = (select max(rowid) from {table})")
    con.commit()
    con.close()
    copied = make_config(home=copy)
    result = run_cli(copied, "verify")
    assert result.returncode == (0 if mode == "untouched" else 1), result.stdout + result.stderr


def test_verify_reads_a_snapshot_while_writers_go_on(config):
    """A verification in progress neither blocks writers nor sees their later entries."""
    from audit.verifier import snapshot

    started = time.monotonic()
    with snapshot(config) as conn:
        before = conn.execute(text("SELECT count(*) FROM audit_entries")).scalar()
        append(config, 3)  # on SQLite this waits out busy_timeout if verify held the lock
        during = conn.execute(text("SELECT count(*) FROM audit_entries")).scalar()
    assert time.monotonic() - started < 10
    assert before == during == N
    assert audit.verify(config).entries == N + 3


def test_head_file_has_two_signed_slots_and_survives_a_torn_one(config):
    path = config.audit_head_path
    raw = bytearray(path.read_bytes())
    heads = [json.loads(raw[i * 512:(i + 1) * 512]) for i in range(2)]
    newest = max(heads, key=lambda h: h["seq"])
    assert newest["seq"] == N
    # A crash mid-write leaves the newer slot torn: the older, valid one still anchors.
    slot = heads.index(newest)
    raw[slot * 512 + 10: slot * 512 + 60] = b"\0" * 50
    path.write_bytes(bytes(raw))
    result = audit.verify(config)
    assert result.ok, result.reason
    append(config, 1)
    assert audit.verify(config).ok
    assert hashlib.sha256(path.read_bytes()).hexdigest()  # still a readable file
    assert os.path.getsize(path) == 1024

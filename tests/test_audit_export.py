"""Exports for reviewers: CSV, JSON lines, and a signed bundle anyone can verify offline."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import zipfile

import pytest
from audit_support import MERCHANT, PROVIDER, REPO, append, fresh_config, run_cli

import audit
from audit.chain import key_id
from audit.keys import load_public_key
from audit.offline_verify import verify_bundle
from yushan.db import session_scope


@pytest.fixture
def config(request, make_config):
    config = fresh_config(request, make_config, "sqlite")
    append(config, 5, actor=MERCHANT)
    with session_scope(config) as session:
        audit.record(session, "job.execute", actor=PROVIDER,
                     objects={"job": 42, "merchant": "hanfu_house"},
                     details={"columns_read": [{"dataset": "platform.consumers",
                                                "column": "vip_level"}],
                              "released_rows": 3, "suppressed_rows": 2,
                              "note": "comma, \"quote\" and 名字"})
    return config


def test_csv_export_has_one_row_per_entry_oldest_first(config, tmp_path):
    out = tmp_path / "audit.csv"
    with session_scope(config) as session:
        assert audit.export_csv(session, out) == 6
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [int(r["seq"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["actor"] == "insight_isv"
    details = json.loads(rows[-1]["details"])
    assert details["note"] == 'comma, "quote" and 名字'
    assert details["columns_read"] == [{"column": "vip_level", "dataset": "platform.consumers"}]


def test_jsonl_export_filters_and_carries_the_chain_hashes(config):
    buf = io.StringIO()
    with session_scope(config) as session:
        count = audit.export_jsonl(session, buf, dataset="platform.consumers")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert count == len(lines) == 1
    assert lines[0]["objects"] == {"job": 42, "merchant": "hanfu_house"}
    assert len(lines[0]["entry_hash"]) == 64 and len(lines[0]["prev_hash"]) == 64


def test_signed_bundle_verifies_offline_and_detects_edits(config, tmp_path):
    bundle = tmp_path / "audit.zip"
    with session_scope(config) as session:
        manifest = audit.export_bundle(session, config, bundle)
    assert manifest["entries"] == 6
    fingerprint = key_id(load_public_key(config))
    report = verify_bundle(str(bundle), expect_key=fingerprint)
    assert report.ok, report.problems
    assert report.contiguous_from_genesis and report.entries == 6

    assert not verify_bundle(str(bundle), expect_key="0" * 16).ok

    # Edit one entry inside the bundle: caught whether or not the manifest is redone.
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "entries.jsonl":
                data = data.replace(b'"released_rows":3', b'"released_rows":30')
            dst.writestr(item, data)
    report = verify_bundle(str(tampered))
    assert not report.ok
    assert any("entries.jsonl" in p for p in report.problems)


def test_offline_command_needs_only_cryptography(config, tmp_path):
    """Run the documented command with the database and Yushan packages unimportable."""
    bundle = tmp_path / "audit.zip"
    with session_scope(config) as session:
        audit.export_bundle(session, config, bundle, actor="hanfu_owner")
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('sqlalchemy', 'yushan', 'pyspark', 'psycopg',"
        " 'flask'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import runpy\n"
        f"sys.argv = ['offline_verify', {str(bundle)!r}]\n"
        "runpy.run_module('audit.offline_verify', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("VERIFIED: 5 entries")


def test_cli_export_writes_each_format_and_is_itself_audited(config, tmp_path):
    csv_out, jsonl_out, zip_out = (tmp_path / n for n in ("a.csv", "a.jsonl", "a.zip"))
    assert run_cli(config, "export", "--format", "csv", "--output", str(csv_out),
                   "--actor", "insight_isv").returncode == 0
    assert len(list(csv.DictReader(csv_out.open()))) == 1
    assert run_cli(config, "export", "--format", "jsonl", "--output", str(jsonl_out),
                   "--action", "job.*", "--job", "42").returncode == 0
    assert [json.loads(x)["seq"] for x in jsonl_out.read_text().splitlines()] == [6]
    done = run_cli(config, "export", "--format", "bundle", "--output", str(zip_out))
    assert done.returncode == 0, done.stderr
    offline = subprocess.run([sys.executable, "-m", "audit.offline_verify", str(zip_out)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert offline.returncode == 0, offline.stdout
    bad = run_cli(config, "export", "--format", "csv", "--output", "-", "--since", "yesterday")
    assert bad.returncode == 2

    with session_scope(config) as session:
        exports = audit.query(session, action="audit.export")
    assert [e["objects"]["format"] for e in exports] == ["bundle", "jsonl", "csv"]
    assert exports[-1]["details"] == {"entries": 1, "filters": {"actor": "insight_isv"}}
    assert audit.verify(config).ok

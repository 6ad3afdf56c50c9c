"""Verify a signed audit export bundle offline: ``python -m audit.offline_verify B.zip``.

Needs only the standard library and ``cryptography`` (no database, no Yushan install):
copy ``audit/__init__.py``, ``audit/chain.py`` and this file anywhere and run it. Checks
the manifest signature, every file's SHA-256, every entry's hash, the links between
consecutive entries, and the signed checkpoints and head that fall within the export.
Exit 0 when the bundle verifies, 1 when it does not, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from dataclasses import dataclass, field

from audit.chain import (
    BUNDLE_KIND,
    CHECKPOINT_KIND,
    GENESIS,
    HEAD_KIND,
    canonical_json,
    check_bytes,
    check_point_any,
    entry_hash,
    key_id,
    keyring_from_pems,
    load_public_key_pem,
)


@dataclass
class BundleReport:
    ok: bool = True
    entries: int = 0
    key_id: str = ""
    # Keys whose signatures were checked (checkpoints, head), besides the bundle's own.
    key_ids: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    contiguous_from_genesis: bool = False

    def fail(self, message: str) -> None:
        self.ok = False
        self.problems.append(message)


def verify_bundle(path: str, expect_key: str | None = None) -> BundleReport:
    report = BundleReport()
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        report.fail(f"cannot open bundle: {exc}")
        return report
    with zf:
        try:
            manifest_bytes = zf.read("manifest.json")
            signature = zf.read("manifest.sig").decode("ascii").strip()
            public_key = load_public_key_pem(zf.read("public_key.pem"))
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            report.fail(f"bundle incomplete: {exc}")
            return report
        report.key_id = key_id(public_key)
        if expect_key and expect_key != report.key_id:
            report.fail(f"signed with key {report.key_id}, expected {expect_key}")
        if not check_bytes(public_key, manifest_bytes, signature):
            report.fail("manifest signature does not verify")
            return report
        manifest = json.loads(manifest_bytes)
        if manifest.get("kind") != BUNDLE_KIND:
            report.fail("not a Yushan audit bundle")
            return report
        files: dict[str, bytes] = {}
        for name, digest in manifest["files"].items():
            if name == "entries.jsonl":
                continue  # streamed below: an export may hold millions of entries
            try:
                files[name] = zf.read(name)
            except KeyError:
                report.fail(f"{name} is missing")
                continue
            if hashlib.sha256(files[name]).hexdigest() != digest:
                report.fail(f"{name} does not match the signed manifest")
        if not report.ok:
            return report
        checkpoints = json.loads(files["checkpoints.json"])
        head = json.loads(files["head.json"])
        # Only the hashes at signed points are kept, not one per entry.
        wanted = {point["seq"] for point in checkpoints}
        if head is not None:
            wanted.add(head["seq"])
        try:
            with zf.open("entries.jsonl") as stream:
                hashes, digest = _check_entries(stream, wanted, report)
        except KeyError:
            report.fail("entries.jsonl is missing")
            return report
        if digest != manifest["files"].get("entries.jsonl"):
            report.fail("entries.jsonl does not match the signed manifest")

    if report.entries != manifest.get("entries"):
        report.fail("entry count differs from the manifest")
    # Older bundles hold one key; newer ones every key of the installation's keyring.
    keyring = keyring_from_pems(json.loads(files["keyring.json"])) if "keyring.json" in files else {}
    keyring[report.key_id] = public_key

    def signed(kind: str, point: dict, named: str | None = None) -> bool:
        signer = check_point_any(keyring, kind, point["seq"], point["hash"],
                                 point["signature"], named=named)
        if signer is not None and signer not in report.key_ids:
            report.key_ids.append(signer)
        return signer is not None

    for point in checkpoints:
        if not signed(CHECKPOINT_KIND, point):
            report.fail(f"checkpoint {point['seq']} has a bad signature")
        elif point["seq"] in hashes and hashes[point["seq"]] != point["hash"]:
            report.fail(f"entry {point['seq']} differs from its signed checkpoint")
    if head is not None:
        if head.get("kind") != HEAD_KIND or not signed(HEAD_KIND, head, head.get("key_id") or None):
            report.fail("signed head has a bad signature")
        elif head["seq"] in hashes and hashes[head["seq"]] != head["hash"]:
            report.fail(f"entry {head['seq']} differs from the signed head")
    return report


MAX_PROBLEMS = 50


def _check_entries(stream, wanted: set[int], report: BundleReport
                   ) -> tuple[dict[int, str], str]:
    """Check each entry's hash and its link to the one before; return the hashes at the
    ``wanted`` sequence numbers and the SHA-256 of the whole file."""
    file_digest = hashlib.sha256()
    hashes: dict[int, str] = {}
    prev_seq: int | None = None
    prev_hash: str | None = None
    problems = 0

    def fail(message: str) -> None:
        nonlocal problems
        problems += 1
        if problems <= MAX_PROBLEMS:
            report.fail(message)
        else:
            report.ok = False

    for lineno, raw in enumerate(stream, 1):
        file_digest.update(raw)
        try:
            doc = json.loads(raw)
            seq = doc["seq"]
            fields = {**doc, "objects": canonical_json(doc["objects"]),
                      "details": canonical_json(doc["details"])}
            computed = entry_hash(doc["prev_hash"], fields)
        except (ValueError, KeyError, TypeError):
            fail(f"line {lineno} is not an audit entry")
            continue
        if computed != doc["entry_hash"]:
            fail(f"entry {seq} (line {lineno}) has been altered")
        if prev_seq is not None and seq <= prev_seq:
            fail(f"entry {seq} is out of order")
        elif prev_seq is not None and seq == prev_seq + 1 and doc["prev_hash"] != prev_hash:
            fail(f"entry {seq} does not link to entry {prev_seq}")
        if seq == 1 and doc["prev_hash"] != GENESIS:
            fail("entry 1 does not start the chain")
        if seq in wanted:
            hashes[seq] = doc["entry_hash"]
        if report.first_seq is None:
            report.first_seq = seq
        report.last_seq = seq
        prev_seq, prev_hash = seq, doc["entry_hash"]
        report.entries += 1
    if problems > MAX_PROBLEMS:
        report.problems.append(f"... and {problems - MAX_PROBLEMS} more problems")
    report.contiguous_from_genesis = (
        report.first_seq == 1 and report.entries == report.last_seq and problems == 0
    )
    return hashes, file_digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audit.offline_verify",
        description="Verify a Yushan audit export bundle without the platform.",
    )
    parser.add_argument("bundle", help="the .zip written by `yushan audit export --format bundle`")
    parser.add_argument("--expect-key", help="the key id the operator published")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = verify_bundle(args.bundle, args.expect_key)
    if args.json:
        print(json.dumps(report.__dict__, indent=1))
    else:
        status = "VERIFIED" if report.ok else "NOT VERIFIED"
        span = (f"entries {report.first_seq}..{report.last_seq}"
                if report.first_seq is not None else "no entries")
        others = [k for k in report.key_ids if k != report.key_id]
        print(f"{status}: {report.entries} entries ({span}), key {report.key_id}"
              + (f" (earlier keys {', '.join(others)})" if others else "")
              + (", complete from the first entry" if report.contiguous_from_genesis else ""))
        for problem in report.problems:
            print(f"  - {problem}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

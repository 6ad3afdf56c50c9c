"""Audit trail benchmarks: appends per second on SQLite, and verifying a large trail.

    .venv/bin/python bench/bench_audit.py                 # 5,000 appends; verify 1,000,000
    .venv/bin/python bench/bench_audit.py --appends 2000 --verify-entries 100000

Goals (issue 5): >= 1,000 appends/s on SQLite (one entry per committed transaction, head
file anchored after each commit, as the application does); verifying 1,000,000 entries in
< 30 s. The large trail is written with the writer's own hash and signing functions in
bulk (what is measured is verification), then checked by ``audit.verify`` exactly as
``yushan audit verify`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import audit
from audit.chain import CHECKPOINT_KIND, GENESIS, canonical_json, entry_hash, sign_point
from audit.keys import advance_head, load_signing_key
from audit.writer import CHECKPOINT_EVERY, now_ts
from yushan.config import Config
from yushan.db import dispose_engines, migrate, session_scope


def _fresh(home: Path) -> Config:
    config = Config(home=home, database_url=f"sqlite:///{home / 'yushan.db'}")
    home.mkdir(parents=True, exist_ok=True)
    migrate(config)
    audit.init_keys(config)
    return config


def bench_appends(config: Config, count: int, per_transaction: int) -> tuple[float, float]:
    """(appends per wall-clock second, appends per CPU second of this process).

    The CPU figure tells the cost of an append apart from time spent waiting for a
    machine shared with other work; the wall-clock figure is the goal's measure.
    """
    actor = audit.Actor(username="insight_isv", role="provider", tenant="insight_isv",
                        origin="ip=127.0.0.1 ua=bench")
    started, cpu_started = time.perf_counter(), time.process_time()
    done = 0
    while done < count:
        with session_scope(config) as session:
            for _ in range(per_transaction):
                audit.record(session, "job.execute", actor=actor,
                             objects={"job": done, "merchant": "hanfu_house"},
                             details={"columns_read": [{"dataset": "platform.consumers",
                                                        "column": "vip_level"}],
                                      "released_rows": 12, "suppressed_rows": 3})
                done += 1
    return (count / (time.perf_counter() - started),
            count / (time.process_time() - cpu_started))


def build_large_trail(config: Config, count: int) -> None:
    """Write ``count`` valid entries, checkpoints and the signed head, in bulk."""
    key = load_signing_key(config)
    db = sqlite3.connect(config.home / "yushan.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    prev, batch, points = GENESIS, [], []
    objects = canonical_json({"job": 1, "merchant": "hanfu_house"})
    details = canonical_json({"columns_read": [{"column": "vip_level",
                                                "dataset": "platform.consumers"}],
                              "released_rows": 12, "suppressed_rows": 3})
    ts = now_ts()
    for seq in range(1, count + 1):
        fields = {"seq": seq, "ts": ts, "actor": "insight_isv", "role": "provider",
                  "tenant": "insight_isv", "origin": "ip=127.0.0.1 ua=bench",
                  "action": "job.execute", "objects": objects, "details": details}
        digest = entry_hash(prev, fields)
        batch.append((seq, seq, ts, "insight_isv", "provider", "insight_isv",
                      fields["origin"], "job.execute", objects, details, prev, digest))
        if seq % CHECKPOINT_EVERY == 0:
            points.append((seq, digest, sign_point(key, CHECKPOINT_KIND, seq, digest), ts))
        prev = digest
        if len(batch) >= 50_000 or seq == count:
            db.executemany("INSERT INTO audit_entries (id, seq, ts, actor, role, tenant, "
                           "origin, action, objects, details, prev_hash, entry_hash) "
                           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", batch)
            batch.clear()
    db.executemany("INSERT INTO audit_checkpoints (seq, head_hash, signature, created_at) "
                   "VALUES (?,?,?,?)", points)
    db.execute("INSERT INTO audit_head (id, seq, head_hash) VALUES (1, ?, ?)", (count, prev))
    db.commit()
    db.close()
    advance_head(config, count, prev)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument("--verify-entries", type=int, default=1_000_000)
    parser.add_argument("--dir", help="working directory (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-audit-", dir=args.dir) as tmp:
        results: dict[str, float | int | bool] = {}
        config = _fresh(Path(tmp) / "appends")
        for per_tx in (1, 10):
            wall, cpu = bench_appends(config, args.appends, per_tx)
            results[f"appends_per_s_{per_tx}_per_tx"] = round(wall)
            results[f"appends_per_cpu_s_{per_tx}_per_tx"] = round(cpu)
        results["appends_verified"] = audit.verify(config).ok

        big = _fresh(Path(tmp) / "large")
        started = time.perf_counter()
        build_large_trail(big, args.verify_entries)
        results["build_s"] = round(time.perf_counter() - started, 1)
        started, cpu_started = time.perf_counter(), time.process_time()
        outcome = audit.verify(big)
        results["verify_s"] = round(time.perf_counter() - started, 2)
        results["verify_cpu_s"] = round(time.process_time() - cpu_started, 2)
        results["verify_entries"] = outcome.entries
        results["verify_ok"] = outcome.ok
        dispose_engines()
    print(json.dumps(results, indent=1))
    results["load_average"] = round(os.getloadavg()[0], 1)
    ok = (results["appends_per_s_1_per_tx"] >= 1000 and results["verify_ok"]
          and (args.verify_entries < 1_000_000 or results["verify_s"] < 30))
    print("goals met" if ok else "goals NOT met", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

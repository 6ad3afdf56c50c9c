"""Benchmark: validate and store a 5M-row CSV (goal < 2 min on a 2-core machine).

    .venv/bin/python bench/bench_upload.py [--rows 5000000] [--workdir /tmp/yushan-bench]

Prints wall time per stage, the Python process's peak RSS (the JVM is bounded by
``YUSHAN_SPARK_DRIVER_MEMORY``), and what encryption costs: encrypting at upload, and
decrypting into a job workspace (what every job reading the dataset pays).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import time
from pathlib import Path


def make_csv(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as out:
        out.write("member_id,phone_hash,tier,points,joined_at\n")
        tiers = ("gold", "silver", "bronze")
        batch = []
        for i in range(rows):
            digest = hashlib.sha256(b"%d" % i).hexdigest()
            batch.append(f"M{i:09d},{digest},{tiers[i % 3]},{i % 10000},2024-{1 + i % 12:02d}-{1 + i % 28:02d}\n")
            if len(batch) == 100_000:
                out.write("".join(batch))
                batch.clear()
        out.write("".join(batch))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/yushan-bench"))
    args = parser.parse_args()

    from audit import Actor
    from onboarding.ingest import upload_dataset
    from sandbox.crypto import KeyStore
    from sandbox.spark import get_spark
    from sandbox.storage import decrypt_dataset
    from yushan.accounts import ensure_tenant, ensure_user
    from yushan.catalog import dataset_info
    from yushan.cli import initialise
    from yushan.config import Config
    from yushan.db import session_factory, session_scope
    from yushan.models import Role, TenantKind

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    csv_path = args.workdir / "members.csv"
    t0 = time.perf_counter()
    make_csv(csv_path, args.rows)
    print(f"generated {args.rows} rows, {csv_path.stat().st_size / 1e6:.0f} MB "
          f"in {time.perf_counter() - t0:.1f}s")

    config = Config.from_env(home=args.workdir / "home", spark_master="local[2]",
                             database_url=f"sqlite:///{args.workdir / 'home' / 'yushan.db'}")
    initialise(config)
    with session_scope(config) as session:
        shop = ensure_tenant(session, "bench_shop", "Bench", TenantKind.MERCHANT)
        ensure_user(session, "bench_owner", "bench-password-123", Role.MERCHANT, shop)
    spark = get_spark(config, "yushan-bench")
    spark.range(1).count()  # JVM start-up is not part of an upload

    stages: dict[str, float] = {}
    last = [time.perf_counter(), "receive"]

    def progress(stage: str, _fraction: float) -> None:
        now = time.perf_counter()
        if stage != last[1]:
            stages[last[1]] = stages.get(last[1], 0.0) + now - last[0]
            last[0], last[1] = now, stage

    schema = {"member_key": "member_id", "columns": [
        {"name": "member_id", "type": "string"}, {"name": "phone_hash", "type": "string"},
        {"name": "tier", "type": "string"}, {"name": "points", "type": "int"},
        {"name": "joined_at", "type": "date"}]}
    session = session_factory(config)()
    from sqlalchemy import select

    from yushan.models import User

    user = session.scalar(select(User).where(User.username == "bench_owner"))
    start = time.perf_counter()
    with open(csv_path, "rb") as source:
        result = upload_dataset(session, config, user, name="members", schema=json.dumps(schema),
                                source=source, filename="members.csv",
                                actor=Actor.for_user(user, "bench"), spark=spark,
                                progress=progress, expected_size=csv_path.stat().st_size)
    total = time.perf_counter() - start
    stages[last[1]] = stages.get(last[1], 0.0) + time.perf_counter() - last[0]

    info = dataset_info(config, result.dataset)
    t1 = time.perf_counter()
    out = decrypt_dataset(KeyStore(config.master_key_path), info, config.workspaces_dir / "job-x")
    decrypt = time.perf_counter() - t1
    t2 = time.perf_counter()
    plain_count = spark.read.parquet(str(out)).count()
    read_plain = time.perf_counter() - t2
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "rows": result.dataset.row_count, "accepted": result.report.passed,
        "upload_total_s": round(total, 1),
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
        "stored_parquet_mb": round((result.dataset.byte_size or 0) / 1e6, 1),
        "decrypt_for_job_s": round(decrypt, 2),
        "spark_count_after_decrypt_s": round(read_plain, 2),
        "python_peak_rss_mb": round(peak_mb),
        "spark_driver_memory": config.spark_driver_memory,
        "rows_read_back": plain_count,
    }, indent=2))
    session.close()
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

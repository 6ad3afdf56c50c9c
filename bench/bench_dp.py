"""dp mode on the demo world: accuracy against the exact answer, and the cost of the release.

    .venv/bin/python bench/bench_dp.py [--home DIR] [--scale 1] [--runs 30]

* accuracy: the perf check's query shape (buyers and average spend per city) released in dp
  mode at ε = 1 per job, ``--runs`` times; for every city with at least 2,000 buyers, the
  relative error of buyers and of the average spend; reported as the 95th percentile over
  runs and cities. Goal: buyers within ±2%, average spend within ±5%.
* cost: the same query end to end in the policy (``check`` + ``execute`` + collect) against
  plain Spark SQL, alternating, same session and data. Goal: dp <= 1.25x plain.

The demo world is built in ``--home`` on first use (scale 1 takes a few minutes); the same
home as ``bench_policy.py`` is reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SQL = ("SELECT c.city, count(DISTINCT o.user_id) AS buyers, avg(o.amount) AS avg_spend "
       "FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id "
       "WHERE o.amount >= {floor} GROUP BY c.city")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("/tmp/yushan-policy-bench"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--min-buyers", type=int, default=2000)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()

    from policies import check
    from sandbox.catalog import install_catalog
    from sandbox.spark import get_spark
    from yushan.catalog import readable_datasets
    from yushan.cli import initialise
    from yushan.config import Config
    from yushan.db import session_factory
    from yushan.demo import build_demo, demo_exists

    home = args.home.resolve()
    config = Config.from_env(home=home, database_url=f"sqlite:///{home / 'yushan.db'}",
                             spark_master=args.master, spark_shuffle_partitions=8)
    spark = get_spark(config, "yushan-bench-dp")
    if not demo_exists(config):
        print(f"building the demo world at scale {args.scale} in {home} ...", flush=True)
        initialise(config)
        build_demo(config, scale=args.scale, seed=7, spark=spark)
    session = session_factory(config)()
    datasets = readable_datasets(session, config, "hanfu_house")
    session.close()
    install_catalog(spark, datasets)

    query = SQL.format(floor=0)
    truth = {r["city"]: (r["buyers"], float(r["avg_spend"])) for r in spark.sql(query).collect()}
    big = {city for city, (buyers, _) in truth.items() if buyers >= args.min_buyers}
    buyer_errors, spend_errors, widths = [], [], {}
    timings_dp, timings_plain = [], []
    for i in range(args.runs):
        floor = i / 1000  # a new literal each run: no result cache helps either side
        start = time.perf_counter()
        spark.sql(SQL.format(floor=floor)).collect()
        timings_plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        decision = check(spark, SQL.format(floor=floor), "aggregate", "hanfu_house", datasets)
        assert decision.allowed and decision.release == "dp", decision.to_dict()
        result = decision.execute(spark)
        rows = result.dataframe.collect()
        result.confirm()
        timings_dp.append(time.perf_counter() - start)
        widths = result.accuracy
        released = {r["city"]: r for r in rows}
        for city in big:
            row = released.get(city)
            if row is None:
                buyer_errors.append(1.0)  # a large city not released counts as a full miss
                spend_errors.append(1.0)
                continue
            buyers, spend = truth[city]
            buyer_errors.append(abs(row["buyers"] - buyers) / buyers)
            spend_errors.append(abs(float(row["avg_spend"]) - spend) / spend)
    plain, dp = statistics.median(timings_plain[2:]), statistics.median(timings_dp[2:])
    report = {
        "scale": args.scale,
        "runs": args.runs,
        "epsilon_per_job": decision.epsilon,
        "cities_with_min_buyers": len(big),
        "buyers_rel_error_p95": round(percentile(buyer_errors, 0.95), 5),
        "avg_spend_rel_error_p95": round(percentile(spend_errors, 0.95), 5),
        "goal": {"buyers": 0.02, "avg_spend": 0.05},
        "released_ci95": widths,
        "plain_median_s": round(plain, 3),
        "dp_median_s": round(dp, 3),
        "ratio": round(dp / plain, 3),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

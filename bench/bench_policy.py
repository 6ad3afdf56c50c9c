"""Policy benchmarks: check latency on the demo catalog, and the cost of P3 enforcement.

    .venv/bin/python bench/bench_policy.py [--home DIR] [--scale 1] [--runs 25]

* latency: ``policies.check`` on queries with 0..10 joins, p50/p99: cold (a JVM that has
  run a few checks), then after the warm-up ``yushan serve`` runs at start (``--warm-up``).
  Goal: p50 < 50 ms, p99 < 200 ms.
* enforcement: the same join+aggregate run plain (``spark.sql(...).collect()``) and
  enforced (``check`` + ``execute`` + collect), alternating, same session and data; once
  where the query's filter makes the per-value count redundant, once where it does not.
  Goal: enforced <= 1.15x plain.

The demo world is built in ``--home`` on first use (scale 1 takes a few minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SQL = ("SELECT c.city, c.gender, round(avg(o.amount), 2) AS avg_amount, count(DISTINCT o.user_id) AS buyers "
       "FROM platform.orders o JOIN platform.consumers c ON o.user_id = c.user_id "
       "WHERE o.amount >= {floor} GROUP BY c.city, c.gender")
SQL_ZERO_ALLOWED = SQL.replace("o.amount >= {floor}", "o.amount > -{floor}")


def join_query(joins: int) -> str:
    """An aggregate over orders with ``joins`` joins (consumers and items, alternately)."""
    parts = ["FROM platform.orders o"]
    for n in range(joins):
        if n % 2 == 0:
            parts.append(f"JOIN platform.consumers c{n} ON o.user_id = c{n}.user_id")
        else:
            parts.append(f"JOIN platform.items i{n} ON o.item_id = i{n}.item_id")
    key = "c0.city" if joins else "o.channel"
    return (f"SELECT {key} AS k, count(DISTINCT o.user_id) AS buyers, round(avg(o.amount), 2) AS a "
            f"{' '.join(parts)} WHERE o.amount > 1 GROUP BY {key} ORDER BY buyers DESC")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def trimmed_mean(values: list[float]) -> float:
    """Mean of the middle half: the machine's occasional pauses left out on both sides."""
    ordered = sorted(values)
    quarter = len(ordered) // 4
    middle = ordered[quarter:len(ordered) - quarter] or ordered
    return statistics.mean(middle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("/tmp/yushan-policy-bench"))
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=25,
                        help="timed runs per variant (enforcement); single runs vary by +-20%%")
    parser.add_argument("--latency-runs", type=int, default=20, help="timed checks per query")
    parser.add_argument("--warm-up", type=int, default=1500,
                        help="synthetic checks before the second latency round, as `yushan serve` "
                             "runs at start (YUSHAN_CHECK_WARMUP); 0: one cold round only")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--compare-writers", action="store_true",
                        help="also time checks with the fast plan writer and with Spark's own "
                             "toJSON, alternately, in this process (policies/planjson.py)")
    parser.add_argument("--release", choices=("threshold", "dp"), default="threshold",
                        help="release mode of the consumer datasets for the enforcement runs")
    args = parser.parse_args()

    from policies import check
    from policies.segment import register_segment_token
    from sandbox.catalog import install_catalog
    from sandbox.crypto import KeyStore
    from sandbox.spark import get_spark
    from yushan.catalog import readable_datasets
    from yushan.cli import initialise
    from yushan.config import Config
    from yushan.db import session_factory
    from yushan.demo import build_demo, demo_exists

    home = args.home.resolve()
    config = Config.from_env(home=home, database_url=f"sqlite:///{home / 'yushan.db'}",
                             spark_master=args.master, spark_shuffle_partitions=8)
    spark = get_spark(config, "yushan-bench-policy")
    if not demo_exists(config):
        print(f"building the demo world at scale {args.scale} in {home} ...", flush=True)
        initialise(config)
        build_demo(config, scale=args.scale, seed=7, spark=spark)
    session = session_factory(config)()
    datasets = readable_datasets(session, config, "hanfu_house")
    session.close()
    import dataclasses

    datasets = {name: dataclasses.replace(info, release_mode=args.release) if info.is_consumer_data
                else info for name, info in datasets.items()}
    install_catalog(spark, datasets)
    register_segment_token(spark, KeyStore(config.master_key_path).segment_token_key("hanfu_house"),
                           "hanfu_house")

    # -- check latency -------------------------------------------------------------------
    # Measured twice: on a JVM that has run only a few checks (its compiler still busy
    # with Spark's analyser), then after the warm-up `yushan serve` runs at start
    # (sandbox/check_warmup.py: synthetic checks on a catalog of their own).
    def latency_round() -> dict:
        latencies: dict[int, list[float]] = {}
        for _ in range(args.latency_runs):
            for joins in range(11):
                start = time.perf_counter()
                decision = check(spark, join_query(joins), "aggregate", "hanfu_house", datasets)
                latencies.setdefault(joins, []).append((time.perf_counter() - start) * 1000)
                assert decision.allowed, decision.to_dict()
        every = [v for vs in latencies.values() for v in vs]
        return {
            "p50": round(statistics.median(every), 1),
            "p99": round(percentile(every, 0.99), 1),
            "by_joins_p50": {j: round(statistics.median(v), 1) for j, v in latencies.items()},
            "checks": len(every),
        }

    for _ in range(3):  # the JVM's analyzer and py4j used once
        for joins in (0, 5, 10):
            check(spark, join_query(joins), "aggregate", "hanfu_house", datasets)
    report = {"release": args.release, "check_latency_ms_cold": latency_round()}
    if args.warm_up:
        from sandbox.check_warmup import warm_checks

        started = time.perf_counter()
        warm_checks(config, args.warm_up, app_name="yushan-bench-policy")
        report["warm_up"] = {"checks": args.warm_up, "seconds": round(time.perf_counter() - started, 1)}
        install_catalog(spark, datasets)
        report["check_latency_ms"] = latency_round()
    print(json.dumps(report, indent=1), flush=True)

    if args.compare_writers:
        import policies.planjson as planjson

        fast_writer = planjson._writer
        timed: dict[str, list[float]] = {"fast": [], "toJSON": []}
        for _ in range(args.latency_runs):
            for joins in range(11):
                for name, writer in (("fast", fast_writer), ("toJSON", lambda s: planjson._UNAVAILABLE)):
                    planjson._writer = writer
                    start = time.perf_counter()
                    check(spark, join_query(joins), "aggregate", "hanfu_house", datasets)
                    timed[name].append((time.perf_counter() - start) * 1000)
        planjson._writer = fast_writer
        print(json.dumps({"check_p50_ms_by_plan_writer": {k: round(statistics.median(v), 1)
                                                          for k, v in timed.items()}}), flush=True)

    # -- cost of enforcement ---------------------------------------------------------------
    # Two shapes of the same join + aggregate. With ``amount >= floor`` (floor > 0) the
    # query's own filter proves every amount non-zero, so the per-value count of avg(amount)
    # is the row count (policies.implied). With ``amount > -floor`` zero amounts pass, and
    # the per-value count is computed: Spark then expands the aggregation's input.
    shapes = {"filter_proves_non_zero": SQL, "per_value_count_needed": SQL_ZERO_ALLOWED}
    for shape, template in shapes.items():
        def plain(i: int, template: str = template) -> float:
            start = time.perf_counter()
            spark.sql(template.format(floor=i / 1000)).collect()
            return time.perf_counter() - start

        def enforced(i: int, template: str = template) -> tuple[float, int]:
            start = time.perf_counter()
            decision = check(spark, template.format(floor=i / 1000), "aggregate", "hanfu_house",
                             datasets)
            result = decision.execute(spark)
            result.dataframe.collect()
            return time.perf_counter() - start, result.suppressed_rows

        plain(1), enforced(1)  # warm-up
        plain_times, enforced_times, suppressed = [], [], 0
        for i in range(1, args.runs + 1):
            plain_times.append(plain(i))
            seconds, suppressed = enforced(i)
            enforced_times.append(seconds)
        p, e = statistics.median(plain_times), statistics.median(enforced_times)
        tp, te = trimmed_mean(plain_times), trimmed_mean(enforced_times)
        report[f"enforcement_{shape}"] = {
            "scale": args.scale,
            "plain_median_s": round(p, 3),
            "enforced_median_s": round(e, 3),
            "ratio": round(e / p, 3),
            "ratio_of_trimmed_means": round(te / tp, 3),  # middle half of the runs
            "suppressed_rows": suppressed,
            "runs": args.runs,
            "release": args.release,
        }
        print(shape, json.dumps(report[f"enforcement_{shape}"], indent=1), flush=True)


if __name__ == "__main__":
    main()

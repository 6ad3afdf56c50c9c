"""Adversary harness: one SparkSession over the demo world (scale 0.05), hanfu_house's
catalog, and helpers to check/execute a job and compare with the plain-Spark ground truth.

Run as a server: ``python scratch/harness.py serve`` then drop Python snippets into
scratch/queue/NAME.py; each is exec()'d with ``h`` (a Harness) in scope and its stdout
written to scratch/queue/NAME.out. Not a test module: a tool for finding attacks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

os.environ.setdefault("YUSHAN_HOME", "/tmp/adv-home")


class Harness:
    def __init__(self, merchant: str = "hanfu_house"):
        from sandbox.spark import get_spark
        from yushan.config import Config

        self.config = Config.from_env()
        self.spark = get_spark(self.config, "yushan-adversary")
        self.merchant = merchant
        self.workdir = Path("/tmp/adv-work")
        self.workdir.mkdir(exist_ok=True)
        self.reload()

    def reload(self):
        """Re-read the catalog (after an upload) and install it."""
        from policy_support import world

        self.env = world(self.config, self.merchant, self.workdir)
        self.env.install(self.spark)

    def datasets(self, mode: str):
        from policy_support import in_mode

        return in_mode(self.env, mode).datasets

    def check(self, sql: str, kind: str = "aggregate", mode: str = "threshold"):
        from policies import check

        self.env.install(self.spark)
        return check(self.spark, sql, kind, self.merchant, self.datasets(mode))

    def run(self, sql: str, kind: str = "aggregate", mode: str = "threshold", truth: bool = True,
            show: bool = True, limit: int = 20):
        """Check, execute if allowed, and compare with plain Spark. Returns a dict."""
        t0 = time.time()
        d = self.check(sql, kind, mode)
        doc = d.to_dict()
        out = {"decision": doc["decision"], "rules": sorted({v["rule"] for v in doc["violations"]}),
               "release": doc.get("release")}
        if doc["decision"] == "error":
            out["error"] = doc.get("error")
        if doc["decision"] == "deny":
            out["why"] = [(v["rule"], v["column"], v["message"][:140]) for v in doc["violations"]][:4]
        if d.allowed:
            t1 = time.time()
            try:
                res = d.execute(self.spark)
                rows = [tuple(r) for r in res.dataframe.collect()]
                res.confirm()
                out["released"] = rows[:limit]
                out["n_released"] = len(rows)
                try:
                    out["suppressed"] = res.suppressed_rows
                except Exception as e:  # noqa: BLE001
                    out["suppressed"] = f"err {type(e).__name__}"
            except Exception as e:  # noqa: BLE001
                out["exec_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            out["exec_s"] = round(time.time() - t1, 2)
        if truth:
            try:
                rows = [tuple(r) for r in self.spark.sql(sql).collect()]
                out["truth"] = rows[:limit]
                out["n_truth"] = len(rows)
            except Exception as e:  # noqa: BLE001
                out["truth_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        out["s"] = round(time.time() - t0, 2)
        if show:
            print(json.dumps(out, default=str, ensure_ascii=False))
        return out

    def batch(self, cases: dict[str, str], modes=("threshold",), kind: str = "aggregate"):
        """Check and run several named queries; one line each (decision, rules, rows)."""
        for name, sql in cases.items():
            for mode in modes:
                r = self.run(sql, mode=mode, kind=kind, truth=False, show=False)
                extra = ""
                if r["decision"] != "deny":
                    extra = (str(r.get("released", ""))[:160] + " " + str(r.get("exec_error", ""))[:120]
                             + str(r.get("error", ""))[:120])
                print(name, mode, r["decision"], r.get("rules"), extra, flush=True)

    def sql(self, sql: str, limit: int = 50):
        rows = [tuple(r) for r in self.spark.sql(sql).collect()]
        print(json.dumps(rows[:limit], default=str, ensure_ascii=False))
        return rows


def serve():
    h = Harness()
    queue = HERE / "queue"
    queue.mkdir(exist_ok=True)
    print("ready", flush=True)
    (queue / "READY").write_text("ok")
    while True:
        for job in sorted(queue.glob("*.py")):
            out = job.with_suffix(".out")
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                try:
                    exec(compile(job.read_text(), str(job), "exec"), {"h": h, "json": json})
                except Exception:  # noqa: BLE001
                    traceback.print_exc(file=buf)
            job.rename(job.with_suffix(".done"))
            out.write_text(buf.getvalue())
        time.sleep(0.3)


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()

"""Load benchmark against a running app: checks, log-ins and a fair queue, bounded.

Measures, over HTTP as clients would see it:
- dry-run checks (``POST /api/v1/jobs/check``) at 1, 4 and 16 concurrent clients: p50,
  p99 and max latency; the clients act for both demo merchants (merchant users and
  providers), each check with a new literal, so no answer is ever the same twice;
- log-ins (``POST /api/v1/token``) at 20 concurrent clients, several rounds: p50, p99;
- a burst of 40 jobs from one tenant (hanfu_house) and then 1 from another (tea_garden):
  how long the other's job waits (submission to start, and to release), in job-times
  (the median run time of the burst's jobs, from the jobs' own recorded times), and in
  the run time of the burst jobs that ran next to it (the burst speeds up as it goes).

Without ``--url`` it builds the demo world in ``--home`` when missing (``yushan init``,
``yushan demo --scale``) and starts ``yushan serve`` there on ``--port`` with one worker,
as ``make run`` does, with the request rate limits and the hourly submission limit
off (this measures the app, not its limiters: ``YUSHAN_RATE_LIMIT_*``,
``YUSHAN_JOB_RATE_LIMIT``); it stops the server afterwards. With ``--url`` it uses a
server you started, whose limits must allow the load.

Usage: PYTHONPATH=$PWD .venv/bin/python bench/bench_load.py [--scale 0.05]
       [--home /tmp/yushan-load] [--port 8765] [--checks 160] [--login-rounds 5]
       [--burst 40] [--url http://127.0.0.1:8000] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

PASSWORD = "demo-password"  # noqa: S105 - the demo world's published password (spec/demo-data.md)
# (user, merchant): the checking clients take these in turn.
ACTORS = [("hanfu_owner", "hanfu_house"), ("tea_owner", "tea_garden"),
          ("insight_isv", "hanfu_house"), ("other_isv", "tea_garden")]
LOGIN_USERS = ["hanfu_owner", "tea_owner", "insight_isv", "other_isv", "auditor", "admin"]
# Check queries, each with a literal that changes every time; platform consumer data (dp),
# joins and the merchant's own data.
CHECKS = [
    "SELECT c.city, count(*) AS n FROM platform.consumers c WHERE c.birth_year >= {n} "
    "GROUP BY c.city",
    "SELECT c.city, c.gender, sum(o.amount) AS total FROM platform.orders o "
    "JOIN platform.consumers c ON o.user_id = c.user_id WHERE o.amount > {n} GROUP BY c.city, c.gender",
    "SELECT m.tier, count(*) AS n FROM {merchant}.members m WHERE m.points > {n} GROUP BY m.tier",
    "SELECT b.action, count(DISTINCT b.user_id) AS users FROM platform.behaviors b "
    "JOIN platform.items i ON b.item_id = i.item_id WHERE i.price > {n} GROUP BY b.action",
]
# Burst jobs: the merchant's own data (no consumer data: no privacy budget is spent).
JOB_SQL = "SELECT store_id, count(*) AS sales, sum(amount) AS total FROM hanfu_house.store_sales " \
          "WHERE amount > {n} GROUP BY store_id"
OTHER_SQL = "SELECT tier, count(*) AS members FROM tea_garden.members WHERE points > {n} GROUP BY tier"
# The request limits off (a limit of 100,000 a minute kept up to 100,000 timestamps per
# user in the moving window, a cost no real limit has), and the hourly submission limit off.
RAISED_LIMITS = {"YUSHAN_RATE_LIMIT_CHECK": "off", "YUSHAN_RATE_LIMIT_SUBMIT": "off",
                 "YUSHAN_RATE_LIMIT_LOGIN": "off", "YUSHAN_JOB_RATE_LIMIT": "0"}


class Client:
    """One keep-alive HTTP connection (one simulated client)."""

    def __init__(self, base: str, token: str | None = None):
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port or 80
        self.token = token
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                if attempt == 2:
                    raise
        doc = json.loads(raw) if raw and response.getheader("Content-Type", "").startswith(
            "application/json") else {}
        return response.status, doc, dict(response.getheaders())


def login(base: str, username: str) -> str:
    status, doc, _ = Client(base).call("POST", "/api/v1/token", {"username": username, "password": PASSWORD})
    if status != 200:
        raise SystemExit(f"log-in of {username} answered {status}: {doc}")
    return doc["token"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]  # nearest rank


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1),
            "max_ms": round(max(ms), 1) if ms else None}


# ---------------------------------------------------------------- CPU of the web process


class WebCpu:
    """CPU seconds used by the web process and its JVM (its java children; the workers and
    their executors are not counted), read from /proc: what a request costs whatever else
    runs on the machine."""

    def __init__(self, pid: int | None):
        self.pid = pid

    def _cpu(self, pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _java_children(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.pid and "java" in (entry / "comm").read_text():
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def seconds(self) -> float | None:
        if self.pid is None:
            return None
        try:
            return self._cpu(self.pid) + sum(self._cpu(p) for p in self._java_children())
        except OSError:
            return None


# ---------------------------------------------------------------- checks


_counter = iter(range(10_000_000))
_counter_lock = threading.Lock()


def next_literal() -> int:
    with _counter_lock:
        return 1000 + next(_counter)


def check_level(base: str, tokens: dict[str, str], clients: int, total: int,
                cpu: WebCpu | None = None) -> dict:
    """``total`` checks spread over ``clients`` concurrent clients; latencies in ms, and the
    web process's CPU per check."""
    per_client = max(1, total // clients)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def run(index: int) -> None:
        user, merchant = ACTORS[index % len(ACTORS)]
        client = Client(base, tokens[user])
        barrier.wait()
        for i in range(per_client):
            sql = CHECKS[(index + i) % len(CHECKS)].format(n=next_literal(), merchant=merchant)
            started = time.perf_counter()
            status, doc, _ = client.call("POST", "/api/v1/jobs/check",
                                         {"merchant": merchant, "kind": "aggregate", "sql": sql})
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    cpu_before = cpu.seconds() if cpu else None
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    cpu_after = cpu.seconds() if cpu else None
    cpu_ms = (round((cpu_after - cpu_before) * 1000 / len(latencies), 1)
              if cpu_before is not None and cpu_after is not None else None)
    return {"clients": clients, **summary(latencies), "statuses": statuses,
            "checks_per_s": round(len(latencies) / wall, 1), "web_cpu_ms_per_check": cpu_ms}


# ---------------------------------------------------------------- log-ins


def login_level(base: str, clients: int, rounds: int, cpu: WebCpu | None = None) -> dict:
    cpu_before = cpu.seconds() if cpu else None
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    for _ in range(rounds):
        barrier = threading.Barrier(clients)

        def run(index: int, barrier: threading.Barrier = barrier) -> None:
            client = Client(base)
            user = LOGIN_USERS[index % len(LOGIN_USERS)]
            barrier.wait()
            started = time.perf_counter()
            status, _, _ = client.call("POST", "/api/v1/token", {"username": user, "password": PASSWORD})
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies.append(elapsed)
                statuses[status] = statuses.get(status, 0) + 1

        threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    cpu_after = cpu.seconds() if cpu else None
    cpu_ms = (round((cpu_after - cpu_before) * 1000 / len(latencies), 1)
              if cpu_before is not None and cpu_after is not None else None)
    return {"clients": clients, "rounds": rounds, **summary(latencies), "statuses": statuses,
            "web_cpu_ms_per_login": cpu_ms}


# ---------------------------------------------------------------- fairness


def _time(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def wait_done(client: Client, job_ids: list, timeout: float) -> dict:
    """The jobs' documents once none is queued or running (or at the timeout)."""
    deadline = time.monotonic() + timeout
    docs: dict = {}
    pending = list(job_ids)
    while pending and time.monotonic() < deadline:
        still = []
        for job_id in pending:
            status, doc, _ = client.call("GET", f"/api/v1/jobs/{job_id}")
            if status == 200 and doc["state"] not in ("queued", "running"):
                docs[job_id] = doc
            else:
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(1.0)
    return docs


def warm_executor(base: str, tokens: dict[str, str]) -> None:
    """A few jobs of each tenant, waited for (not counted): a fresh executor's first jobs
    run several times slower (nothing compiled yet), which would make one job-time
    meaningless, and its start-up would compete with the checks for the CPU."""
    wait_ready(base)
    hanfu = Client(base, tokens["hanfu_owner"])
    tea = Client(base, tokens["tea_owner"])
    warm: dict[int, list] = {id(hanfu): [], id(tea): []}
    for client, merchant, sql in ((hanfu, "hanfu_house", JOB_SQL), (tea, "tea_garden", OTHER_SQL),
                                  (hanfu, "hanfu_house", JOB_SQL), (tea, "tea_garden", OTHER_SQL)):
        status, doc, _ = client.call("POST", "/api/v1/jobs", {"merchant": merchant, "kind": "aggregate",
                                                              "sql": sql.format(n=next_literal() % 500)})
        if status != 201:
            raise SystemExit(f"a warm-up job answered {status}: {doc}")
        warm[id(client)].append(doc["id"])
    # Each tenant waits for its own jobs: another tenant's job reads as missing (404).
    wait_done(hanfu, warm[id(hanfu)], timeout=600)
    wait_done(tea, warm[id(tea)], timeout=600)


def burst(base: str, tokens: dict[str, str], size: int) -> dict:
    hanfu = Client(base, tokens["hanfu_owner"])
    tea = Client(base, tokens["tea_owner"])
    ids, refused = [], 0
    started = time.perf_counter()
    for _ in range(size):
        status, doc, _ = hanfu.call("POST", "/api/v1/jobs", {"merchant": "hanfu_house", "kind": "aggregate",
                                                             "sql": JOB_SQL.format(n=next_literal() % 500)})
        if status == 201:
            ids.append(doc["id"])
        else:
            refused += 1
    burst_s = time.perf_counter() - started
    status, doc, _ = tea.call("POST", "/api/v1/jobs", {"merchant": "tea_garden", "kind": "aggregate",
                                                       "sql": OTHER_SQL.format(n=next_literal() % 500)})
    if status != 201:
        raise SystemExit(f"the other tenant's submission answered {status}: {doc}")
    other_id = doc["id"]
    other = wait_done(tea, [other_id], timeout=900)[other_id]
    done = wait_done(hanfu, ids, timeout=1800)
    runs = [_time(d["finished_at"]) - _time(d["started_at"]) for d in done.values()
            if d.get("started_at") and d.get("finished_at")]
    job_time = statistics.median(runs) if runs else float("nan")
    created, start, finish = (_time(other[k]) for k in ("created_at", "started_at", "finished_at"))
    # The burst's jobs speed up as it goes (the executor compiles the repeated query, the
    # web process is done accepting submissions), so the median is the end's pace. The
    # jobs that ran next to the other's (the two started before it and the two after) give
    # the pace of that moment.
    timed = sorted((_time(d["started_at"]), _time(d["finished_at"]) - _time(d["started_at"]))
                   for d in done.values() if d.get("started_at") and d.get("finished_at"))
    before = [run for at, run in timed if at < start][-2:]
    after = [run for at, run in timed if at >= start][:2]
    nearby = statistics.median(before + after) if before or after else float("nan")
    before_other = sum(1 for d in done.values() if d.get("started_at") and _time(d["started_at"]) < created)
    ahead = sum(1 for d in done.values() if d.get("started_at") and created <= _time(d["started_at"]) < start)
    return {"burst_jobs": len(ids), "refused": refused, "burst_submit_s": round(burst_s, 2),
            "job_time_s": round(job_time, 3), "other_state": other["state"],
            "other_wait_to_start_s": round(start - created, 2),
            "other_wait_to_release_s": round(finish - created, 2),
            "other_release_in_job_times": round((finish - created) / job_time, 2),
            "other_own_run_s": round(finish - start, 3),
            "nearby_job_time_s": round(nearby, 3),
            "other_release_in_nearby_job_times": round((finish - created) / nearby, 2),
            "burst_jobs_started_before_other_submitted": before_other,
            "burst_jobs_started_between": ahead,
            "burst_states": _count(d["state"] for d in done.values())}


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# ---------------------------------------------------------------- server


def start_server(home: Path, port: int, scale: float) -> subprocess.Popen:
    env = {**os.environ, "YUSHAN_HOME": str(home), "YUSHAN_PORT": str(port), "YUSHAN_WORKERS": "1",
           **RAISED_LIMITS}
    exe = Path(sys.executable).with_name("yushan")
    yushan = [str(exe)] if exe.exists() else [sys.executable, "-m", "yushan"]
    subprocess.run([*yushan, "init"], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*yushan, "demo", "--if-missing", "--scale", str(scale)], env=env, check=True)
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is in use: stop what listens there or pass --port")
    proc = subprocess.Popen([*yushan, "serve"], env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("yushan serve exited")
        try:
            status, _, _ = Client(base).call("GET", "/healthz")
            if status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("yushan serve did not answer within 120 s")


def wait_ready(base: str, timeout: float = 300) -> None:
    """Until /readyz says a worker is alive (its executor warm enough to claim) and the web
    process's check warm-up is over (``yushan serve`` runs it at start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, doc, _ = Client(base).call("GET", "/readyz")
        warm = ((doc or {}).get("checks") or {}).get("check_warmup", "off") if isinstance(doc, dict) else "off"
        if status == 200 and not str(warm).startswith("warming"):
            return
        time.sleep(1.0)


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="A running app (default: start one).")
    parser.add_argument("--home", type=Path, default=Path("/tmp/yushan-load"))
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--checks", type=int, default=160, help="Checks per concurrency level.")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--login-clients", type=int, default=20)
    parser.add_argument("--login-rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=40, help="Jobs in the burst (0: skip).")
    parser.add_argument("--json", action="store_true", help="Print one JSON document.")
    args = parser.parse_args()

    proc = None
    if args.url is None:
        proc = start_server(args.home.resolve(), args.port, args.scale)
    base = args.url or f"http://127.0.0.1:{args.port}"
    cpu = WebCpu(proc.pid if proc is not None else None)
    report: dict = {"load_before": load_average()}
    try:
        tokens = {user: login(base, user) for user, _ in ACTORS}
        wait_ready(base)
        if args.burst:
            warm_executor(base, tokens)
        # Not counted: the web process's Spark starts on its first check, and each check
        # session (YUSHAN_CHECK_SESSIONS) is made and its catalog installed on first use.
        report["warm_up"] = [check_level(base, tokens, 1, 8), check_level(base, tokens, 16, 64)]
        report["checks"] = [check_level(base, tokens, int(c), args.checks, cpu) for c in args.levels.split(",")]
        for level in report["checks"]:
            print(f"check  {level['clients']:>2} clients: p50 {level['p50_ms']:7.1f} ms  p99 "
                  f"{level['p99_ms']:7.1f} ms  max {level['max_ms']:7.1f} ms  "
                  f"{level['checks_per_s']:5.1f}/s  web CPU {level['web_cpu_ms_per_check']} ms/check  "
                  f"{level['statuses']}", flush=True)
        report["login"] = login_level(base, args.login_clients, args.login_rounds, cpu)
        lg = report["login"]
        print(f"log-in {lg['clients']:>2} clients: p50 {lg['p50_ms']:7.1f} ms  p99 {lg['p99_ms']:7.1f} ms  "
              f"max {lg['max_ms']:7.1f} ms  web CPU {lg['web_cpu_ms_per_login']} ms/log-in  "
              f"{lg['statuses']}", flush=True)
        if args.burst:
            report["burst"] = burst(base, tokens, args.burst)
            b = report["burst"]
            print(f"burst  {b['burst_jobs']} jobs of hanfu_house, then 1 of tea_garden: job-time "
                  f"{b['job_time_s']} s; the other's job started after {b['other_wait_to_start_s']} s, "
                  f"released after {b['other_wait_to_release_s']} s = "
                  f"{b['other_release_in_job_times']} job-times, "
                  f"{b['other_release_in_nearby_job_times']} of its neighbours' ({b})", flush=True)
        report["load_after"] = load_average()
        print(f"load average before {report['load_before']}, after {report['load_after']}")
        if args.json:
            print(json.dumps(report, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()

"""Executors seen from the worker: start (warm, isolated), run a job under limits, recycle.

An :class:`Executor` is one ``python -m sandbox.executor`` process (and the JVM it starts),
in its own memory cgroup where the OS allows (:mod:`sandbox.cgroup`): the kernel enforces
the memory limit, and a kill for it ends the job as ``MemoryLimitExceeded``, not as a crash.
The :class:`ExecutorPool` keeps ``size`` of them started ahead of demand, hands out an
idle one, and replaces one after ``max_jobs`` jobs or after any fault (limit exceeded,
crash, cancel), so that the next job still finds a warm executor.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.cgroup import MemoryGroup, plan_memory
from sandbox.executor import JobOutcome, config_to_message
from sandbox.limits import Limits, hardened_command, limit_message, process_tree, usage_of
from sandbox.netns import NetworkPlan, wrap_command
from sandbox.protocol import Channel, ChannelClosed
from sandbox.redact import limit_error
from yushan.config import Config

log = logging.getLogger(__name__)

START_TIMEOUT = 180.0  # a cold JVM on a busy two-core machine
TICK = 0.2
PING_TIMEOUT = 10.0  # a healthy executor answers in milliseconds, even warming up
# A job's executor is busy while its processes use this share of one core (a hung JVM
# uses none; polling its progress costs about 1%), measured over ACTIVITY_WINDOW seconds.
ACTIVE_CPU_SHARE = 0.05
ACTIVITY_WINDOW = 5.0
# -XX:+ExitOnOutOfMemoryError's exit status (sandbox.executor.JVM_OOM_EXIT).
JVM_OOM_EXIT = 3


class StopReason(enum.StrEnum):
    """Why the worker stops a job from outside (answer of the ``tick`` callback)."""

    CANCELLED = "cancelled"
    LEASE_LOST = "lease_lost"
    SHUTDOWN = "shutdown"


class ExecutorFault(Exception):
    """The executor died, lost its engine or hung; the job did not finish (not its fault:
    it is retried once on a fresh executor)."""


@dataclass
class RunReport:
    """The executor's answer, or the reason the worker ended the job from outside."""

    message: dict[str, Any] | None = None
    stopped: StopReason | None = None
    faulted: bool = False
    usage: dict[str, float] = field(default_factory=dict)


class Executor:
    def __init__(self, config: Config, network: NetworkPlan):
        self.config = config
        self.network = network
        self.proc: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.jobs_run = 0
        self.started_at = 0.0
        self.ready_seconds = 0.0
        # The executor's processes (itself and its JVM) as last seen: the usage before and
        # after a job is read from these alone, so that finding them is not on a job's path.
        self.members: list[int] = []
        # Its memory cgroup (None: the OS refused one, /proc sampling only).
        self.memory_group: MemoryGroup | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> Executor:
        """Start the process and wait until its SparkSession is up (it warms up while idle)."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        argv = [
            sys.executable, "-m", "sandbox.executor",
            "--read-fd", str(to_child_r), "--write-fd", str(from_child_w),
        ]
        self.started_at = time.monotonic()
        self.memory_group = self._new_memory_group()
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - argv built here: our executor module
                # No core dumps, and into its memory cgroup before it execs.
                wrap_command(self.network, hardened_command(argv, self.memory_group)),
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr.fileno(),
                start_new_session=True,  # its own process group: one kill ends the JVM too
            )
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            self._remove_memory_group()
            raise ExecutorFault(f"the executor did not start ({exc})") from None
        os.close(to_child_r)
        os.close(from_child_w)
        self.channel = Channel(from_child_r, to_child_w)
        try:
            self.channel.send({"type": "init", "config": config_to_message(self.config)})
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                message = self.channel.recv(timeout=1.0)
                if message and message.get("type") == "ready":
                    self.ready_seconds = time.monotonic() - self.started_at
                    self.members = process_tree(self.proc.pid)
                    log.info("executor %s ready in %.1f s", self.pid, self.ready_seconds)
                    return self
                if self.proc.poll() is not None:
                    break
        except ChannelClosed:
            pass
        self.kill()
        raise ExecutorFault("the executor did not start")

    def _new_memory_group(self) -> MemoryGroup | None:
        plan = plan_memory()
        if plan.hierarchy is None:
            return None
        try:
            return MemoryGroup.create(plan.hierarchy, self.config.executor_memory_bytes)
        except OSError as exc:
            log.warning(
                "WARNING: an executor starts WITHOUT a kernel memory limit (%s); sampling only",
                exc.strerror or exc,
            )
            return None

    def _remove_memory_group(self) -> None:
        if self.memory_group is not None and self.memory_group.remove():
            self.memory_group = None

    def _memory_kills(self, exact: bool = False) -> int | None:
        """The group's OOM-kill counter; with ``exact``, None where the kernel only counts
        how often the limit was hit (that alone does not mean a kill)."""
        group = self.memory_group
        if group is None or (exact and not group.counts_kills):
            return None
        return group.oom_kills()

    def _killed_for_memory(self, before: int | None, wait: float = 0.0) -> bool:
        """Did the kernel kill a process of the group for its limit since ``before``?

        The kernel counts a kill just after it sends SIGKILL: where the executor's death was
        seen first, ``wait`` gives the counter a moment.
        """
        if before is None:
            return False
        deadline = time.monotonic() + wait
        while True:
            now = self._memory_kills()
            if now is not None and now > before:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def run(
        self,
        request: dict[str, Any],
        limits: Limits,
        tick: Callable[[float | None], StopReason | None],
        on_start: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    ) -> RunReport:
        """Send a job and wait for its outcome, enforcing wall clock, CPU and memory.

        ``tick(progress)`` is called about every 0.2 s (with new progress, if any); when it
        returns a :class:`StopReason` the executor is killed and the job abandoned.
        ``on_start(decision)`` is asked before a ``dp`` job's enforced run starts, with the
        executor's (allowing) decision: it charges the job's privacy cost and returns None
        (go), or returns the decision that blocks the job instead (no-go). Without it a
        ``dp`` job never runs (it fails: nothing could charge it).
        """
        if self.channel is None or self.proc is None:
            raise ExecutorFault("the executor was not started")
        self.jobs_run += 1
        baseline = usage_of(self.members or process_tree(self.proc.pid))
        started = time.monotonic()
        next_sample = 0.0
        memory_mib = limits.memory_bytes / 2**20
        group = self.memory_group
        kills_before = self._memory_kills()  # before a lower limit: v2 may kill at once
        if group is not None:
            if group.limit != limits.memory_bytes:
                try:
                    group.set_limit(limits.memory_bytes)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:  # v1: it already holds more than this job may use
                        return self._over_limit("MemoryLimitExceeded", memory_mib)
                    log.warning("executor %s: its memory cgroup refused the job's limit (%s)", self.pid, exc)
            group.reset_peak()
        hang_seconds = float(self.config.executor_hang_seconds)
        samples: list[tuple[float, float]] = [(started, baseline.cpu_seconds)]
        last_active = started
        try:
            self.channel.send({"type": "run", **request, "limits": limits.as_dict()})
            while True:
                message = self.channel.recv(timeout=TICK)
                progress = None
                if message and message.get("type") == "result" and message.get("engine_lost"):
                    # The JVM died under the job: out of memory is the job's own doing
                    # (not retried); anything else is the executor's fault.
                    code = message["engine_lost"].get("exit_code")
                    killed = (group is not None and group.counts_kills
                              and self._killed_for_memory(kills_before))
                    if code == JVM_OOM_EXIT or killed:  # the JVM's own OOM, or the kernel's
                        return self._over_limit("MemoryLimitExceeded", memory_mib,
                                                self._usage(baseline, started))
                    self.kill()
                    raise ExecutorFault(f"the executor's engine died during the job (exit {code})")
                if message and message.get("type") == "result":
                    report = RunReport(message=message, usage=self._usage(baseline, started))
                    if group is not None and group.counts_kills and self._killed_for_memory(kills_before):
                        # The JVM was killed and the executor answered with the py4j error.
                        if message.get("outcome") == JobOutcome.FAILED:
                            return self._over_limit("MemoryLimitExceeded", memory_mib, report.usage)
                        log.warning("executor %s: a process was killed for memory during a job", self.pid)
                        report.faulted = True
                    return report
                if message and message.get("type") == "progress":
                    progress = float(message["progress"])
                    last_active = time.monotonic()
                if message and message.get("type") == "charge":
                    # No one to charge it: no-go (a dp job never runs uncharged).
                    blocked = on_start(message.get("decision") or {}) if on_start is not None else None
                    self.channel.send({"type": "verdict", "job_id": message.get("job_id"),
                                       "go": on_start is not None and blocked is None,
                                       "decision": blocked})
                stop = tick(progress)
                if stop is not None:
                    self.kill()
                    return RunReport(stopped=stop, faulted=True)
                now = time.monotonic()
                if now - started > limits.wall_seconds:
                    return self._over_limit("TimeLimitExceeded", limits.wall_seconds)
                if now >= next_sample:
                    next_sample = now + 0.5
                    self.members = process_tree(self.proc.pid)  # a new child counts at once
                    usage = usage_of(self.members)
                    samples.append((now, usage.cpu_seconds))
                    while len(samples) > 2 and now - samples[1][0] >= ACTIVITY_WINDOW:
                        samples.pop(0)
                    span = now - samples[0][0]
                    if span >= ACTIVITY_WINDOW and (usage.cpu_seconds - samples[0][1]) >= ACTIVE_CPU_SHARE * span:
                        last_active = now
                    if now - last_active > hang_seconds:
                        log.warning("executor %s: no progress and no CPU for %.0f s; hung",
                                    self.pid, now - last_active)
                        self.kill()
                        raise ExecutorFault("the executor hung (no progress and no CPU)")
                    if usage.cpu_seconds - baseline.cpu_seconds > limits.cpu_seconds:
                        return self._over_limit("CpuLimitExceeded", limits.cpu_seconds)
                    if usage.rss_bytes > limits.memory_bytes:
                        return self._over_limit("MemoryLimitExceeded", memory_mib)
                if self.proc.poll() is not None:
                    if self._killed_for_memory(kills_before, wait=0.2):
                        return self._over_limit("MemoryLimitExceeded", memory_mib, self._usage(baseline, started))
                    raise ExecutorFault("the executor exited during the job")
        except ChannelClosed:
            if self._killed_for_memory(kills_before, wait=0.2):  # not a crash: not retried
                return self._over_limit("MemoryLimitExceeded", memory_mib, self._usage(baseline, started))
            self.kill()
            raise ExecutorFault("the executor exited during the job") from None

    def _usage(self, baseline, started: float) -> dict[str, float]:
        now = usage_of(self.members) if self.proc else baseline
        usage = {
            "wall_seconds": round(time.monotonic() - started, 3),
            "cpu_seconds": round(now.cpu_seconds - baseline.cpu_seconds, 3),
            "rss_bytes": now.rss_bytes,
        }
        peak = self.memory_group.peak_bytes() if self.memory_group is not None else None
        if peak is not None:  # the kernel's count: the job's peak (v1), the executor's (v2)
            usage["memory_peak_bytes"] = peak
        return usage

    def _over_limit(self, error_class: str, limit: float, usage: dict[str, float] | None = None) -> RunReport:
        self.kill()
        err = limit_error(error_class, limit_message(error_class, limit))
        return RunReport(
            message={"type": "result", "outcome": "failed", "error": err.public(), "detail": err.full_text},
            faulted=True,
            usage=usage or {},
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ping(self, timeout: float = PING_TIMEOUT) -> bool:
        """One round trip to the executor and its JVM: False when either is dead or hung."""
        if not self.alive() or self.channel is None:
            return False
        try:
            self.channel.send({"type": "ping"})
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = self.channel.recv(timeout=TICK)
                if message and message.get("type") == "pong":
                    if not message.get("ok"):
                        log.warning("executor %s: its engine is gone (%s)", self.pid,
                                    message.get("error") or f"exit {message.get('exit_code')}")
                    return bool(message.get("ok"))
                if not self.alive():
                    return False
        except ChannelClosed:
            return False
        log.warning("executor %s: no answer to a ping in %.0f s (hung)", self.pid, timeout)
        return False

    def healthy(self) -> bool:
        """Alive, and nothing of it (its JVM, say) was killed for memory while it was idle."""
        return self.alive() and not self._memory_kills(exact=True)

    def stop(self, grace: float = 10.0) -> None:
        """Ask the executor to finish; kill it if it does not."""
        if not self.alive():
            self.kill()
            return
        try:
            self.channel.send({"type": "stop"})
            self.proc.wait(timeout=grace)
        except (ChannelClosed, subprocess.TimeoutExpired):
            pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the executor and everything it started (the JVM included)."""
        if self.proc is None:
            return
        members = process_tree(self.proc.pid) if self.proc.poll() is None else []
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in members:  # a child that left the process group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.memory_group is not None:
            self.memory_group.kill_members()  # whatever else is still in its cgroup
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self.channel:
            self.channel.close()
            self.channel = None
        self._remove_memory_group()  # once its last process (the JVM) has gone


class ExecutorPool:
    """``size`` warm executors; each is replaced after ``max_jobs`` jobs or any fault."""

    def __init__(self, config: Config, network: NetworkPlan, size: int, max_jobs: int = 50):
        self.config, self.network, self.size, self.max_jobs = config, network, size, max_jobs
        self._idle: queue.Queue[Executor] = queue.Queue()
        self._all: set[Executor] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.started = 0
        self.faults = 0

    def executors(self) -> list[Executor]:
        """The pool's live executors (idle or busy), e.g. to report how fast they started."""
        with self._lock:
            return list(self._all)

    def start(self) -> None:
        for _ in range(self.size):
            self._spawn_async()

    def _spawn_async(self) -> None:
        threading.Thread(target=self._spawn, daemon=True, name="executor-start").start()

    def _spawn(self) -> None:
        while not self._closed.is_set():
            executor = Executor(self.config, self.network)
            with self._lock:
                self._all.add(executor)
            try:
                executor.start()
            except ExecutorFault:
                with self._lock:
                    self._all.discard(executor)
                log.error("an executor failed to start; trying again in 5 s")
                self._closed.wait(5)
                continue
            with self._lock:
                self.started += 1
            if self._closed.is_set():
                executor.stop()
                return
            self._idle.put(executor)
            return

    def acquire(self, timeout: float | None = None) -> Executor | None:
        """An idle warm executor, or None after ``timeout`` seconds (or if the one waiting
        died while idle, e.g. its JVM killed for memory during the warm-up: it is replaced)."""
        try:
            executor = self._idle.get(timeout=timeout)
        except queue.Empty:
            return None
        if not executor.healthy() or not executor.ping():
            log.warning("executor %s died, lost or hung its JVM while idle; replacing it",
                        executor.pid)
            self.note_fault()
            self.release(executor, faulted=True)
            return None
        return executor

    def note_fault(self) -> None:
        """Count an executor found dead or hung outside a job (for /readyz)."""
        with self._lock:
            self.faults += 1

    def health(self) -> dict[str, int]:
        """Executors started, live, idle, and faults seen (for /readyz via the worker)."""
        with self._lock:
            live = sum(1 for e in self._all if e.alive())
        return {"size": self.size, "live": live, "idle": self._idle.qsize(),
                "faults": self.faults, "started": self.started}

    def release(self, executor: Executor, faulted: bool = False) -> None:
        """Return an executor after a job; recycle it after a fault or ``max_jobs`` jobs."""
        if self._closed.is_set():
            executor.stop()
            return
        if faulted or not executor.alive() or executor.jobs_run >= self.max_jobs:
            with self._lock:
                self._all.discard(executor)
            threading.Thread(target=executor.stop, daemon=True).start()
            self._spawn_async()
        else:
            self._idle.put(executor)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            executors = list(self._all)
            self._all.clear()
        for executor in executors:
            executor.stop(grace=5)

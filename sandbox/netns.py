"""Network isolation for executors: a Linux network namespace with loopback only.

``unshare --net`` gives the executor (and the JVM it starts) an empty network namespace;
``ip link set lo up`` brings up its private loopback, which local-mode Spark and py4j need.
Nothing outside the namespace is reachable, not even the host's own 127.0.0.1.

Where the OS refuses (no privilege, no ``unshare``), executors still start, with a
warning in the worker log and a record in the ``settings`` table for the admin page.
A cluster master (``spark://``, ``yarn``, ``k8s://``) must be reachable by the driver, so
there the cluster's own network policy isolates jobs (see docs/operations.md).
"""

from __future__ import annotations

import enum
import functools
import logging
import shutil
import subprocess
from dataclasses import dataclass

from sandbox.spark import is_local_master
from yushan.config import Config

log = logging.getLogger(__name__)

SETTING_KEY = "sandbox.network_isolation"


class NetworkMode(enum.StrEnum):
    ISOLATED = "isolated"  # own namespace, loopback only
    DISABLED = "disabled"  # switched off by YUSHAN_NETWORK_ISOLATION=0
    UNAVAILABLE = "unavailable"  # the OS refused; running without
    CLUSTER = "cluster"  # a cluster master needs the network; its policy isolates


@dataclass(frozen=True)
class NetworkPlan:
    mode: NetworkMode
    reason: str

    @property
    def isolated(self) -> bool:
        return self.mode is NetworkMode.ISOLATED

    def as_setting(self) -> dict[str, str]:
        return {"mode": self.mode.value, "reason": self.reason}


_SETUP = 'ip link set lo up && exec "$@"'


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    """None when a namespace with loopback can be made here; else why not."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not unshare or not ip:
        return "the unshare or ip command is not installed"
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv (a constant script), no shell of ours
            [unshare, "--net", "--", "sh", "-c", _SETUP, "sh", "true"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare could not run ({type(exc).__name__})"
    if done.returncode != 0:
        return "the OS refused a network namespace: " + (done.stderr.strip()[:200] or "no reason given")
    return None


def plan_network(config: Config) -> NetworkPlan:
    """Decide how executors of this installation are isolated from the network."""
    if not config.network_isolation:
        return NetworkPlan(NetworkMode.DISABLED, "YUSHAN_NETWORK_ISOLATION is off")
    if not is_local_master(config.spark_master):
        return NetworkPlan(
            NetworkMode.CLUSTER,
            f"Spark master {config.spark_master.split('://')[0]} needs the network; "
            "isolate jobs with the cluster's network policy",
        )
    refused = _probe()
    if refused:
        return NetworkPlan(NetworkMode.UNAVAILABLE, refused)
    return NetworkPlan(NetworkMode.ISOLATED, "own network namespace, loopback only")


def wrap_command(plan: NetworkPlan, argv: list[str]) -> list[str]:
    """The command line that starts ``argv`` under ``plan``."""
    if not plan.isolated:
        return argv
    return [shutil.which("unshare") or "unshare", "--net", "--", "sh", "-c", _SETUP, "sh", *argv]


def announce(plan: NetworkPlan) -> None:
    """Log the plan; a missing isolation is a visible warning."""
    if plan.mode is NetworkMode.ISOLATED:
        log.info("executors run in their own network namespace (loopback only)")
    else:
        log.warning(
            "WARNING: executors run WITHOUT network isolation (%s): %s",
            plan.mode.value,
            plan.reason,
        )

"""Ephemeral per-job workspaces under ``config.workspaces_dir``, removed afterwards.

A workspace is named ``job-<job id>-<executor pid>-<random>``; an executor's Spark scratch
space is ``executor-<pid>-<random>``. Whatever a crashed executor left behind is swept by
the next worker that starts (or by any worker, once the pid in the name is gone).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path

from sandbox.limits import pid_alive
from yushan.config import Config

_NAME = re.compile(r"^(?:job-\d+|executor)-(\d+)-[0-9a-f]+$")


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=False)
    os.chmod(path, 0o700)
    return path


def create_workspace(config: Config, job_id: int) -> Path:
    base = config.workspaces_dir
    base.mkdir(parents=True, exist_ok=True)
    return _private_dir(base / f"job-{job_id}-{os.getpid()}-{secrets.token_hex(4)}")


def create_executor_dir(config: Config) -> Path:
    base = config.workspaces_dir
    base.mkdir(parents=True, exist_ok=True)
    return _private_dir(base / f"executor-{os.getpid()}-{secrets.token_hex(4)}")


def remove_workspace(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sweep_orphans(config: Config) -> list[str]:
    """Remove workspaces whose executor is gone; return their names."""
    removed: list[str] = []
    base = config.workspaces_dir
    if not base.exists():
        return removed
    for entry in base.iterdir():
        match = _NAME.match(entry.name)
        if match and not pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed

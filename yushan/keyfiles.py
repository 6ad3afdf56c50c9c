"""Key files on disk: who may read them, and making their renames durable.

Used by the master key's store (``sandbox.crypto``), its rotation (``yushan.keys``) and the
audit signing key's rotation (``audit.rotation``): one rule for what "safe" means.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or link in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unsafe_permissions(paths: Iterable[tuple[Path, int]]) -> list[str]:
    """What is wrong with each existing ``(path, required mode)``: owned by another user,
    or readable or writable by group or others. Missing paths are not judged here."""
    uid = os.getuid()
    problems = []
    for path, mode in paths:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if stat.st_uid != uid:
            problems.append(f"{path} belongs to uid {stat.st_uid}, not to this user ({uid})")
        if stat.st_mode & 0o077:
            problems.append(f"{path} is mode {stat.st_mode & 0o777:o} (must be {mode:o})")
    return problems

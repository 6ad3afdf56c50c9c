"""A class-data-sharing archive of the JVM classes a Yushan Spark driver loads.

A fresh driver JVM spends seconds reading, verifying and linking Spark's classes; every
executor pays that at a cold start. Java's AppCDS keeps those classes, already parsed, in
one file the JVM maps at start-up (measured here: SparkSession start 5.6 s -> 3.3 s, the
first query after it 4.7 s -> 4.0 s). The archive belongs to the installation (one Java,
one pyspark), not to a home: it lives in the virtual environment, built once by
``make`` (``python -m sandbox.class_archive``), and is only ever read at run time.

The JVM checks that an archive matches its own build and class path, and ignores one
that does not; the file name also carries a fingerprint of both, so an upgrade simply
leaves the old one unused. ``YUSHAN_CLASS_ARCHIVE=off`` disables it; a path uses that file.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from yushan.config import Config, require_java

# A mismatched or corrupt archive (checksums verified) is ignored without a word on the
# executors' output. A *truncated* one would crash the JVM, so an archive is used only
# when its size is the one recorded beside it when it was built.
_QUIET = "-Xshare:auto -XX:+VerifySharedSpaces -Xlog:cds=off -Xlog:cds+dynamic=off"


def fingerprint() -> str:
    """Identifies the Java build and the Spark class path an archive was made from."""
    import pyspark

    java = Path(os.path.realpath(require_java()))
    jars = Path(pyspark.__file__).parent / "jars"
    parts = [str(java), str(java.stat().st_size), str(int(java.stat().st_mtime)), pyspark.__version__,
             *sorted(p.name for p in jars.glob("*.jar"))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def archive_path(config: Config) -> Path | None:
    """Where the archive is (or would be); None when disabled (``YUSHAN_CLASS_ARCHIVE``)."""
    setting = config.class_archive
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    if setting:
        return Path(setting)
    return Path(sys.prefix) / "share" / "yushan" / f"spark-classes-{fingerprint()}.jsa"


def java_options(config: Config) -> str | None:
    """Driver JVM options that use the archive, when there is one."""
    try:
        path = archive_path(config)
    except Exception:  # noqa: BLE001 - no Java yet: the session factory says so itself
        return None
    if path is None or not _complete(path):
        return None
    return f"-XX:SharedArchiveFile={path} {_QUIET}"


def _size_record(path: Path) -> Path:
    return path.with_name(path.name + ".size")


def _complete(path: Path) -> bool:
    try:
        return int(_size_record(path).read_text().strip()) == path.stat().st_size
    except (OSError, ValueError):
        return False


def build(config: Config, force: bool = False, echo=print) -> Path | None:
    """Create the archive by a training run in a child process; returns its path."""
    path = archive_path(config)
    if path is None:
        echo("class archive disabled (YUSHAN_CLASS_ARCHIVE=off)")
        return None
    if _complete(path) and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    echo(f"building the Spark class archive {path.name} (once per installation, about 30 s)")
    started = time.monotonic()
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed module, our own path
        [sys.executable, "-m", "sandbox.warmup", "--train-class-archive", str(partial)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
    )
    if result.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = (result.stderr or "").strip().splitlines()[-3:]
        echo("the class archive could not be built; Spark starts without it: " + " | ".join(tail))
        return None
    os.chmod(partial, 0o444)
    size = partial.stat().st_size
    _size_record(path).unlink(missing_ok=True)  # no reader trusts the old file meanwhile
    partial.replace(path)
    record = path.with_name(path.name + ".size.partial")
    record.write_text(f"{size}\n")
    record.replace(_size_record(path))  # last: only now is the archive used
    echo(f"class archive ready in {time.monotonic() - started:.0f} s")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.class_archive",
                                     description="Build the Spark class archive if missing.")
    parser.add_argument("--force", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args(argv)
    build(Config.from_env(), force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Spark class archive: used only when whole, never able to stop a driver starting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox import class_archive
from sandbox.spark import session_conf


def _archive(tmp_path: Path, data: bytes, recorded: int | None) -> Path:
    path = tmp_path / "classes.jsa"
    path.write_bytes(data)
    if recorded is not None:
        path.with_name(path.name + ".size").write_text(f"{recorded}\n")
    return path


@pytest.mark.parametrize(
    ("recorded", "used"),
    [
        (4096, True),  # whole: the size recorded when it was built
        (8192, False),  # truncated since (a truncated archive would crash the JVM)
        (None, False),  # still being built, or built by something else
    ],
)
def test_an_archive_is_used_only_when_it_is_whole(tmp_path, make_config, recorded, used):
    path = _archive(tmp_path, b"\0" * 4096, recorded)
    options = class_archive.java_options(make_config(class_archive=str(path)))
    assert (options is not None) is used
    if used:
        assert f"-XX:SharedArchiveFile={path}" in options
        assert "-XX:+VerifySharedSpaces" in options  # a corrupt one is ignored, not loaded


def test_the_archive_can_be_switched_off(monkeypatch, make_config):
    monkeypatch.setenv("YUSHAN_CLASS_ARCHIVE", "off")
    config = make_config()
    assert class_archive.archive_path(config) is None
    assert class_archive.java_options(config) is None
    assert "spark.driver.extraJavaOptions" not in session_conf(config, "t")


def test_every_session_gets_the_archive_unless_the_caller_sets_its_own_options(tmp_path, make_config):
    path = _archive(tmp_path, b"\0" * 100, 100)
    config = make_config(class_archive=str(path))
    assert str(path) in session_conf(config, "t")["spark.driver.extraJavaOptions"]
    own = session_conf(config, "t", {"spark.driver.extraJavaOptions": "-Dx=1"})
    assert own["spark.driver.extraJavaOptions"] == "-Dx=1"


def test_the_default_archive_belongs_to_this_java_and_pyspark(make_config):
    path = class_archive.archive_path(make_config(class_archive=""))
    assert path.parent == Path(sys.prefix) / "share" / "yushan"
    assert class_archive.fingerprint() in path.name


@pytest.mark.spark
def test_a_corrupt_archive_is_ignored_and_spark_starts(tmp_path, make_config):
    real = class_archive.archive_path(make_config(class_archive=""))
    if real is None or not class_archive._complete(real):
        pytest.skip("no class archive in this installation (`make archive` builds it)")
    data = bytearray(real.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = b"\x55" * 4096  # damage inside a mapped region
    corrupt = _archive(tmp_path, bytes(data), len(data))
    config = make_config()
    script = (
        "from yushan.config import Config\n"
        "from sandbox.spark import get_spark\n"
        f"config = Config.from_env(home={str(config.home)!r}, database_url='sqlite://', spark_master='local[1]')\n"
        "print('rows', get_spark(config, 't').range(3).count())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "YUSHAN_CLASS_ARCHIVE": str(corrupt)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rows 3" in result.stdout
    assert "A fatal error" not in result.stdout + result.stderr

"""Configuration: defaults, environment, and clear errors for bad settings."""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from yushan.cli import initialise, main
from yushan.config import Config, ConfigError, require_java


def test_defaults_live_under_the_home(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("YUSHAN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("YUSHAN_HOME", str(tmp_path / "h"))
    config = Config.from_env()
    assert config.home == (tmp_path / "h").resolve()
    assert config.database_url == f"sqlite:///{config.home / 'yushan.db'}"
    assert config.spark_master == "local[*]"
    assert config.port == 8000
    assert config.platform_warehouse_dir == config.home / "warehouse" / "platform"


def test_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("YUSHAN_HOME", str(tmp_path))
    monkeypatch.setenv("YUSHAN_PORT", "8765")
    monkeypatch.setenv("YUSHAN_SPARK_MASTER", "spark://127.0.0.1:7077")
    monkeypatch.setenv("YUSHAN_DATABASE_URL", "postgresql://u@db:5432/yushan")
    monkeypatch.setenv("YUSHAN_DEMO_MODE", "off")
    config = Config.from_env()
    assert config.port == 8765
    assert config.spark_master == "spark://127.0.0.1:7077"
    # Plain postgresql:// URLs are mapped onto the driver that is installed (psycopg 3).
    assert config.database_url == "postgresql+psycopg://u@db:5432/yushan"
    assert config.demo_mode is False


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("YUSHAN_PORT", "eighty", "YUSHAN_PORT='eighty' is not a whole number"),
        ("YUSHAN_PORT", "70000", "not a TCP port"),
        ("YUSHAN_DEMO_MODE", "maybe", "YUSHAN_DEMO_MODE='maybe' is not a boolean"),
        ("YUSHAN_DATABASE_URL", "yushan.db", "is not a database URL"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path, monkeypatch, name, value, fragment):
    monkeypatch.setenv("YUSHAN_HOME", str(tmp_path))
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Config.from_env()
    assert fragment in str(info.value)


def test_home_under_a_file_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(main, ["--home", str(blocker / "home"), "init"])
    assert result.exit_code == 1
    assert "YUSHAN_HOME=" in result.output and "cannot be created" in result.output


def test_bad_database_url_is_reported(tmp_path):
    env = {"YUSHAN_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}
    result = CliRunner().invoke(main, ["--home", str(tmp_path / "h"), "init"], env=env)
    assert result.exit_code == 1
    assert "cannot connect to the database in YUSHAN_DATABASE_URL" in result.output


def test_missing_java_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="Java is not installed.*openjdk-17"):
        require_java()


def test_init_creates_owner_only_keys(make_config):
    config = make_config()
    initialise(config)
    for key in (config.secret_key_path, config.master_key_path):
        mode = stat.S_IMODE(key.stat().st_mode)
        assert mode == 0o600, f"{key.name} has mode {oct(mode)}"
        assert len(key.read_bytes()) == 32
    assert stat.S_IMODE(config.keys_dir.stat().st_mode) == 0o700
    before = config.master_key_path.read_bytes()
    initialise(config)  # idempotent: never replaces an existing key
    assert config.master_key_path.read_bytes() == before

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


# --- the driver's address and the operator's Spark settings (YUSHAN_SPARK_CONF) -----------


def _conf_file(tmp_path, text: str):
    path = tmp_path / "spark.conf"
    path.write_text(text)
    return path


def _from_env_with(monkeypatch, tmp_path, **variables) -> Config:
    monkeypatch.setenv("YUSHAN_HOME", str(tmp_path / "home"))
    for name in ("YUSHAN_SPARK_CONF", "YUSHAN_SPARK_DRIVER_HOST", "YUSHAN_SPARK_DRIVER_BIND_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, str(value))
    return Config.from_env()


def test_the_driver_address_defaults_to_loopback_and_follows_the_environment(tmp_path, monkeypatch):
    config = _from_env_with(monkeypatch, tmp_path)
    assert (config.spark_driver_host, config.spark_driver_bind_address) == ("127.0.0.1", "")
    assert config.spark_conf == {} and config.spark_conf_file == ""
    config = _from_env_with(monkeypatch, tmp_path, YUSHAN_SPARK_DRIVER_HOST="worker-1.internal",
                            YUSHAN_SPARK_DRIVER_BIND_ADDRESS="10.0.0.7")
    assert (config.spark_driver_host, config.spark_driver_bind_address) == ("worker-1.internal", "10.0.0.7")


@pytest.mark.parametrize("value", ["10.0.0.7:7078", "spark://10.0.0.7", "two words", "-x"])
def test_a_driver_address_that_is_not_an_address_names_the_setting(tmp_path, monkeypatch, value):
    with pytest.raises(ConfigError, match=r"YUSHAN_SPARK_DRIVER_HOST=.* is not a host name or IP address"):
        _from_env_with(monkeypatch, tmp_path, YUSHAN_SPARK_DRIVER_HOST=value)


def test_an_operator_file_of_spark_settings_is_read(tmp_path, monkeypatch):
    path = _conf_file(tmp_path, (
        "# a comment, then a blank line\n"
        "\n"
        "spark.yarn.queue   cleanroom\n"
        "spark.authenticate=true\n"
        "  spark.network.crypto.enabled = true  \n"
        "spark.driver.defaultJavaOptions -Dsun.net.inetaddr.ttl=30 -Dx=a=b\n"
        "spark.kubernetes.driver.label.app.kubernetes.io/name yushan\n"
        "    # an indented comment\n"
    ))
    config = _from_env_with(monkeypatch, tmp_path, YUSHAN_SPARK_CONF=path)
    assert config.spark_conf_file == str(path.resolve())
    assert config.spark_conf == {
        "spark.yarn.queue": "cleanroom",
        "spark.authenticate": "true",
        "spark.network.crypto.enabled": "true",
        "spark.driver.defaultJavaOptions": "-Dsun.net.inetaddr.ttl=30 -Dx=a=b",
        "spark.kubernetes.driver.label.app.kubernetes.io/name": "yushan",
    }
    # A secret in the file is not shown when the configuration is printed.
    _conf_file(tmp_path, "spark.authenticate.secret s3cr3t-value\n")
    assert "s3cr3t-value" not in repr(_from_env_with(monkeypatch, tmp_path, YUSHAN_SPARK_CONF=path))


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("spark.yarn.queue\n", 1, "spark.yarn.queue has no value"),
        ("# queue\nspark.yarn.queue =\n", 2, "spark.yarn.queue has no value"),
        ("\n= cleanroom\n", 2, "not a setting"),
        ("cleanroom\n", 1, "not a setting"),
        ("spark.yarn.queue a\nyarn.queue b\n", 2, "'yarn.queue' is not a Spark setting"),
        ("SPARK.yarn.queue b\n", 1, "is not a Spark setting"),
        ("spark.yarn.queue: cleanroom\n", 1, "the key spark.yarn.queue... has a character other"),
        ("spark.yarn.queue:cleanroom\n", 1, "the key spark.yarn.queue... has a character other"),
        ("spark.executorEnv.A 1 \\\n", 1, "continuation lines"),
        ("spark.yarn.queue a\n\nspark.yarn.queue b\n", 3, "already set on line 1"),
    ],
)
def test_a_bad_line_names_the_file_and_line(tmp_path, monkeypatch, text, line, fragment):
    path = _conf_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        _from_env_with(monkeypatch, tmp_path, YUSHAN_SPARK_CONF=path)
    message = str(info.value)
    assert message.startswith(f"YUSHAN_SPARK_CONF={path.resolve()}, line {line}: ")
    assert fragment in message
    assert "cleanroom" not in message  # values are never quoted: one may be a secret
    # ... and says how to fix it.
    assert any(fix in message for fix in ("write one", "fix the key", "one line", "keep one"))


def _refused_keys() -> list[str]:
    from yushan.spark_settings import HARDENED_CONF, OWN_SETTINGS

    return sorted({*HARDENED_CONF, *OWN_SETTINGS})


@pytest.mark.parametrize("key", _refused_keys())
def test_an_operator_file_may_not_set_a_hardened_or_yushan_setting(tmp_path, monkeypatch, key):
    path = _conf_file(tmp_path, f"spark.yarn.queue cleanroom\n{key} anything\n")
    with pytest.raises(ConfigError) as info:
        _from_env_with(monkeypatch, tmp_path, YUSHAN_SPARK_CONF=path)
    assert f", line 2: {key} may not be set here: " in str(info.value)
    assert str(info.value).endswith("remove the line")


def test_a_hardened_key_is_refused_with_a_reason_and_a_driver_key_names_its_variable(tmp_path, monkeypatch):
    path = _conf_file(tmp_path, "spark.sql.runSQLOnFiles true\n")
    with pytest.raises(ConfigError, match="hardened sandbox setting"):
        _from_env_with(monkeypatch, tmp_path, YUSHAN_SPARK_CONF=path)
    path = _conf_file(tmp_path, "spark.driver.host 10.0.0.7\n")
    with pytest.raises(ConfigError, match="set YUSHAN_SPARK_DRIVER_HOST instead"):
        _from_env_with(monkeypatch, tmp_path, YUSHAN_SPARK_CONF=path)


@pytest.mark.parametrize("kind", ["missing", "directory", "not utf-8"])
def test_an_unreadable_operator_file_is_reported(tmp_path, monkeypatch, kind):
    path = tmp_path / "spark.conf"
    if kind == "directory":
        path.mkdir()
    elif kind == "not utf-8":
        path.write_bytes(b"spark.yarn.queue \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        _from_env_with(monkeypatch, tmp_path, YUSHAN_SPARK_CONF=path)
    message = str(info.value)
    assert message.startswith(f"YUSHAN_SPARK_CONF={path.resolve()} cannot be read (")
    assert "point YUSHAN_SPARK_CONF at a readable" in message

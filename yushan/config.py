"""The one configuration object, read from the environment.

Every setting has a documented default (see README "Configuration"). Nothing else in the
code base reads ``os.environ`` for Yushan settings: ask :func:`get_config` instead.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(Exception):
    """A setting is missing or wrong; the message names the setting and how to fix it."""


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} is below the minimum of {minimum}")
    return value


@dataclass(frozen=True)
class Config:
    """Settings of one Yushan installation (one ``YUSHAN_HOME``)."""

    home: Path
    database_url: str
    spark_master: str = "local[*]"
    host: str = "127.0.0.1"
    port: int = 8000
    demo_mode: bool = True
    spark_ui: bool = False
    spark_shuffle_partitions: int = 8
    spark_driver_memory: str = "2g"
    workers: int = 1
    executor_pool: int = 1
    max_upload_bytes: int = 2 * 1024**3
    token_ttl_seconds: int = 12 * 3600
    job_lease_seconds: int = 30
    job_timeout_seconds: int = 900
    max_output_rows: int = 1_000_000
    max_output_bytes: int = 512 * 1024**2
    executor_memory_bytes: int = 6 * 1024**3
    network_isolation: bool = True
    # "" = this installation's Spark class archive, "off" = none, else the archive's path
    class_archive: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    # Paths below the home; one place so that nothing hard-codes a layout.
    @property
    def warehouse_dir(self) -> Path:
        return self.home / "warehouse"

    @property
    def platform_warehouse_dir(self) -> Path:
        return self.warehouse_dir / "platform"

    @property
    def merchant_data_dir(self) -> Path:
        """Encrypted merchant uploads: ``datasets/<merchant>/<dataset id>/``."""
        return self.home / "datasets"

    @property
    def outputs_dir(self) -> Path:
        """Encrypted job outputs: ``outputs/<job id>/``."""
        return self.home / "outputs"

    @property
    def workspaces_dir(self) -> Path:
        """Ephemeral per-job sandboxes; swept on worker start."""
        return self.home / "work"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def secret_key_path(self) -> Path:
        return self.keys_dir / "secret.key"

    @property
    def master_key_path(self) -> Path:
        return self.keys_dir / "master.key"

    @property
    def audit_signing_key_path(self) -> Path:
        return self.keys_dir / "audit-signing.key"

    @property
    def audit_head_path(self) -> Path:
        """Signed head of the audit chain, kept outside the database."""
        return self.home / "audit-head.json"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, **overrides) -> Config:
        """Build the configuration from ``YUSHAN_*`` variables (and keyword overrides)."""
        home = Path(overrides.pop("home", None) or os.environ.get("YUSHAN_HOME") or "./var")
        home = home.expanduser().resolve()
        database_url = overrides.pop("database_url", None) or os.environ.get(
            "YUSHAN_DATABASE_URL"
        ) or f"sqlite:///{home / 'yushan.db'}"
        if "://" not in database_url:
            raise ConfigError(
                f"YUSHAN_DATABASE_URL={database_url!r} is not a database URL; expected e.g. "
                "sqlite:////path/yushan.db or postgresql+psycopg://user@host:5432/db"
            )
        if database_url.startswith("postgresql://"):
            # SQLAlchemy's default PostgreSQL driver is psycopg2; we ship psycopg 3.
            database_url = "postgresql+psycopg://" + database_url[len("postgresql://"):]
        port = _env_int("YUSHAN_PORT", 8000, minimum=1)
        if port > 65535:
            raise ConfigError(f"YUSHAN_PORT={port} is not a TCP port (1-65535)")
        values = dict(
            home=home,
            database_url=database_url,
            spark_master=os.environ.get("YUSHAN_SPARK_MASTER") or "local[*]",
            host=os.environ.get("YUSHAN_HOST") or "127.0.0.1",
            port=port,
            demo_mode=_env_bool("YUSHAN_DEMO_MODE", True),
            spark_ui=_env_bool("YUSHAN_SPARK_UI", False),
            spark_shuffle_partitions=_env_int("YUSHAN_SHUFFLE_PARTITIONS", 8, minimum=1),
            spark_driver_memory=os.environ.get("YUSHAN_SPARK_DRIVER_MEMORY") or "2g",
            workers=_env_int("YUSHAN_WORKERS", 1, minimum=0),
            executor_pool=_env_int("YUSHAN_EXECUTOR_POOL", 1, minimum=1),
            max_upload_bytes=_env_int("YUSHAN_MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1),
            token_ttl_seconds=_env_int("YUSHAN_TOKEN_TTL", 12 * 3600, minimum=60),
            job_lease_seconds=_env_int("YUSHAN_JOB_LEASE_SECONDS", 30, minimum=5),
            job_timeout_seconds=_env_int("YUSHAN_JOB_TIMEOUT", 900, minimum=1),
            max_output_rows=_env_int("YUSHAN_MAX_OUTPUT_ROWS", 1_000_000, minimum=1),
            max_output_bytes=_env_int("YUSHAN_MAX_OUTPUT_BYTES", 512 * 1024**2, minimum=1),
            executor_memory_bytes=_env_int(
                "YUSHAN_EXECUTOR_MEMORY_BYTES", 6 * 1024**3, minimum=256 * 1024**2
            ),
            network_isolation=_env_bool("YUSHAN_NETWORK_ISOLATION", True),
            class_archive=(os.environ.get("YUSHAN_CLASS_ARCHIVE") or "").strip(),
        )
        values.update(overrides)
        return cls(**values)

    def check_home_writable(self) -> None:
        """Fail with a clear message when the home cannot be created or written."""
        try:
            self.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"YUSHAN_HOME={self.home} cannot be created ({exc.strerror}); "
                "point YUSHAN_HOME at a writable directory"
            ) from None
        if not os.access(self.home, os.W_OK | os.X_OK):
            raise ConfigError(
                f"YUSHAN_HOME={self.home} is not writable by this user; "
                "point YUSHAN_HOME at a writable directory"
            )


def require_java() -> str:
    """Return the path of ``java``, or raise a ConfigError saying how to install it."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise ConfigError(
            "Java is not installed, and Spark needs it: install Java 17 "
            "(`apt-get install openjdk-17-jre-headless`, or run `make run`, which does) "
            "or set JAVA_HOME"
        )
    return found


_config: Config | None = None


def get_config() -> Config:
    """The process-wide configuration (read once from the environment)."""
    global _config
    if _config is None:
        _config = Config.from_env()
    return _config


def set_config(config: Config | None) -> None:
    """Replace the process-wide configuration (tests, CLI ``--home``)."""
    global _config
    _config = config

"""The one configuration object, read from the environment.

Every setting has a documented default (see README "Configuration"). Nothing else in the
code base reads ``os.environ`` for Yushan settings: ask :func:`get_config` instead.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from yushan.spark_settings import operator_refusal


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


def _env_float(name: str, default: float, *, below: float | None = None) -> float:
    """A positive finite number from the environment (below ``below`` when given)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={raw!r} must be a positive finite number")
    if below is not None and value >= below:
        raise ConfigError(f"{name}={raw!r} must be below {below:g}")
    return value

RATE_LIMITS_OFF = ("", "0", "off", "none")


def _env_rate_limit(name: str, default: str) -> str:
    """A request rate limit in Flask-Limiter's notation (``60/minute``, ``10 per second;
    300/hour``), or ``off``; returned in the form given ("" = no limit)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in RATE_LIMITS_OFF:
        return ""
    from limits import parse_many

    try:
        items = parse_many(raw.strip())
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a rate limit; write e.g. 60/minute, 10 per second, or "
            "several separated by ';' (10/second;300/hour), or off"
        ) from None
    if any(item.amount < 1 for item in items):
        raise ConfigError(f"{name}={raw!r}: each limit allows at least 1 request (or write off)")
    return raw.strip()


_STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster", "memcached",
                    "mongodb", "mongodb+srv", "valkey", "valkeys", "valkey+sentinel", "valkey+cluster")


def _env_limit_storage(name: str) -> str:
    """Where request counts are kept: ``memory://`` (this process) or a shared store's URI."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return "memory://"
    scheme, sep, _ = raw.partition("://")
    if not sep or scheme.lower() not in _STORAGE_SCHEMES:
        raise ConfigError(
            f"{name}: the value is not a storage URI the rate limiter knows; write memory:// "
            "(each process counts alone) or a store shared by every web process, e.g. "
            "redis://host:6379 or memcached://host:11211"
        )  # the value itself is not quoted: a URI may hold a password
    return raw


def _env_optional_bool(name: str) -> bool | None:
    """A boolean, or None when unset (the code then decides)."""
    if (os.environ.get(name) or "").strip() == "":
        return None
    return _env_bool(name, False)


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices`` (case-insensitive), or ``default`` when unset."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name}={raw!r} is not one of: {', '.join(choices)}")


_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")


def _env_token(name: str) -> str:
    """A bearer token an operator chose: 16-256 characters of a token's alphabet."""
    raw = (os.environ.get(name) or "").strip()
    if raw and not _TOKEN.fullmatch(raw):
        # The value is a secret: the message never quotes it.
        raise ConfigError(f"{name} must be 16 to 256 letters, digits or . _ ~ + / = - "
                          "(e.g. the output of `openssl rand -hex 32`)")
    return raw


def _env_proxy(name: str) -> str:
    """``*`` or one IP address of the reverse proxy in front of the web app."""
    raw = (os.environ.get(name) or "").strip()
    if raw in ("", "*"):
        return raw
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not an IP address; give the address the reverse proxy "
            "connects from (e.g. 127.0.0.1), or * to believe any peer's forwarded headers"
        ) from None
    return raw


_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def _env_address(name: str, default: str) -> str:
    """A host name or IP address (no scheme, no port) from the environment."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        ipaddress.ip_address(raw)
        return raw
    except ValueError:
        pass
    if _HOST_NAME.fullmatch(raw):
        return raw
    raise ConfigError(
        f"{name}={raw!r} is not a host name or IP address; give the bare address the cluster "
        "reaches this worker at, e.g. 10.0.0.7 or worker-1.internal (no scheme; a fixed port "
        "is spark.driver.port in YUSHAN_SPARK_CONF)"
    )


# One setting per line, as in Spark's spark-defaults.conf: `key value` or `key=value`.
_CONF_LINE = re.compile(r"(?P<key>[^\s=]+)(?:\s*=\s*|\s+)(?P<value>.*)")
_CONF_KEY = re.compile(r"spark\.[A-Za-z0-9_./-]+")
_CONF_FORM = "write one `spark.some.key value` or `spark.some.key=value` per line"


def read_spark_conf(path: Path) -> dict[str, str]:
    """The operator's extra Spark settings (``YUSHAN_SPARK_CONF``), checked line by line.

    The format is spark-defaults.conf's common subset: ``key value`` or ``key=value``, ``#``
    comment lines, blank lines; values are taken as written (no escapes, no continuation
    lines). A key Yushan sets itself (the hardened settings, the driver's address, the
    master, ...) is refused rather than ignored: the hardened settings win anyway, and the
    others have their own ``YUSHAN_*`` variable or are the sandbox's own.
    """
    name = f"YUSHAN_SPARK_CONF={path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{name} cannot be read ({reason}); point YUSHAN_SPARK_CONF at a readable UTF-8 "
            f"file of Spark settings ({_CONF_FORM}), or unset it"
        ) from None
    settings: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name}, line {number}"
        if line.endswith("\\"):
            raise ConfigError(f"{where}: continuation lines (ending in \\) are not supported; "
                              "put the whole setting on one line")
        # Messages quote keys, never values (a value may be spark.authenticate.secret).
        found = _CONF_LINE.fullmatch(line)  # fails only for "=..." and a lone word
        key = found["key"] if found else ("" if line.startswith("=") else line)
        value = found["value"].strip() if found else ""
        if not key or not (found or key.startswith("spark.")):
            raise ConfigError(f"{where}: not a setting; {_CONF_FORM}")
        if not key.startswith("spark."):
            raise ConfigError(f"{where}: {key!r} is not a Spark setting (keys start with "
                              "'spark.'); fix the key or remove the line")
        if not _CONF_KEY.fullmatch(key):
            start = (_CONF_KEY.match(key) or re.match(r"spark\.", key)).group()
            raise ConfigError(f"{where}: the key {start}... has a character other than letters, "
                              f"digits and . _ - / (a ':' separator is not supported); {_CONF_FORM}")
        if not value:
            raise ConfigError(f"{where}: {key} has no value; {_CONF_FORM}")
        refused = operator_refusal(key)
        if refused:
            raise ConfigError(f"{where}: {key} may not be set here: {refused}; remove the line")
        if key in settings:
            raise ConfigError(f"{where}: {key} is already set on line {first_seen[key]}; "
                              "keep one of the two lines")
        settings[key] = value
        first_seen[key] = number
    return settings


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
    # Job submissions per merchant in any 60 minutes (YUSHAN_JOB_RATE_LIMIT; 0 = no limit).
    # Policy P8 limits jobs that read consumer data; what a job reads is only known once it
    # is checked, so every submission counts (stricter than the contract; docs/outcomes.md).
    job_rate_limit: int = 240
    # Jobs a merchant may have queued or running at once (YUSHAN_QUEUE_QUOTA; 0 = no quota):
    # one more submission is refused with 429 queue_full (jobs/quota.py).
    queue_quota: int = 100
    # Requests per user (its API token or page log-in) to checks and submissions, and
    # log-in attempts per client address (web/limits.py), in Flask-Limiter's notation;
    # "" = no limit. Counted in rate_limit_storage: memory:// counts in this process only.
    rate_limit_check: str = "60/minute"
    rate_limit_submit: str = "60/minute"
    rate_limit_login: str = "30/minute"
    rate_limit_storage: str = field(default="memory://", repr=False)
    # Spark sessions for dry-run checks in this process, each with its own catalog
    # (sandbox/check_sessions.py): as many checks run at once.
    check_sessions: int = 4
    # Synthetic checks `yushan serve` runs in the background when it starts, so that the
    # first users' checks find the JVM started and its analyser compiled (0 = none;
    # sandbox/check_warmup.py).
    check_warmup: int = 1500
    network_isolation: bool = True
    # The privacy budget (epsilon, delta) per calendar month of a merchant that has none of
    # its own yet (policy D5); the admin raises or lowers a merchant's budget.
    dp_default_epsilon: float = 10.0
    dp_default_delta: float = 1e-6
    # "" = this installation's Spark class archive, "off" = none, else the archive's path
    class_archive: str = ""
    # Where the Spark driver (each executor process) listens and what it advertises, for a
    # cluster master only: a local master's driver stays on 127.0.0.1 (sandbox/spark.py).
    spark_driver_host: str = "127.0.0.1"
    spark_driver_bind_address: str = ""  # "" = the same as spark_driver_host
    # The operator's extra Spark settings (YUSHAN_SPARK_CONF), already checked; may hold
    # spark.authenticate.secret, hence kept out of repr.
    spark_conf_file: str = ""
    spark_conf: dict[str, str] = field(default_factory=dict, repr=False)
    # Session cookies Secure-only: None = unless served on loopback (web/app.py).
    cookie_secure: bool | None = None
    # The reverse proxy whose X-Forwarded-* headers are believed ("" = none): waitress's
    # trusted_proxy (an address, or "*" for any peer).
    trusted_proxy: str = ""
    trusted_proxy_count: int = 1
    # CPU seconds one job may use; 0 = twice the wall-clock limit (both cores all along).
    job_cpu_seconds: int = 0
    # An executor whose JVM shows no progress and no CPU for this long is hung (replaced).
    executor_hang_seconds: int = 120
    # /readyz: a worker heartbeat at most this old; the oldest queued job at most this old.
    ready_heartbeat_seconds: int = 60
    ready_queue_seconds: int = 600
    # Log lines: "text" or "json" (YUSHAN_LOG_FORMAT), at this level (YUSHAN_LOG_LEVEL).
    log_format: str = "text"
    log_level: str = "WARNING"
    # GET /metrics from anywhere with this bearer token; unset: loopback peers only (and
    # admins' API tokens either way). A secret, hence kept out of repr.
    metrics_token: str = field(default="", repr=False)
    # Overrides that no environment variable sets (tests: onboarding's max_line_bytes).
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
            job_rate_limit=_env_int("YUSHAN_JOB_RATE_LIMIT", 240, minimum=0),
            queue_quota=_env_int("YUSHAN_QUEUE_QUOTA", 100, minimum=0),
            rate_limit_check=_env_rate_limit("YUSHAN_RATE_LIMIT_CHECK", "60/minute"),
            rate_limit_submit=_env_rate_limit("YUSHAN_RATE_LIMIT_SUBMIT", "60/minute"),
            rate_limit_login=_env_rate_limit("YUSHAN_RATE_LIMIT_LOGIN", "30/minute"),
            rate_limit_storage=_env_limit_storage("YUSHAN_RATE_LIMIT_STORAGE"),
            check_sessions=_env_int("YUSHAN_CHECK_SESSIONS", 4, minimum=1),
            check_warmup=_env_int("YUSHAN_CHECK_WARMUP", 1500, minimum=0),
            network_isolation=_env_bool("YUSHAN_NETWORK_ISOLATION", True),
            dp_default_epsilon=_env_float("YUSHAN_DP_EPSILON", 10.0),
            dp_default_delta=_env_float("YUSHAN_DP_DELTA", 1e-6, below=1.0),
            class_archive=(os.environ.get("YUSHAN_CLASS_ARCHIVE") or "").strip(),
            spark_driver_host=_env_address("YUSHAN_SPARK_DRIVER_HOST", "127.0.0.1"),
            spark_driver_bind_address=_env_address("YUSHAN_SPARK_DRIVER_BIND_ADDRESS", ""),
            cookie_secure=_env_optional_bool("YUSHAN_COOKIE_SECURE"),
            trusted_proxy=_env_proxy("YUSHAN_TRUSTED_PROXY"),
            trusted_proxy_count=_env_int("YUSHAN_TRUSTED_PROXY_COUNT", 1, minimum=1),
            job_cpu_seconds=_env_int("YUSHAN_JOB_CPU_SECONDS", 0, minimum=0),
            executor_hang_seconds=_env_int("YUSHAN_EXECUTOR_HANG_SECONDS", 120, minimum=5),
            ready_heartbeat_seconds=_env_int("YUSHAN_READY_HEARTBEAT_SECONDS", 60, minimum=5),
            ready_queue_seconds=_env_int("YUSHAN_READY_QUEUE_SECONDS", 600, minimum=1),
            log_format=_env_choice("YUSHAN_LOG_FORMAT", ("text", "json"), "text"),
            log_level=_env_choice("YUSHAN_LOG_LEVEL",
                                  ("DEBUG", "INFO", "WARNING", "ERROR"), "WARNING"),
            metrics_token=_env_token("YUSHAN_METRICS_TOKEN"),
        )
        if "spark_conf" not in overrides:
            conf_file = (os.environ.get("YUSHAN_SPARK_CONF") or "").strip()
            if conf_file:
                path = Path(conf_file).expanduser().resolve()
                values.update(spark_conf_file=str(path), spark_conf=read_spark_conf(path))
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

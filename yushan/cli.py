"""The ``yushan`` command line: an operator's tool acting on one ``YUSHAN_HOME``.

Exit codes: 0 ok, 1 anything else, 2 usage, 3 denied by policy.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from yushan.config import Config, ConfigError, get_config, set_config

log = logging.getLogger("yushan")


class YushanGroup(click.Group):
    """Turn configuration errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from yushan import __version__

    try:
        return version("yushan")
    except PackageNotFoundError:  # run from a source tree
        return __version__


@click.group(cls=YushanGroup)
@click.version_option(version=_version(), prog_name="yushan")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="YUSHAN_HOME",
              help="Where Yushan keeps everything (default ./var).")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(home: Path | None, verbose: bool) -> None:
    """Yushan: a sandboxed data-computation platform (data clean room) on Spark."""
    from yushan import logs, metrics

    config = Config.from_env(home=home) if home else Config.from_env()
    set_config(config)
    level = min(logging.INFO if verbose else logging.WARNING,
                logging.getLevelName(config.log_level))
    logs.configure(level, config.log_format)  # YUSHAN_LOG_FORMAT=json: JSON lines on stderr
    metrics.setup(config)  # every command's samples go where /metrics reads them


def initialise(config: Config) -> None:
    """Create the home, keys (owner-only) and the database schema. Idempotent."""
    import audit
    from sandbox.crypto import load_or_create_key
    from yushan.accounts import ensure_platform
    from yushan.db import migrate, session_scope
    from yushan.keys import startup_check

    config.check_home_writable()
    os.chmod(config.home, 0o700)
    for path in (config.warehouse_dir, config.merchant_data_dir, config.outputs_dir,
                 config.workspaces_dir, config.keys_dir):
        path.mkdir(parents=True, exist_ok=True)
    os.chmod(config.keys_dir, 0o700)
    load_or_create_key(config.secret_key_path)
    load_or_create_key(config.master_key_path)
    audit.init_keys(config)
    migrate(config)
    # A master key rotation interrupted by a crash is finished or undone before anything
    # runs; the segment-token secrets are made once (yushan/keys.py).
    finish = startup_check(config)
    if finish is not None:
        log.warning("finished an interrupted master key rotation (now key %s)", finish.new_key_id)
    with session_scope(config) as session:
        created: list = []
        ensure_platform(session, created)
        if created:  # the first initialisation of this home
            audit.record(session, "system.init", actor=audit.Actor.system("cli"),
                         objects={"home": str(config.home)}, details={})


@main.command()
def init() -> None:
    """Create YUSHAN_HOME, generate keys and migrate the database."""
    config = get_config()
    initialise(config)
    click.echo(f"initialised {config.home} (database {_safe_url(config.database_url)})")


@main.command()
@click.option("--scale", type=float, default=1.0, show_default=True,
              help="Size relative to the spec (0.01 for fast tests, 10 for ten times larger).")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed.")
@click.option("--if-missing", is_flag=True, help="Do nothing when the demo world exists.")
def demo(scale: float, seed: int, if_missing: bool) -> None:
    """Build the demo world (platform and merchant datasets, demo accounts)."""
    from yushan.demo import build_demo, demo_exists

    config = get_config()
    if scale <= 0:
        raise click.UsageError("--scale must be greater than 0")
    initialise(config)
    if if_missing and demo_exists(config):
        click.echo("demo world present; not rebuilt")
        return
    started = time.monotonic()

    def progress(step: str, fraction: float) -> None:
        click.echo(f"[{fraction * 100:5.1f}%] {step}  ({time.monotonic() - started:.1f}s)", err=True)

    counts = build_demo(config, scale=scale, seed=seed, progress=progress)
    elapsed = time.monotonic() - started
    for name, rows in sorted(counts.items()):
        click.echo(f"{name:28s} {rows:>12,d} rows")
    click.echo(f"demo world built in {elapsed:.1f}s (scale {scale}, seed {seed})")


@main.command()
@click.option("--workers", type=int, default=None,
              help="Job worker processes to run beside the web app (default YUSHAN_WORKERS).")
def serve(workers: int | None) -> None:
    """Serve the web app and API, with job worker processes."""
    from web import create_app
    from web.edges import create_server
    from yushan import metrics

    config = get_config()
    metrics.reset(config)  # before anything records: files of gone processes are dropped
    initialise(config)
    app = create_app(config)
    count = config.workers if workers is None else workers
    supervisor = WorkerSupervisor(count)
    # Each route's body cap applies as the headers are parsed (web.edges); this is the
    # largest, an upload's. Bound before the workers start: a port in use leaves none behind.
    server = create_server(app, config, host=config.host, port=config.port, threads=8,
                           ident="yushan", **waitress_proxy_settings(config),
                           max_request_body_size=config.max_upload_bytes + 1024 * 1024)
    supervisor.start()
    # The JVM started and its analyser compiled before the first person's check (pyspark
    # is loaded in the warm-up's thread).
    from sandbox.check_warmup import start_warm_checks

    start_warm_checks(config, config.check_warmup)

    def stop(_signum, _frame):
        supervisor.stop()
        server.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"Yushan serving on http://{config.host}:{config.port} with {count} worker(s)")
    try:
        server.run()
    finally:
        supervisor.stop()


def waitress_proxy_settings(config: Config) -> dict:
    """waitress's reverse-proxy settings: behind ``YUSHAN_TRUSTED_PROXY`` the client's
    address (log-in lockout, audit) and scheme come from its X-Forwarded-* headers; from
    anyone else such headers are dropped."""
    settings: dict = {"clear_untrusted_proxy_headers": True}
    if config.trusted_proxy:
        settings.update(trusted_proxy=config.trusted_proxy,
                        trusted_proxy_count=config.trusted_proxy_count,
                        trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto",
                                               "x-forwarded-host", "x-forwarded-port"})
    return settings


class WorkerSupervisor:
    """Keeps ``count`` ``yushan worker`` processes alive next to the web server."""

    def __init__(self, count: int):
        self.count = count
        self.procs: list[subprocess.Popen] = []
        self._stopping = False

    def _spawn(self) -> subprocess.Popen:
        exe = Path(sys.executable).with_name("yushan")
        cmd = [str(exe), "worker"] if exe.exists() else [sys.executable, "-m", "yushan", "worker"]
        return subprocess.Popen(cmd, env=os.environ.copy())  # noqa: S603 - our own command, fixed argv

    def start(self) -> None:
        import threading

        self.procs = [self._spawn() for _ in range(self.count)]
        threading.Thread(target=self._watch, daemon=True, name="worker-supervisor").start()

    def _watch(self) -> None:
        while not self._stopping:
            time.sleep(5)
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._stopping:
                    log.warning("worker %s exited with %s; starting another", proc.pid, proc.returncode)
                    self.procs[i] = self._spawn()

    def stop(self) -> None:
        self._stopping = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--verify", "verify_only", is_flag=True,
              help="Check an existing backup against its manifest instead of making one.")
def backup(directory: Path, verify_only: bool) -> None:
    """Back up this installation into the new DIRECTORY (database snapshot, keys, signed
    audit head, encrypted data, manifest); --verify checks a backup. Restore:
    docs/operations.md."""
    from yushan import backup as backups

    if verify_only:
        problems = backups.verify(directory)
        for problem in problems:
            click.echo(f"problem: {problem}", err=True)
        if problems:
            raise click.ClickException(f"{directory}: {len(problems)} problem(s); "
                                       "this backup cannot be trusted")
        manifest = json.loads((directory / backups.MANIFEST).read_text(encoding="utf-8"))
        click.echo(f"backup verified: {len(manifest['files'])} files match {backups.MANIFEST}")
        return
    import audit
    from yushan.db import session_scope

    config = get_config()
    backups.check_target_outside_home(config, directory)
    try:
        result = backups.create(config, directory)
    except backups.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    head = result.manifest["database"]["audit_head"] or {}
    with session_scope(config) as session:
        audit.record(session, "backup.create", actor=audit.Actor.system("cli"),
                     objects={"backup": str(result.target)},
                     details={"files": result.files, "bytes": result.bytes,
                              "manifest_sha256": result.manifest_sha256,
                              "database": result.manifest["database"]["kind"],
                              "audit_seq": head.get("seq", 0), "missing": len(result.missing)})
    for path in result.missing:
        click.echo(f"note: {path} was removed after the database snapshot "
                   "(withdrawn or shredded meanwhile)", err=True)
    click.echo(f"backed up {config.home} into {result.target}: {result.files} files, "
               f"{result.bytes:,} bytes, audit entries up to {head.get('seq', 0)}")


# -- keys --------------------------------------------------------------------------------


@main.group("keys")
def keys_cli() -> None:
    """Key status and rotation (docs/operations.md, "Keys and their rotation")."""


@keys_cli.command("status")
def keys_status() -> None:
    """Which master key is in use, and whether every data key opens with it."""
    from yushan.keys import status

    config = get_config()
    found = status(config)
    click.echo(f"master.key:          {found.master_key_id or 'missing'}")
    click.echo(f"database uses:       {found.database_key_id or '(never rotated: master.key)'}")
    click.echo(f"pending rotation:    {'yes (master.key.new)' if found.pending else 'no'}")
    click.echo(f"retired keys:        {', '.join(found.retired) or 'none'}")
    click.echo(f"segment-token.keys:  {'present' if found.token_keys else 'not yet made'}")
    click.echo(f"wrapped data keys:   {found.wrapped}, "
               f"{len(found.unreadable)} not opening with master.key")
    for context in found.unreadable[:20]:
        click.echo(f"  does not open: {context}")
    if found.unreadable or found.pending:
        sys.exit(1)


@keys_cli.command("rotate-master")
@click.option("--delete-old", is_flag=True,
              help="Delete the old key once the new one is in place (default: kept as "
                   "keys/master.key.retired-<time>).")
@click.option("--force", is_flag=True, help="Rotate even while job workers are running.")
def keys_rotate_master(delete_old: bool, force: bool) -> None:
    """Make a new master key and re-wrap every data key under it (files unchanged)."""
    from yushan.keys import KeyRotationError, rotate_master

    config = get_config()
    try:
        done = rotate_master(config, delete_old=delete_old, force=force)
    except KeyRotationError as exc:
        raise click.ClickException(str(exc)) from None
    for note in done.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"master key rotated: {done.old_key_id} -> {done.new_key_id} "
               f"({done.datasets} dataset and {done.outputs} output keys re-wrapped"
               + (f", {done.late} written meanwhile" if done.late else "") + ")")
    if done.retired is not None:
        click.echo(f"old key kept as {done.retired} (delete it once no backup made before "
                   "this rotation needs restoring with it, or keep it offline)")


@keys_cli.command("rotate-audit")
def keys_rotate_audit() -> None:
    """Make a new audit signing key; the old public key stays in the keyring."""
    from audit.rotation import AuditKeyError, rotate_signing_key

    config = get_config()
    try:
        old_id, new_id = rotate_signing_key(config)
    except AuditKeyError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"audit signing key rotated: {old_id} -> {new_id} "
               "(publish the new key id to auditors; `yushan audit verify` lists both)")


# -- accounts ----------------------------------------------------------------------------


@main.group("tenant")
def tenant_cli() -> None:
    """Merchant and service-provider organisations."""


@tenant_cli.command("add")
@click.argument("slug")
@click.option("--name", required=True, help="Display name, e.g. the company's name.")
@click.option("--kind", type=click.Choice(["merchant", "provider"]), required=True)
def tenant_add(slug: str, name: str, kind: str) -> None:
    """Create the organisation SLUG (its datasets are named SLUG.<dataset>)."""
    import audit
    from yushan.accounts import AccountError, create_tenant
    from yushan.db import session_scope
    from yushan.models import TenantKind

    config = get_config()
    initialise(config)
    try:
        with session_scope(config) as session:
            tenant = create_tenant(session, slug, name, TenantKind(kind))
            audit.record(session, "admin.tenant_create", actor=audit.Actor.system("cli"),
                         objects={"tenant": tenant.slug},
                         details={"kind": tenant.kind, "name": tenant.name})
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {kind} {slug}")


@main.group("user")
def user_cli() -> None:
    """People's accounts: create, disable, enable."""


@user_cli.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "auditor", "merchant", "provider"]), required=True)
@click.option("--tenant", "tenant_slug", default="platform", show_default=True,
              help="The organisation (admins and auditors belong to the platform).")
@click.option("--display-name", default="", help="The name shown in the web app.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from standard input instead of prompting.")
def user_add(username: str, role: str, tenant_slug: str, display_name: str, password_stdin: bool) -> None:
    """Create USERNAME's account. The password is prompted for (never an argument)."""
    import audit
    from yushan.accounts import AccountError, create_user
    from yushan.db import session_scope
    from yushan.models import Role

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    config = get_config()
    initialise(config)
    try:
        with session_scope(config) as session:
            user = create_user(session, username, password, Role(role), tenant_slug, display_name)
            audit.record(session, "admin.user_create", actor=audit.Actor.system("cli"),
                         objects={"user": user.username, "tenant": tenant_slug},
                         details={"role": user.role})
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {role} {username} in {tenant_slug}")


def _set_active(username: str, active: bool) -> None:
    import audit
    from yushan.accounts import AccountError, set_active
    from yushan.db import session_scope

    config = get_config()
    try:
        with session_scope(config) as session:
            user = set_active(session, username, active)
            audit.record(session, "admin.user_enable" if active else "admin.user_disable",
                         actor=audit.Actor.system("cli"), objects={"user": user.username},
                         details={})
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{'enabled' if active else 'disabled'} {username}")


@user_cli.command("disable")
@click.argument("username")
def user_disable(username: str) -> None:
    """Disable USERNAME: no more logins, and their API tokens stop working."""
    _set_active(username, False)


@user_cli.command("enable")
@click.argument("username")
def user_enable(username: str) -> None:
    """Enable USERNAME again."""
    _set_active(username, True)


def _safe_url(url: str) -> str:
    """The database URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return "<unparsable>"


def _register_commands() -> None:
    """Commands that live with the part of the platform they belong to."""
    from audit.cli import audit_cli
    from jobs.cli import (
        approve_command,
        budget_cli,
        check_command,
        download_command,
        jobs_command,
        submit_command,
        worker_command,
    )
    from onboarding.cli import dataset_cli, upload_command, withdraw_command

    for name, command in (
        ("worker", worker_command), ("submit", submit_command), ("approve", approve_command), ("jobs", jobs_command),
        ("download", download_command), ("check", check_command), ("audit", audit_cli),
        ("upload", upload_command), ("withdraw", withdraw_command), ("budget", budget_cli),
        ("dataset", dataset_cli),
    ):
        main.add_command(command, name)


_register_commands()


if __name__ == "__main__":
    main()

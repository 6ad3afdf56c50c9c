"""Alembic environment: runs migrations on the engine of the Yushan configuration."""

from alembic import context

from yushan.config import Config
from yushan.db import get_engine
from yushan.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    cfg = context.config
    yushan_config = cfg.attributes.get("yushan_config") or Config.from_env(
        database_url=cfg.get_main_option("sqlalchemy.url")
    )
    engine = get_engine(yushan_config)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=yushan_config.is_sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `yushan init`")
run_migrations_online()

"""A Config for a module-scoped home, like conftest's (local[2], small memory)."""

from pathlib import Path

from yushan.config import Config


def module_config(home: Path) -> Config:
    return Config.from_env(home=home, database_url=f"sqlite:///{home / 'yushan.db'}",
                           spark_master="local[2]", spark_shuffle_partitions=4,
                           spark_driver_memory="1g")

"""Install a per-job catalog into a SparkSession: exactly the tables one job may read.

The session uses Spark's in-memory catalog (see ``sandbox.spark``). Before each job the
catalog is made to hold only the job's readable datasets, so that anything else fails to
resolve exactly like a table that does not exist. One job at a time per session: callers
hold :data:`CATALOG_LOCK` from install to the end of the job's Spark work (the web
process's checks use sessions of their own, one check at a time each:
:mod:`sandbox.check_sessions`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable, Mapping
from pathlib import Path

from pyspark.sql import SparkSession

from yushan.catalog import DatasetInfo

CATALOG_LOCK = threading.RLock()

# Each session's last complete installation (what its catalog holds). Every catalog change
# goes through install_catalog (jobs cannot run DDL: the policy's gate refuses it), so
# installing the same datasets again into the same session is skipped; about 40 JVM
# round trips per job. Temporary views are still looked for on every call. Sessions that
# share a catalog (spark.newSession()) must not both be installed into.
_installed: weakref.WeakKeyDictionary[SparkSession, frozenset] = weakref.WeakKeyDictionary()


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _ddl_columns(ds: DatasetInfo) -> str:
    return ", ".join(f"{_quote(c.name)} {c.data_type}" for c in ds.columns)


def install_catalog(
    spark: SparkSession,
    datasets: Mapping[str, DatasetInfo],
    locations: Mapping[str, Path] | None = None,
) -> None:
    """Make the session catalog hold exactly ``datasets`` (keyed by full name).

    ``locations`` overrides where a dataset's Parquet files are (decrypted merchant data
    in a job workspace). A dataset with no readable location is installed over an empty
    directory: enough to analyse a query, never to read data.
    """
    wanted = _wanted(datasets, locations)
    jcat = spark._jsparkSession.sessionState().catalog()
    state = _state(wanted)
    previous = _installed.get(spark)
    views = not jcat.getTempViewNames().isEmpty()
    if previous == state and not views:
        return
    _installed.pop(spark, None)  # until this installation is complete
    if previous is None:
        _install(spark, jcat, wanted)
    else:
        _install_changes(spark, jcat, wanted, previous, views)
    _installed[spark] = state


def catalog_state(datasets: Mapping[str, DatasetInfo],
                  locations: Mapping[str, Path] | None = None) -> Hashable:
    """What :func:`install_catalog` would make a catalog hold: equal for two calls exactly
    when the second one would find the catalog installed already."""
    return _state(_wanted(datasets, locations))


def _wanted(datasets: Mapping[str, DatasetInfo],
            locations: Mapping[str, Path] | None) -> dict[tuple[str, str], tuple[DatasetInfo, str]]:
    locations = {k.lower(): v for k, v in (locations or {}).items()}
    wanted: dict[tuple[str, str], tuple[DatasetInfo, str]] = {}
    for full_name, ds in datasets.items():
        database, table = full_name.lower().split(".", 1)
        if ds.encrypted:
            location = locations.get(full_name.lower())
        else:
            location = locations.get(full_name.lower(), ds.storage_path)
        wanted[(database, table)] = (ds, str(location) if location else "")
    return wanted


def _state(wanted: dict[tuple[str, str], tuple[DatasetInfo, str]]) -> frozenset:
    return frozenset((name, location, _ddl_columns(ds)) for name, (ds, location) in wanted.items())


def _install(spark: SparkSession, jcat, wanted: dict[tuple[str, str], tuple[DatasetInfo, str]]) -> None:
    # The JVM's SessionCatalog answers these without loading each table's metadata
    # (pyspark's spark.catalog.listTables does, which costs about a second per job).
    existing_dbs = set(_scala_list(jcat.listDatabases())) - {"default"}
    wanted_dbs = {db for db, _ in wanted}
    for db in existing_dbs - wanted_dbs:
        spark.sql(f"DROP DATABASE IF EXISTS {_quote(db)} CASCADE")
    _drop_temp_views(jcat)
    for db in wanted_dbs:
        if db not in existing_dbs:
            spark.sql(f"CREATE DATABASE IF NOT EXISTS {_quote(db)}")
            continue
        for ident in _scala_list(jcat.listTables(db)):
            name = ident.table()
            if not ident.database().isEmpty() and (db, name) not in wanted:
                spark.sql(f"DROP TABLE IF EXISTS {_quote(db)}.{_quote(name)}")
    for (db, table), (ds, location) in wanted.items():
        ident = f"{_quote(db)}.{_quote(table)}"
        desired = location or _empty_dir(spark)
        key = f"yushan.location={desired};yushan.schema={_ddl_columns(ds)}"
        props = _table_comment(spark, ident)
        if props == key:
            continue
        _create_table(spark, ident, ds, location)


def _install_changes(spark: SparkSession, jcat, wanted: dict[tuple[str, str], tuple[DatasetInfo, str]],
                     previous: frozenset, views: bool) -> None:
    """Go from the complete installation ``previous`` to ``wanted`` touching only what
    differs: a job's catalog changes by a table or two (its decrypted inputs' locations,
    another merchant's datasets), and asking the JVM about every table (its comment, about
    nine round trips each) cost more than the DDL itself."""
    before = {name: (location, ddl) for name, location, ddl in previous}
    after = {name: (location, _ddl_columns(ds)) for name, (ds, location) in wanted.items()}
    before_dbs, after_dbs = {db for db, _ in before}, {db for db, _ in after}
    for db in sorted(before_dbs - after_dbs):
        spark.sql(f"DROP DATABASE IF EXISTS {_quote(db)} CASCADE")
    if views:
        _drop_temp_views(jcat)
    for db in sorted(after_dbs - before_dbs):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {_quote(db)}")
    for db, table in sorted(set(before) - set(after)):
        if db in after_dbs:
            spark.sql(f"DROP TABLE IF EXISTS {_quote(db)}.{_quote(table)}")
    for (db, table), (ds, location) in sorted(wanted.items(), key=lambda item: item[0]):
        if before.get((db, table)) == after[(db, table)]:
            continue
        _create_table(spark, f"{_quote(db)}.{_quote(table)}", ds, location)


def _drop_temp_views(jcat) -> None:
    """Temporary views never survive between jobs."""
    for ident in _scala_list(jcat.listTables("default")):
        if ident.database().isEmpty():
            jcat.dropTempView(ident.table())


def _create_table(spark: SparkSession, ident: str, ds: DatasetInfo, location: str) -> None:
    desired = location or _empty_dir(spark)
    key = f"yushan.location={desired};yushan.schema={_ddl_columns(ds)}"
    spark.sql(f"DROP TABLE IF EXISTS {ident}")
    spark.sql(
        f"CREATE TABLE {ident} ({_ddl_columns(ds)}) USING parquet "
        f"LOCATION '{_escape(desired)}' COMMENT '{_escape(key)}'"
    )


def _scala_list(seq) -> list:
    """A Scala Seq from py4j as a Python list."""
    iterator = seq.iterator()
    items = []
    while iterator.hasNext():
        items.append(iterator.next())
    return items


def _table_comment(spark: SparkSession, ident: str) -> str | None:
    try:
        jtable = spark._jsparkSession.sessionState().catalog().getTableMetadata(
            spark._jsparkSession.sessionState().sqlParser().parseTableIdentifier(
                ident.replace("`", "")
            )
        )
        comment = jtable.comment()
        return comment.get() if comment.isDefined() else None
    except Exception:  # noqa: BLE001 - a missing table simply means "install it"
        return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _empty_dir(spark: SparkSession) -> str:
    path = Path(spark.conf.get("spark.sql.warehouse.dir").removeprefix("file:")) / "_empty"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
